"""Elastic compute, the model side: Matryoshka slices are exact sub-networks, width 1 is the plain
model bit for bit, the cache serves every width, and bad widths, thresholds and modes are clear
errors."""

import pytest
import torch

from adamba.config import ElasticConfig, load_config
from adamba.errors import AdambaError
from adamba.model import elastic as el
from adamba.model.cache import KVCache
from adamba.model.elastic_runner import ElasticRunner
from adamba.model.lm import LM
from adamba.nn.attention import Attention
from adamba.nn.mlp import MLP
from tests.helpers import elastic_config


@pytest.mark.parametrize("width", [0.125, 0.5, 1.0])
@pytest.mark.parametrize("kw", [{}, {"window": 4}, {"qk_norm": False, "use_rope": False}])  # [model.attn]
def test_attention_slice_equals_standalone_small_layer(width, kw):
    torch.manual_seed(0)
    cfg = elastic_config(attn=kw)
    big = Attention(cfg)
    for p in big.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    hq, hkv = big.heads_at(width)
    small = Attention(elastic_config(attn={"n_head": hq, "n_kv_head": hkv, **kw}))
    hd = cfg.attn.head_dim
    W = big.qkv_proj.weight
    kq, kk = big.q_dim, big.q_dim + big.kv_dim
    with torch.no_grad():
        small.qkv_proj.weight.copy_(torch.cat([W[: hq * hd], W[kq : kq + hkv * hd], W[kk : kk + hkv * hd]]))
        small.o_proj.weight.copy_(big.o_proj.weight[:, : hq * hd])
        if cfg.attn.qk_norm:
            small.q_norm_weight.copy_(big.q_norm_weight)
            small.k_norm_weight.copy_(big.k_norm_weight)
    x = torch.randn(2, 11, 64)
    torch.testing.assert_close(big(x, width=width), small(x), atol=1e-5, rtol=1e-5)


