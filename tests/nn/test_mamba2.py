"""The Mamba2 layer: decoding state (prefill + steps = full forward), transformers' Mamba2Mixer
as an oracle with copied weights, inits that survive LM.reset_parameters, and a hybrid LM."""

import inspect
import math

import pytest
import torch

from adamba.errors import AdambaError
from adamba.model.lm import LM
from adamba.nn.hf_twins import hf_mamba2_mixer
from adamba.nn.mamba2 import Mamba2
from tests.helpers import model_config


def tiny_cfg(**kw):
    base = dict(
        d_model=64, attn={"n_head": 4, "n_kv_head": 2}, pattern="M", mamba={"d_state": 16, "head_dim": 16}
    )
    return model_config(base, **kw)


@pytest.mark.parametrize("ngroups,chunk", [(1, 8), (2, 16)])
def test_prefill_then_decode_equals_full_forward(ngroups, chunk):
    torch.manual_seed(0)
    layer = Mamba2(tiny_cfg(mamba={"n_groups": ngroups, "chunk_size": chunk}))
    x = torch.randn(2, 31, 64)
    with torch.no_grad():
        full = layer(x)
        state = layer.init_state(2)
        # prefill 5, a second prefill on a non-empty state (2 tokens, shorter than the conv
        # window), a longer one, then token by token
        outs = [layer(x[:, :5], state), layer(x[:, 5:7], state), layer(x[:, 7:20], state)]
        outs += [layer(x[:, t : t + 1], state) for t in range(20, 31)]
    assert state.length == 31
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_decode_state_size_does_not_grow():
    torch.manual_seed(0)
    layer = Mamba2(tiny_cfg())
    state = layer.init_state(1)
    size0 = state.nbytes()
    with torch.no_grad():
        layer(torch.randn(1, 40, 64), state)
        for _ in range(5):
            layer(torch.randn(1, 1, 64), state)
    assert state.nbytes() == size0 > 0
    assert state.conv.shape == (1, layer.conv_dim, 3) and state.ssm.shape == (1, 8, 16, 16)


@pytest.mark.parametrize("ngroups,T", [(1, 45), (2, 70)])
def test_matches_transformers_mamba2_mixer(ngroups, T):
    torch.manual_seed(1)
    cfg = tiny_cfg(mamba={"n_groups": ngroups, "chunk_size": 16})
    layer = Mamba2(cfg)
    with torch.no_grad():  # non-trivial norm and conv weights, so every parameter matters
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.D.uniform_(0.5, 1.5)
    hf = hf_mamba2_mixer(layer, cfg)
    if hf is None:
        pytest.skip("installed transformers has no Mamba2")
    if ngroups > 1 and "group_size" not in inspect.signature(type(hf.norm).__init__).parameters:
        # mamba-ssm normalises each group on its own; older transformers normalised all groups
        # at once (huggingface/transformers#40861), so it is no oracle for ngroups > 1
        pytest.skip("installed transformers' Mamba2 gated norm ignores n_groups")
    x = torch.randn(2, T, 64)
    with torch.no_grad():
        ours, theirs = layer(x), hf(x)
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_inits_and_names_survive_lm_reset():
    torch.manual_seed(2)
    cfg = tiny_cfg(pattern="AM", n_layer=2, mamba={"ffn": "none"})
    model = LM(cfg)
    layer = model.blocks[1].mixer
    names = {n for n, _ in model.named_parameters()}
    assert {"blocks.1.mixer.A_log", "blocks.1.mixer.dt_bias", "blocks.1.mixer.D"} <= names
    A = torch.exp(layer.A_log.detach())
    assert A.min() >= 1 and A.max() <= 16 and A.std() > 0  # uniform in [1, 16]
    dt = torch.nn.functional.softplus(layer.dt_bias.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert torch.equal(layer.D.detach(), torch.ones_like(layer.D))
    # out_proj follows the residual-projection init of the LM (std / sqrt(2 n_layer))
    expected = cfg.init_std / math.sqrt(2 * cfg.n_layer)
    assert abs(layer.out_proj.weight.std().item() - expected) < 0.2 * expected
    assert model.blocks[1].mlp is None  # mamba.ffn = "none"


def test_backward_reaches_every_parameter():
    torch.manual_seed(3)
    layer = Mamba2(tiny_cfg(mamba={"chunk_size": 8}))
    layer(torch.randn(2, 19, 64)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_head_config_is_a_user_error():
    with pytest.raises(AdambaError, match="mamba.head_dim"):
        Mamba2(tiny_cfg(mamba={"head_dim": 48}))
    with pytest.raises(AdambaError, match="mamba.n_groups"):
        Mamba2(tiny_cfg(mamba={"n_groups": 3}))


@pytest.mark.parametrize("pattern", ["AM", "M"])
def test_lm_prefill_and_decode_equal_full_forward(pattern):
    torch.manual_seed(4)
    cfg = tiny_cfg(pattern=pattern, n_layer=2, vocab_size=97, mamba={"chunk_size": 8}, max_seq_len=64)
    model = LM(cfg).eval()
    idx = torch.randint(0, 97, (2, 27))
    with torch.no_grad():
        full, _ = model(idx)
        state = model.init_state(2)
        outs = [model(idx[:, :12], state=state)[0]]
        outs += [model(idx[:, t : t + 1], state=state)[0] for t in range(12, 27)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
