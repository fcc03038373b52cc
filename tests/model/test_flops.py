"""The one FLOPs accounting, checked against a count of the matmuls by hand and against the
runner that reports it."""

import pytest
import torch

from adamba.config import ElasticConfig
from adamba.model import elastic as el
from adamba.model import flops
from adamba.model.elastic_runner import ElasticRunner
from adamba.model.lm import LM
from tests.helpers import WIDTHS, elastic_config, model_config


def test_counts_match_the_matmuls_by_hand():
    """d 64, 8 query heads of 8 over 2 KV heads, MLP 256 (ReLU²), vocab 97, at context 10."""
    model = LM(elastic_config(n_layer=2))
    d, hd, ctx = 64, 8, 10
    attn = 2 * d * hd * (8 + 2 * 2) + 4 * 8 * hd * ctx + 2 * 8 * hd * d
    mlp = 2 * d * 256 * 2
    b = model.blocks[0]
    assert flops.layer_flops(b, d, 1.0, ctx) == attn + mlp
    assert flops.token_flops(model, ctx) == 2 * (attn + mlp) + 2 * d * 97
    # width 1/4: 2 query heads reading KV head 0 only, 64 MLP units; a cache storing both KV heads
    narrow = 2 * d * hd * (2 + 2 * 1) + 4 * 2 * hd * ctx + 2 * 2 * hd * d + 2 * d * 64 * 2
    assert flops.layer_flops(b, d, 0.25, ctx) == narrow
    assert flops.layer_flops(b, d, 0.25, ctx, kv_heads=2) == narrow + 2 * d * hd * 2
    assert flops.copy_forward_flops(b, d, kv_heads=2) == 2 * d * hd * 2 * 2
    swiglu = LM(elastic_config(n_layer=1, mlp={"act": "swiglu"}))
    assert flops.layer_flops(swiglu.blocks[0], d, 1.0, ctx) == attn + 2 * d * 256 * 3


def test_mamba_and_kda_layers_count_their_projections():
    model = LM(model_config(d_model=32, n_layer=2, pattern="MK", attn={"n_head": 2}, mamba={"head_dim": 16}))
    for b in model.blocks:
        mats = sum(p.numel() for p in b.mixer.parameters() if p.ndim >= 2)
        assert flops.layer_flops(b, 32, 0.5, 99) == 2 * mats + flops.mlp_flops(b.mlp, 32, b.mlp.units_at(0.5))
        assert flops.copy_forward_flops(b, 32, 0) == 2 * mats


def test_runner_reports_the_same_counts():
    """A think-mode step costs token_flops; a ghost step the sum of its layers at ghost width."""
    torch.manual_seed(0)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(elastic_config()), ecfg).eval()
    x = torch.randint(0, 97, (1, 6))
    for mode in ("think", "ghost"):
        r = ElasticRunner(model, ecfg, el.mode_policy(mode, model, ecfg))
        r.prefill(x[:, :5])
        r.step(x[:, 5:])
        w = el.mode_width(mode, ecfg)
        want = flops.head_flops(model) + sum(flops.layer_flops(b, 64, w, 6) for b in model.blocks)
        assert r.stats.flops == [pytest.approx(want)] and r.stats.full_flops == [flops.token_flops(model, 6)]


def test_training_flops_are_6n_plus_attention():
    assert flops.train_flops_per_token(1000, 2, 64, 128) == 6 * 1000 + 6 * 2 * 64 * 128
