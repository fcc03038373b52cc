"""KDA layer: decoding equals the full pass, the decoding state does not grow, transformers'
Kimi-Linear delta attention is the oracle, and the presets have the advertised sizes."""

import pytest
import torch

from adamba.config import load_config
from adamba.model.lm import LM
from adamba.nn.hf_twins import hf_kimi_delta_attention
from adamba.nn.kda import KDA
from adamba.ops import delta, dispatch
from adamba.train.optim import param_groups
from tests.helpers import model_config


def kda_cfg(**kw):
    base = dict(
        vocab_size=97,
        d_model=64,
        n_layer=1,
        attn={"n_head": 4},
        kda={"head_dim": 16},
        pattern="K",
        max_seq_len=128,
    )
    return model_config(base, **kw)


def randomise(layer: KDA) -> KDA:
    """Weights far from init (which would make several paths trivially small)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.2)
        layer.o_norm.weight.uniform_(0.5, 1.5)
    return layer


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def test_prefill_then_decode_equals_full_forward():
    """Prefill 23 tokens, prefill 9 more on the non-empty state, then decode one by one."""
    torch.manual_seed(0)
    layer = randomise(KDA(kda_cfg(kda={"chunk_size": 16})))
    x = torch.randn(2, 70, 64)
    full = layer(x)
    state = layer.init_state(2, x.device, x.dtype)
    outs = [layer(x[:, :23], state), layer(x[:, 23:32], state)]
    outs += [layer(x[:, t : t + 1], state) for t in range(32, 70)]
    assert state.length == 70
    assert max_err(torch.cat(outs, 1), full) < 1e-5


@torch.no_grad()
def test_decoding_state_does_not_grow():
    layer = KDA(kda_cfg())
    state = layer.init_state(1, "cpu", torch.float32)
    before = state.nbytes()
    layer(torch.randn(1, 40, 64), state)
    for _ in range(5):
        layer(torch.randn(1, 1, 64), state)
    assert state.nbytes() == before == 4 * (3 * 64 * 3 + 4 * 16 * 16)


def test_gate_is_a_decay_and_gradients_flow():
    torch.manual_seed(0)
    layer = KDA(kda_cfg())
    x = torch.randn(2, 20, 64)
    g = layer.forget_gate(x)
    assert g.shape == (2, 20, 4, 16) and (g <= 0).all()
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_matches_transformers_kimi_linear_delta_attention():
    """Oracle: transformers' KimiLinearDeltaAttention (pure-torch CPU path), same state dict."""
    cfg = kda_cfg()
    ours = randomise(KDA(cfg)).eval()
    hf = hf_kimi_delta_attention(ours, cfg)  # strict load: names and shapes match one-to-one
    if hf is None:
        pytest.skip("installed transformers has no transformers.models.kimi_linear (needs >= 5.0)")
    hf.eval()
    x = torch.randn(2, 100, 64)  # 100 = one full chunk of 64 + a partial one
    with torch.no_grad():
        a, b = ours(x), hf(x)
    assert a.abs().max() > 0.1
    assert max_err(a, b) < 1e-4


@torch.no_grad()
def test_lm_kkka_prefill_then_decode_equals_full_forward():
    torch.manual_seed(0)
    cfg = model_config(
        vocab_size=97,
        d_model=64,
        n_layer=4,
        attn={"n_head": 4, "n_kv_head": 2, "use_rope": False},
        pattern="KKKA",
        max_seq_len=64,
    )
    model = LM(cfg).eval()
    assert [type(b.mixer).__name__ for b in model.blocks] == ["KDA", "KDA", "KDA", "Attention"]
    x = torch.randint(0, 97, (2, 30))
    full, _ = model(x)
    state = model.init_state(2)
    outs = [model(x[:, :11], state=state)[0]]
    outs += [model(x[:, t : t + 1], state=state)[0] for t in range(11, 30)]
    assert max_err(torch.cat(outs, 1), full) < 1e-5


def test_lm_keeps_gate_inits_and_no_decay_on_time_scales():
    """LM.reset_parameters re-inits Linear layers only: A_log and dt_bias keep their ranges; the
    optimizer puts them (and the gated norm) in the no-decay group."""
    model = LM(kda_cfg(n_layer=2, pattern="KA"))
    gate = model.blocks[0].mixer.forget_gate
    A = gate.A_log.exp()
    dt = torch.nn.functional.softplus(gate.dt_bias)
    assert A.min() >= 1.0 - 1e-5 and A.max() <= 16.0 + 1e-4
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    no_decay = {
        id(p) for grp in param_groups(model, 0.1) if grp["weight_decay"] == 0.0 for p in grp["params"]
    }
    for name, p in model.named_parameters():
        if any(key in name for key in ("A_log", "dt_bias", "o_norm")):
            assert id(p) in no_decay, name
        if name.endswith(("q_proj.weight", "f_b_proj.weight")):
            assert id(p) not in no_decay, name


@pytest.mark.parametrize("name,lo,hi", [("kda-tiny", 1.6e6, 1.9e6), ("kda-100m", 95e6, 105e6)])
def test_presets(name, lo, hi):
    cfg = load_config(name).model
    assert cfg.pattern == "KKKA" and not cfg.attn.use_rope
    with torch.device("meta"):
        n = LM(cfg).num_params()
    assert lo < n < hi
    if name == "kda-tiny":  # same size as the dense tiny-cpu preset it is compared with
        with torch.device("meta"):
            dense = LM(load_config("tiny-cpu").model).num_params()
        assert abs(n / dense - 1) < 0.03


def _op_inputs(device="cpu", t=100, b=2, h=3, d=64):
    gen = torch.Generator().manual_seed(7)
    q, k = (torch.nn.functional.normalize(torch.randn(b, t, h, d, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(b, t, h, d, generator=gen)
    g = -torch.rand(b, t, h, d, generator=gen)
    beta = torch.rand(b, t, h, generator=gen)
    s0 = torch.randn(b, h, d, d, generator=gen)
    return [x.to(device) for x in (q, k, v, g, beta, s0)]


def test_dispatch_uses_reference_on_cpu():
    q, k, v, g, beta, s0 = _op_inputs()
    o_d, s_d = dispatch.kda_chunked(q, k, v, g, beta, initial_state=s0)
    o_r, s_r = delta.kda_chunked(q, k, v, g, beta, initial_state=s0)
    assert torch.equal(o_d, o_r) and torch.equal(s_d, s_r)
    assert "fla" in dispatch.kernels_available()


def test_dispatch_fla_kernel_matches_reference_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the fla kernel path cannot run here")
    if not dispatch.kernels_available()["fla"]:
        pytest.skip("flash-linear-attention (fla) is not installed")
    q, k, v, g, beta, s0 = _op_inputs("cuda", t=300)
    lo = [x.bfloat16() for x in (q, k, v)]
    o_k, s_k = dispatch.kda_chunked(*lo, g, beta, initial_state=s0)
    with dispatch.force_reference():
        o_r, s_r = dispatch.kda_chunked(*lo, g, beta, initial_state=s0)
    scale = o_r.float().abs().max()
    assert (o_k.float() - o_r.float()).abs().max() / scale < 2e-2
    assert (s_k - s_r).abs().max() / s_r.abs().max() < 2e-2
