"""The parameter-name contract: every parameter of every layer kind has a declared role, init and
the optimizer read it, and a parameter no layer declares is refused."""

import pytest
import torch
from torch import nn

from adamba.config import ElasticConfig
from adamba.model.elastic import attach_elastic
from adamba.model.lm import LM
from adamba.nn.roles import ROLES, param_roles
from adamba.train.optim import param_groups
from tests.helpers import model_config

# every parameter of an attention layer with a SwiGLU MLP, a Mamba2 layer without a feed-forward,
# a KDA layer, the LM around them and the elastic heads, with its role
EXPECTED = {
    "embed.weight": "embed",
    "blocks.0.norm1.weight": "norm",
    "blocks.0.mixer.q_norm_weight": "norm",
    "blocks.0.mixer.k_norm_weight": "norm",
    "blocks.0.mixer.qkv_proj.weight": "matrix",
    "blocks.0.mixer.o_proj.weight": "out",
    "blocks.0.norm2.weight": "norm",
    "blocks.0.mlp.w_up.weight": "matrix",
    "blocks.0.mlp.w_gate.weight": "matrix",
    "blocks.0.mlp.w_down.weight": "out",
    "blocks.1.norm1.weight": "norm",
    "blocks.1.mixer.dt_bias": "time",
    "blocks.1.mixer.A_log": "time",
    "blocks.1.mixer.D": "time",
    "blocks.1.mixer.in_proj.weight": "matrix",
    "blocks.1.mixer.conv1d.weight": "conv",
    "blocks.1.mixer.conv1d.bias": "bias",
    "blocks.1.mixer.norm.weight": "norm",
    "blocks.1.mixer.out_proj.weight": "out",
    "blocks.2.norm1.weight": "norm",
    "blocks.2.mixer.q_proj.weight": "matrix",
    "blocks.2.mixer.k_proj.weight": "matrix",
    "blocks.2.mixer.v_proj.weight": "matrix",
    "blocks.2.mixer.conv1d.weight": "conv",
    "blocks.2.mixer.forget_gate.A_log": "time",
    "blocks.2.mixer.forget_gate.dt_bias": "time",
    "blocks.2.mixer.forget_gate.f_a_proj.weight": "matrix",
    "blocks.2.mixer.forget_gate.f_b_proj.weight": "matrix",
    "blocks.2.mixer.b_proj.weight": "matrix",
    "blocks.2.mixer.g_a_proj.weight": "matrix",
    "blocks.2.mixer.g_b_proj.weight": "matrix",
    "blocks.2.mixer.o_norm.weight": "norm",
    "blocks.2.mixer.o_proj.weight": "out",
    "blocks.2.norm2.weight": "norm",
    "blocks.2.mlp.w_up.weight": "matrix",
    "blocks.2.mlp.w_gate.weight": "matrix",
    "blocks.2.mlp.w_down.weight": "out",
    "norm.weight": "norm",
    "head.weight": "head",
    "elastic.gates.0.weight": "aux",
    "elastic.gates.0.bias": "bias",
    "elastic.gates.1.weight": "aux",
    "elastic.gates.1.bias": "bias",
    "elastic.width_gates.0.0.weight": "aux",
    "elastic.width_gates.0.0.bias": "bias",
    "elastic.width_gates.0.1.weight": "aux",
    "elastic.width_gates.0.1.bias": "bias",
    "elastic.predictor.0.weight": "aux",
    "elastic.predictor.0.bias": "bias",
    "elastic.predictor.2.weight": "aux",
    "elastic.predictor.2.bias": "bias",
}


def amk_model(**kw) -> LM:
    torch.manual_seed(0)
    cfg = model_config(
        d_model=32,
        n_layer=3,
        pattern="AMK",
        attn={"n_head": 2, "n_kv_head": 1},
        mamba={"head_dim": 16, "ffn": "none"},
        mlp={"act": "swiglu"},
        **kw,
    )
    ecfg = ElasticConfig(enabled=True, widths=[0.5, 1.0], gate_hidden=0)
    ecfg.validate()
    return attach_elastic(LM(cfg), ecfg)


def test_every_parameter_of_every_layer_kind_has_its_role():
    assert param_roles(amk_model()) == EXPECTED


def test_optimizer_groups_and_init_follow_the_roles():
    model = amk_model(zero_init_out=True)
    roles = param_roles(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay, embed = param_groups(model, 0.1, embed_lr_mult=10.0)
    assert {names[id(p)] for p in embed["params"]} == {"embed.weight"}
    assert all(ROLES[roles[names[id(p)]]].decay for p in decay["params"])
    assert not any(ROLES[roles[names[id(p)]]].decay for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) + 1 == len(roles)
    params = dict(model.named_parameters())
    for name, role in roles.items():  # zero_init_out: residual outputs and the head start at 0
        if role in ("out", "head"):
            assert not params[name].any(), name
    a_log = params["blocks.1.mixer.A_log"].exp()  # "time": the layer's own init survives
    assert a_log.min() >= 1.0 - 1e-5 and a_log.max() <= 16.0 + 1e-4
    qkv = params["blocks.0.mixer.qkv_proj.weight"]
    assert abs(float(qkv.std()) - 0.02) < 0.005


def test_a_parameter_without_a_role_is_refused():
    model = LM(model_config(d_model=32, n_layer=1, attn={"n_head": 2, "n_kv_head": 1}))
    model.blocks[0].mixer.stray = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"without a declared role: blocks.0.mixer.stray"):
        param_roles(model)