def test_partial_gqa_group_matches_expanded_heads():
    """hq not a multiple of the group: query head i still reads KV head i // group."""
    torch.manual_seed(0)
    cfg = elastic_config(attn={"n_head": 8, "n_kv_head": 2})  # group 4
    a = Attention(cfg)
    hq, hkv = a.heads_at(0.75)  # 6 query heads over 2 KV heads
    assert (hq, hkv) == (6, 2)
    # reference: a model with n_kv_head = n_head (MHA) whose KV heads repeat the GQA ones
    ref = Attention(elastic_config(attn={"n_head": 6, "n_kv_head": 6}))
    hd = 8
    W = a.qkv_proj.weight
    kmap = [i // 4 for i in range(6)]
    with torch.no_grad():
        k_rows = torch.cat([W[a.q_dim + j * hd : a.q_dim + (j + 1) * hd] for j in kmap])
        v_rows = torch.cat([W[a.q_dim + a.kv_dim + j * hd : a.q_dim + a.kv_dim + (j + 1) * hd] for j in kmap])
        ref.qkv_proj.weight.copy_(torch.cat([W[: 6 * hd], k_rows, v_rows]))
        ref.o_proj.weight.copy_(a.o_proj.weight[:, : 6 * hd])
    x = torch.randn(1, 9, 64)
    torch.testing.assert_close(a(x, width=0.75), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ["relu2", "swiglu"])
def test_mlp_slice_equals_standalone_small_mlp(act):
    torch.manual_seed(0)
    big = MLP(elastic_config(mlp={"act": act}))
    n = big.units_at(0.25)
    small = MLP(elastic_config(mlp={"act": act, "ratio": n / 64}))
    assert small.hidden == n
    with torch.no_grad():
        small.w_up.weight.copy_(big.w_up.weight[:n])
        small.w_down.weight.copy_(big.w_down.weight[:, :n])
        if act == "swiglu":
            small.w_gate.weight.copy_(big.w_gate.weight[:n])
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(big(x, 0.25), small(x), atol=1e-6, rtol=1e-6)


def test_sliced_weights_are_views():
    a = Attention(elastic_config())
    calls = []
    real = torch.nn.functional.linear

    def spy(x, w, b=None):
        calls.append(w)
        return real(x, w, b)

    torch.nn.functional.linear = spy
    try:
        a(torch.randn(1, 3, 64), width=0.25)
    finally:
        torch.nn.functional.linear = real
    owners = {a.qkv_proj.weight.untyped_storage().data_ptr(), a.o_proj.weight.untyped_storage().data_ptr()}
    assert calls and all(w.untyped_storage().data_ptr() in owners for w in calls)


def test_width_one_is_bit_identical_to_plain_model():
    torch.manual_seed(0)
    model = LM(elastic_config()).eval()
    x = torch.randint(0, 97, (2, 13))
    plain, _ = model(x)
    elastic, _ = model(x, widths=[1.0] * 3)
    assert torch.equal(plain, elastic)
    # and through the runner: think mode (width 1, no exit) decodes the plain logits
    ecfg = ElasticConfig(enabled=True)
    ecfg.validate()
    r = ElasticRunner(model, ecfg, el.Policy([1.0] * 3))
    outs = [r.prefill(x[:1, :5])]
    outs += [r.step(x[:1, t : t + 1]) for t in range(5, 13)]
    state = model.init_state(1)
    ref = [model(x[:1, :5], state=state)[0][:, -1]]
    ref += [model(x[:1, t : t + 1], state=state)[0][:, -1] for t in range(5, 13)]
    assert all(torch.equal(a, b) for a, b in zip(outs, ref))


@pytest.mark.parametrize("width", [0.125, 0.5])
def test_narrow_decode_with_cache_equals_full_forward_at_width(width):
    torch.manual_seed(0)
    model = LM(elastic_config(attn={"window": 6})).eval()
    x = torch.randint(0, 97, (1, 20))
    full, _ = model(x, widths=[width] * 3)
    ecfg = ElasticConfig(enabled=True)
    r = ElasticRunner(model, ecfg, el.Policy([width] * 3))
    outs = [r.prefill(x[:, :7])]
    outs += [r.step(x[:, t : t + 1]) for t in range(7, 19)]
    torch.testing.assert_close(torch.stack(outs, 1)[0], full[0, 6:19], atol=1e-5, rtol=1e-5)
    held, full_bytes = r.kv_bytes()
    assert 0 < held < full_bytes  # narrow widths store fewer KV heads


def test_matryoshka_cache_slices_down_never_pads_up():
    torch.manual_seed(0)
    a = Attention(elastic_config())
    cache = KVCache(1, 2, 8, "cpu", torch.float32)
    cache.reserve_heads(2)  # widest width first
    x = torch.randn(1, 6, 64)
    narrow_then = a(x[:, :4], cache, width=0.25)  # stores both KV heads, reads one
    step = a(x[:, 4:], cache, width=0.25)
    ref = a(x, width=0.25)
    torch.testing.assert_close(torch.cat([narrow_then, step], 1), ref, atol=1e-5, rtol=1e-5)
    assert cache.heads == 2 and cache.nbytes() == 2 * 2 * 6 * 8 * 4
    grow = KVCache(1, 2, 8, "cpu", torch.float32)
    a(x[:, :3], grow, width=0.25)
    assert grow.heads == 1
    with pytest.raises(AdambaError, match="cannot widen"):
        a(x[:, 3:4], grow, width=1.0)


def test_bad_width_threshold_and_mode_errors():
    ecfg = ElasticConfig(enabled=True)
    with pytest.raises(AdambaError, match="not a configured width"):
        el.check_width(0.3, ecfg)
    with pytest.raises(AdambaError, match="exit_threshold"):
        load_config(None, ["elastic.exit_threshold=1.5"])
    with pytest.raises(AdambaError, match="elastic.widths"):
        load_config(None, ["elastic.widths=[0.5, 2.0]"])
    model = LM(elastic_config())
    with pytest.raises(AdambaError, match="not a configured width"):
        ElasticRunner(model, ecfg, el.Policy([0.3] * 3))
    with pytest.raises(AdambaError, match=r"\[0, 1\]"):
        ElasticRunner(model, ecfg, el.Policy([1.0] * 3, exit_threshold=-0.1))
    with pytest.raises(AdambaError, match="trained with Matryoshka"):
        el.policy_from_mode(model, ElasticConfig(enabled=False), "ghost")
    with pytest.raises(AdambaError, match="unknown compute mode"):
        el.mode_width("turbo", ecfg)
