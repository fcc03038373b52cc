"""KDA ops: the chunked form equals the token-by-token recurrence (values, final state,
gradients), stays finite under very strong decay, and agrees with transformers' reference."""

import pytest
import torch
import torch.nn.functional as F

from adamba.ops.delta import kda_chunked, kda_recurrent, kda_step


def make_inputs(b=2, t=37, h=3, dk=32, dv=24, dtype=torch.float64, decay=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, t, h, dk, generator=gen, dtype=dtype), dim=-1)
    k = F.normalize(torch.randn(b, t, h, dk, generator=gen, dtype=dtype), dim=-1)
    v = torch.randn(b, t, h, dv, generator=gen, dtype=dtype)
    g = -torch.rand(b, t, h, dk, generator=gen, dtype=dtype) * decay
    beta = torch.rand(b, t, h, generator=gen, dtype=dtype)
    s0 = torch.randn(b, h, dk, dv, generator=gen, dtype=dtype)
    return q, k, v, g, beta, s0


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("t,chunk", [(37, 16), (100, 64), (5, 64), (50, 24)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_recurrent(dtype, tol, t, chunk, with_state):
    """Lengths that are not a multiple of the chunk; chunks of 16 and 64 go through the block
    merges, 24 (not 4 times a power of two) takes all pairs directly."""
    q, k, v, g, beta, s0 = make_inputs(t=t, dtype=dtype)
    init = s0 if with_state else None
    o, S = kda_chunked(q, k, v, g, beta, initial_state=init, chunk_size=chunk)
    o_ref, S_ref = kda_recurrent(q, k, v, g, beta, initial_state=init)
    assert o.dtype == dtype and o.shape == v.shape and S.shape == s0.shape
    assert rel_err(o, o_ref) < tol
    assert rel_err(S, S_ref) < tol


def test_bf16_inputs_compute_in_fp32():
    q, k, v, g, beta, s0 = make_inputs(t=50, dtype=torch.float32)
    o_ref, S_ref = kda_recurrent(q, k, v, g, beta, initial_state=s0)
    lo = [x.bfloat16() for x in (q, k, v, g, beta)]
    o, S = kda_chunked(*lo, initial_state=s0, chunk_size=32)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert rel_err(o, o_ref) < 5e-2 and rel_err(S, S_ref) < 5e-2


def _grads(fn, inputs, w_o, w_s):
    xs = [x.clone().requires_grad_() for x in inputs]
    o, S = fn(*xs)
    ((o * w_o).sum() + (S * w_s).sum()).backward()
    return o, S, [x.grad for x in xs]


def test_gradients_match_recurrent_fp64():
    q, k, v, g, beta, s0 = make_inputs(t=45, dtype=torch.float64, seed=1)
    w_o, w_s = torch.randn_like(v), torch.randn_like(s0)
    inputs = (q, k, v, g, beta, s0)
    _, _, ga = _grads(lambda *x: kda_chunked(*x[:5], initial_state=x[5], chunk_size=32), inputs, w_o, w_s)
    _, _, gb = _grads(lambda *x: kda_recurrent(*x[:5], initial_state=x[5]), inputs, w_o, w_s)
    for name, a, b in zip("q k v g beta s0".split(), ga, gb):
        assert rel_err(a, b) < 1e-9, name


def test_strong_decay_stays_finite_and_exact():
    """Cumulative decay reaching -500 inside one chunk (and single steps of -500): splitting
    exp(G_r - G_s) as exp(G_r) exp(-G_s) would overflow fp32 at about -88."""
    q, k, v, g, beta, s0 = make_inputs(b=1, t=70, h=2, dk=16, dv=8, dtype=torch.float32, seed=2)
    g = g * 0.0 - 8.0 * torch.rand_like(g[..., :1])  # ~ -8 per step: chunk of 64 sums to ~ -250..-500
    g[:, :64, 1].fill_(-7.9)  # head 1: exactly ~ -505 over the first chunk
    g[:, 22, 0, :4] = -500.0  # single steps of -500 inside blocks, not at their edges
    g[:, 45, 1, 4:8] = -500.0
    w_o, w_s = torch.randn_like(v), torch.randn_like(s0)
    inputs = (q, k, v, g, beta, s0)
    assert g[:, :64].sum(1).min() < -500
    o, S, ga = _grads(lambda *x: kda_chunked(*x[:5], initial_state=x[5], chunk_size=64), inputs, w_o, w_s)
    inputs64 = [x.double() for x in inputs]
    o_ref, S_ref, gb = _grads(
        lambda *x: kda_recurrent(*x[:5], initial_state=x[5]), inputs64, w_o, w_s.double()
    )
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel_err(o, o_ref) < 2e-5 and rel_err(S, S_ref) < 2e-5
    for name, a, b in zip("q k v g beta s0".split(), ga, gb):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < 1e-4, name


def test_step_matches_matrix_form():
    """kda_step against the matrix statement of the rule:
    S_t = (I - beta k k^T) Diag(exp g) S_{t-1} + beta k v^T,  o_t = S_t^T (scale q)."""
    q, k, v, g, beta, s0 = make_inputs(b=1, t=1, h=2, dk=6, dv=5, dtype=torch.float64, seed=3)
    o, S = kda_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], s0)
    for hh in range(2):
        kk, bb = k[0, 0, hh], beta[0, 0, hh]
        S_ref = (torch.eye(6, dtype=torch.float64) - bb * torch.outer(kk, kk)) @ torch.diag(
            g[0, 0, hh].exp()
        ) @ s0[0, hh] + bb * torch.outer(kk, v[0, 0, hh])
        assert rel_err(S[0, hh], S_ref) < 1e-12
        assert rel_err(o[0, hh], S_ref.T @ q[0, 0, hh] * 6**-0.5) < 1e-12


def test_step_chain_equals_chunked():
    q, k, v, g, beta, s0 = make_inputs(t=29, dtype=torch.float64, seed=4)
    o, S = kda_chunked(q, k, v, g, beta, initial_state=s0, chunk_size=16)
    state, outs = s0, []
    for i in range(q.shape[1]):
        oi, state = kda_step(q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i], state)
        outs.append(oi)
    assert rel_err(torch.stack(outs, 1), o) < 1e-9 and rel_err(state, S) < 1e-9


def test_split_sequence_carries_state():
    """Two calls chained through the final state equal one call (what prefill-on-a-state does)."""
    q, k, v, g, beta, s0 = make_inputs(t=90, dtype=torch.float64, seed=5)
    o, S = kda_chunked(q, k, v, g, beta, initial_state=s0)
    o1, S1 = kda_chunked(*(x[:, :41] for x in (q, k, v, g, beta)), initial_state=s0)
    o2, S2 = kda_chunked(*(x[:, 41:] for x in (q, k, v, g, beta)), initial_state=S1)
    assert rel_err(torch.cat([o1, o2], 1), o) < 1e-9 and rel_err(S2, S) < 1e-9


def test_matches_transformers_chunk_reference():
    """Second formulation: transformers' pure-torch Kimi-Linear chunk function."""
    mod = pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")
    q, k, v, g, beta, s0 = make_inputs(t=80, dtype=torch.float32, seed=6)
    ref = getattr(mod.chunk_kimi_delta_attention, "__wrapped__", mod.chunk_kimi_delta_attention)
    o_ref, S_ref = ref(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    o, S = kda_chunked(q, k, v, g, beta, initial_state=s0)
    assert rel_err(o, o_ref) < 2e-5 and rel_err(S, S_ref) < 2e-5
