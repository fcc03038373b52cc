"""The chunked SSD scan against its definition (the step-by-step recurrence): values, final state,
gradients, strong decay, odd lengths, groups, dtypes, and the dispatch layer on CPU."""

import types

import pytest
import torch
import torch.nn.functional as F

from adamba.ops import dispatch
from adamba.ops.ssd import DecayedScores, ssd_chunked, ssd_recurrent, ssd_step


def make_inputs(b=2, l=37, h=4, p=8, g=2, n=6, dtype=torch.float64, dt_scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = rnd(b, l, h, p)
    dt = F.softplus(rnd(b, l, h) - 1.0) * dt_scale
    A = -torch.exp(rnd(h) * 0.5)
    B, C = rnd(b, l, g, n), rnd(b, l, g, n)
    state = rnd(b, h, p, n)
    return [t.to(dtype) for t in (x, dt, A, B, C, state)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("l", [1, 7, 16, 37, 100])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("g", [1, 2])
def test_chunked_matches_recurrent_fp64(l, with_state, g):
    x, dt, A, B, C, s0 = make_inputs(l=l, g=g, seed=l)
    init = s0 if with_state else None
    y, final = ssd_chunked(x, dt, A, B, C, chunk_size=16, initial_state=init)
    y_ref, final_ref = ssd_recurrent(x, dt, A, B, C, initial_state=init)
    assert y.shape == y_ref.shape and final.shape == (2, 4, 8, 6)
    torch.testing.assert_close(y, y_ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(final, final_ref, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_fp32_within_2e5_relative(with_state):
    x, dt, A, B, C, s0 = make_inputs(b=1, l=150, h=4, p=16, g=1, n=16, seed=3)
    init = s0 if with_state else None
    y_ref, final_ref = ssd_recurrent(x, dt, A, B, C, initial_state=init)  # fp64 truth
    args32 = [t.float() for t in (x, dt, A, B, C)]
    y, final = ssd_chunked(*args32, chunk_size=64, initial_state=None if init is None else init.float())
    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) < 2e-5
    assert rel_err(final, final_ref) < 2e-5


def test_chunk_size_does_not_change_result():
    x, dt, A, B, C, s0 = make_inputs(l=70, seed=5)
    outs = [ssd_chunked(x, dt, A, B, C, chunk_size=q, initial_state=s0) for q in (4, 16, 64, 128)]
    for y, f in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(f, outs[0][1], atol=1e-10, rtol=1e-10)


def _grads(fn, inputs, weights):
    leaves = [t.clone().requires_grad_() for t in inputs]
    y, final = fn(*leaves)
    loss = (y * weights[0]).sum() + (final * weights[1]).sum()
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("dt_scale", [1.0, 60.0])
def test_gradients_match_recurrent_fp64(dt_scale):
    """dt_scale=60 puts the cumulative decay inside one 16-token chunk far below -500."""
    x, dt, A, B, C, s0 = make_inputs(l=37, dt_scale=dt_scale, seed=7)
    if dt_scale > 1:
        chunk_decay = (dt[:, :16] * A).sum(1)
        assert chunk_decay.min() < -500
    gen = torch.Generator().manual_seed(1)
    w = (
        torch.randn(2, 37, 4, 8, generator=gen, dtype=torch.float64),
        torch.randn(2, 4, 8, 6, generator=gen, dtype=torch.float64),
    )
    inputs = (x, dt, A, B, C, s0)
    g_chunk = _grads(lambda *a: ssd_chunked(*a[:5], chunk_size=16, initial_state=a[5]), inputs, w)
    g_ref = _grads(lambda *a: ssd_recurrent(*a[:5], initial_state=a[5]), inputs, w)
    for name, gc, gr in zip(["x", "dt", "A", "B", "C", "state"], g_chunk, g_ref):
        assert torch.isfinite(gc).all(), name
        torch.testing.assert_close(gc, gr, atol=1e-9, rtol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strong_decay_keeps_values_and_gradients_finite(dtype):
    """Per-step log-decays down to about -40, a chunk sums past -500: exp must never see a
    positive exponent (that is what masking before exp guarantees)."""
    x, dt, A, B, C, s0 = make_inputs(l=100, dt_scale=60.0, seed=11, dtype=dtype)
    assert (dt[:, :64].float() * A.float()).sum(1).min() < -500
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, s0)]
    y, final = ssd_chunked(*leaves[:5], chunk_size=64, initial_state=leaves[5])
    (y.float().square().sum() + final.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    for t in leaves:
        assert torch.isfinite(t.grad).all()


def test_bf16_close_to_fp32():
    x, dt, A, B, C, s0 = make_inputs(b=1, l=90, h=4, p=16, g=1, n=16, seed=2, dtype=torch.float32)
    y32, f32 = ssd_chunked(x, dt, A, B, C, chunk_size=32, initial_state=s0)
    y16, f16 = ssd_chunked(
        *(t.bfloat16() for t in (x, dt, A, B, C)), chunk_size=32, initial_state=s0.bfloat16()
    )
    assert y16.dtype == torch.bfloat16 and f16.dtype == torch.float32
    assert rel_err(y16, y32) < 3e-2 and rel_err(f16, f32) < 3e-2


def test_step_chain_equals_recurrent_and_chunked():
    x, dt, A, B, C, s0 = make_inputs(l=23, seed=13)
    state, ys = s0, []
    for t in range(23):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        ys.append(y)
    y_ref, f_ref = ssd_chunked(x, dt, A, B, C, chunk_size=8, initial_state=s0)
    torch.testing.assert_close(torch.stack(ys, 1), y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state, f_ref, atol=1e-10, rtol=1e-10)


def test_continuing_from_final_state_equals_one_pass():
    """Prefill in two pieces (the second starting from the first's final state) = one pass."""
    x, dt, A, B, C, _ = make_inputs(l=50, seed=17)
    y, f = ssd_chunked(x, dt, A, B, C, chunk_size=16)
    y1, f1 = ssd_chunked(x[:, :21], dt[:, :21], A, B[:, :21], C[:, :21], chunk_size=16)
    y2, f2 = ssd_chunked(x[:, 21:], dt[:, 21:], A, B[:, 21:], C[:, 21:], chunk_size=16, initial_state=f1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(f2, f, atol=1e-10, rtol=1e-10)


def test_decayed_scores_backward_is_exact():
    """The hand-written backward of the masked decay scores against numerical derivatives, with
    decays strong enough that a chunk sums far below -500."""
    gen = torch.Generator().manual_seed(29)
    CB = torch.randn(1, 2, 1, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    dA = (-torch.rand(1, 2, 1, 2, 5, generator=gen, dtype=torch.float64) * 300).requires_grad_()
    assert dA.sum(-1).min() < -500
    assert torch.autograd.gradcheck(DecayedScores.apply, (CB, dA))
    M = DecayedScores.apply(CB, dA)
    naive = torch.zeros_like(M)
    for i in range(5):
        for j in range(i + 1):
            decay = torch.exp(dA[..., j + 1 : i + 1].sum(-1))  # [1,2,1,2]
            naive[..., i, j] = CB[:, :, :, None, i, j] * decay
    torch.testing.assert_close(M, naive, atol=1e-12, rtol=1e-12)
    assert M.triu(1).eq(0).all()


def test_dispatch_uses_reference_on_cpu():
    x, dt, A, B, C, s0 = [t.float() for t in make_inputs(l=20, seed=19)]
    y_d, f_d = dispatch.ssd_chunked(x, dt, A, B, C, 8, initial_state=s0)
    y_r, f_r = ssd_chunked(x, dt, A, B, C, 8, initial_state=s0)
    assert torch.equal(y_d, y_r) and torch.equal(f_d, f_r)
    y1, s1 = dispatch.ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], s0)
    y2, s2 = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], s0)
    assert torch.equal(y1, y2) and torch.equal(s1, s2)
    assert not dispatch.reference_forced()
    with dispatch.force_reference():
        assert dispatch.reference_forced()
        with dispatch.force_reference(False):
            assert not dispatch.reference_forced()
        assert dispatch.reference_forced()
    assert not dispatch.reference_forced()
    assert set(dispatch.kernels_available()) >= {"mamba_ssm"}


def _state_update_like_mamba_ssm_2_3(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """What mamba-ssm 2.3.2's selective_state_update computes, with its calling contract: per
    channel dt / A ([b,h,p], [h,p,n]), grouped B / C, state updated in place, and dt_bias and D
    required (that version reads their strides even when they are None, and crashes)."""
    assert dt_bias is not None and D is not None, "mamba-ssm 2.3.2 crashes on dt_bias=None or D=None"
    assert dt_bias.shape == D.shape == x.shape[1:] and A.shape == state.shape[1:] and dt.shape == x.shape
    dt = dt + dt_bias
    r = x.shape[1] // B.shape[1]
    Bh, Ch = B.repeat_interleave(r, 1)[:, :, None], C.repeat_interleave(r, 1)[:, :, None]  # [b,h,1,n]
    state.mul_(torch.exp(A * dt[..., None])).add_(Bh * (dt * x)[..., None])
    return (state * Ch).sum(-1) + D * x


def test_dispatch_step_honours_the_mamba_ssm_2_3_contract(monkeypatch):
    """The kernel branch of dispatch.ssd_step, fed to a stand-in with mamba-ssm 2.3.2's contract
    (a CUDA run found the crash): same output and new state as our op; caller's state intact."""
    x, dt, A, B, C, s0 = [t.float() for t in make_inputs(b=3, l=1, h=8, p=4, g=2, n=6, seed=37)]
    kernels = types.SimpleNamespace(state_update=_state_update_like_mamba_ssm_2_3)
    monkeypatch.setattr(dispatch, "_kernel", lambda tensor, load: kernels)
    before = s0.clone()
    with torch.no_grad():
        y_k, s_k = dispatch.ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], s0)
    y_r, s_r = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], s0)
    torch.testing.assert_close(y_k, y_r)
    torch.testing.assert_close(s_k, s_r)
    assert torch.equal(s0, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to compare a kernel with the reference")
def test_cuda_kernel_matches_reference():
    if not dispatch.kernels_available()["mamba_ssm"]:
        pytest.skip("mamba_ssm is not installed")
    x, dt, A, B, C, s0 = [t.float().cuda() for t in make_inputs(b=2, l=300, h=8, p=64, g=2, n=64, seed=23)]
    y_k, f_k = dispatch.ssd_chunked(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), 64, initial_state=s0)
    with dispatch.force_reference():
        y_r, f_r = dispatch.ssd_chunked(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), 64, initial_state=s0)
    assert rel_err(y_k, y_r) < 3e-2 and rel_err(f_k, f_r) < 3e-2
