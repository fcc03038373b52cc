"""The fused head + cross-entropy equals the plain F.linear + F.cross_entropy, values and grads."""

import pytest
import torch
import torch.nn.functional as F

from adamba.model.lm import LM
from adamba.ops import linear_ce
from adamba.ops.linear_ce import linear_cross_entropy
from tests.helpers import model_config


def _pair(dtype, n=37, d=16, v=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(v, d, generator=g, dtype=dtype) * 0.5
    t = torch.randint(0, v, (n,), generator=g)
    t[::5] = -100  # ignored positions (padding)
    return h, w, t


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk_elems", [1 << 24, 53 * 8])  # one chunk / chunks of 8 rows (uneven tail)
def test_matches_plain_loss_and_gradients(dtype, tol, chunk_elems, monkeypatch):
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMS", chunk_elems)
    h, w, t = _pair(dtype)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = F.cross_entropy(F.linear(h1, w1), t)
    out = linear_cross_entropy(h2, w2, t)
    (ref * 1.7).backward()
    (out * 1.7).backward()  # a non-unit upstream gradient is applied
    for a, b in [(out.detach(), ref.detach()), (h2.grad, h1.grad), (w2.grad, w1.grad)]:
        assert float((a - b).abs().max()) <= tol * (1 + float(b.detach().abs().max())), (a, b)


def test_lm_training_path_equals_plain_head_and_tied_weights():
    torch.manual_seed(0)
    for tie in (False, True):
        model = LM(
            model_config(
                vocab_size=61, d_model=32, n_layer=2, attn={"n_head": 2, "n_kv_head": 1}, tie_embeddings=tie
            )
        )
        x = torch.randint(0, 61, (3, 11))
        y = torch.roll(x, -1, 1)
        y[0, 4:] = -100
        logits, fused = model(x, y)
        assert logits is None  # training path: logits never materialised
        fused.backward()
        g_fused = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        plain = F.cross_entropy(model(x)[0].reshape(-1, 61), y.reshape(-1))  # with grad: logits path
        plain.backward()
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
        for n, p in model.named_parameters():
            torch.testing.assert_close(g_fused[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
        with torch.no_grad():  # evaluation keeps returning logits with the loss
            lg, loss = model(x, y)
        assert lg is not None and torch.allclose(loss, plain)


def test_only_weight_or_only_hidden_needs_grad():
    h, w, t = _pair(torch.float64)
    wq = w.clone().requires_grad_()
    linear_cross_entropy(h, wq, t).backward()
    wr = w.clone().requires_grad_()
    F.cross_entropy(F.linear(h, wr), t).backward()
    torch.testing.assert_close(wq.grad, wr.grad)
    with pytest.raises(ValueError, match="do not match"):
        linear_cross_entropy(h, w, t[:-1])


def test_autocast_runs_every_head_matmul_in_the_autocast_dtype(monkeypatch):
    """Under bf16 autocast all three matmuls (logits, grad of h, grad of W) run in bf16, as the
    plain path's would; an fp32 one would be the slowest GEMM of a GPU step. Values stay close
    to the plain path under the same autocast."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("mm", "addmm", "addmm_", "bmm"):
                self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor) and a.dim() == 2))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(linear_ce, "CHUNK_ELEMS", 53 * 8)  # several chunks
    h, w, t = _pair(torch.float32, n=64, d=32)
    h1, w1 = h.clone().requires_grad_(), w.clone().requires_grad_()
    h2, w2 = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        ref = F.cross_entropy(F.linear(h1, w1).float(), t)
        with MatmulDtypes() as mode:
            out = linear_cross_entropy(h2, w2, t)
    ref.backward()
    out.backward()
    assert len(mode.seen) >= 3 * 8 and all(d == torch.bfloat16 for ds in mode.seen for d in ds), mode.seen
    assert abs(out.item() - ref.item()) < 1e-2
    for a, b in [(h2.grad, h1.grad), (w2.grad, w1.grad)]:
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max() <= 2e-2 * b.abs().max()
