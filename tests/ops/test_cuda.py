"""CUDA paths: the kernel packages (mamba-ssm, fla) against our pure-PyTorch ops, forward and
backward, and whole hybrid models on the GPU (kernels vs the reference path, bf16 autocast,
prefill + decode). Everything here skips without a CUDA device; a package's tests skip when it
is not installed. benchmarks/README.md says when these last ran on a GPU, and with what."""

import pytest
import torch

from adamba.model.lm import LM
from adamba.ops import dispatch
from tests.helpers import model_config
from tests.nn.test_kda import _op_inputs
from tests.ops.test_ssd import make_inputs, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def needs(package: str) -> None:
    if not dispatch.kernels_available()[package]:
        pytest.skip(f"{package} is not installed")


def kernel_and_reference(fn, inputs: list[torch.Tensor]):
    """fn's outputs and the gradients of a fixed random projection of them, once through the
    kernels and once with the reference path forced, from the same leaf inputs."""
    results = []
    for forced in (False, True):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        with dispatch.force_reference(forced):
            outs = fn(*leaves)
        gen = torch.Generator(device="cuda").manual_seed(3)
        loss = sum((o.float() * torch.randn(o.shape, device="cuda", generator=gen)).sum() for o in outs)
        loss.backward()
        results.append(([o.detach().float() for o in outs], [t.grad for t in leaves]))
    return results


def test_ssd_kernel_forward_and_gradients_match_reference():
    needs("mamba_ssm")
    inputs = [t.float().cuda() for t in make_inputs(b=2, l=300, h=8, p=64, g=2, n=64, seed=29)]
    (outs_k, grads_k), (outs_r, grads_r) = kernel_and_reference(
        lambda x, dt, A, B, C, s0: dispatch.ssd_chunked(x, dt, A, B, C, 64, initial_state=s0), inputs
    )
    for name, a, b in zip(("y", "final state"), outs_k, outs_r, strict=True):
        assert rel_err(a, b) < 1e-2, name
    for name, a, b in zip(("x", "dt", "A", "B", "C", "initial state"), grads_k, grads_r, strict=True):
        assert a is not None and rel_err(a, b) < 2e-2, name


def test_ssd_step_kernel_matches_reference():
    needs("mamba_ssm")
    x, dt, A, B, C, s0 = [t.float().cuda() for t in make_inputs(b=3, l=1, h=8, p=64, g=2, n=64, seed=31)]
    with torch.no_grad():
        y_k, s_k = dispatch.ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], s0)
        with dispatch.force_reference():
            y_r, s_r = dispatch.ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], s0)
    assert rel_err(y_k, y_r) < 1e-4 and rel_err(s_k, s_r) < 1e-5
    assert not torch.equal(s_k, s0)  # the kernel updates a copy, never the caller's state


def test_kda_kernel_forward_and_gradients_match_reference():
    needs("fla")
    # the head shapes of hybrid("KKA") below: fla autotunes one shape set for both
    q, k, v, g, beta, s0 = _op_inputs("cuda", t=300, b=4, h=4, d=32)
    (outs_k, grads_k), (outs_r, grads_r) = kernel_and_reference(
        lambda q, k, v, g, beta, s0: dispatch.kda_chunked(q, k, v, g, beta, initial_state=s0),
        [q, k, v, g, beta, s0],
    )
    for name, a, b in zip(("o", "final state"), outs_k, outs_r, strict=True):
        assert rel_err(a, b) < 1e-2, name
    for name, a, b in zip(("q", "k", "v", "g", "beta", "initial state"), grads_k, grads_r, strict=True):
        assert a is not None and rel_err(a, b) < 2e-2, name


def hybrid(pattern: str) -> LM:
    cfg = model_config(
        vocab_size=211,
        d_model=128,
        n_layer=len(pattern),
        attn={"n_head": 4, "n_kv_head": 2},
        pattern=pattern,
        mamba={"d_state": 32, "head_dim": 32},
        kda={"head_dim": 32},
        max_seq_len=512,
    )
    torch.manual_seed(0)
    return LM(cfg).cuda()


@pytest.mark.parametrize("pattern,package", [("MAM", "mamba_ssm"), ("KKA", "fla")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hybrid_lm_training_step_with_kernels_matches_reference(pattern, package, dtype):
    """A hybrid LM's loss and every parameter's gradient, kernels vs reference, in fp32 and
    under bf16 autocast (the trainer's mixed precision)."""
    needs(package)
    model = hybrid(pattern)
    x = torch.randint(0, 211, (4, 300), device="cuda")  # 300: several chunks and a partial one
    grads = []
    for forced in (False, True):
        model.zero_grad(set_to_none=True)
        with (
            dispatch.force_reference(forced),
            torch.autocast("cuda", torch.bfloat16, enabled=dtype != "float32"),
        ):
            _, loss = model(x, torch.roll(x, -1, 1))
        loss.backward()
        grads.append((loss.item(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (loss_k, g_k), (loss_r, g_r) = grads
    tol = 1e-2 if dtype == "float32" else 5e-2
    assert abs(loss_k - loss_r) < 1e-3 * abs(loss_r) + (0 if dtype == "float32" else 2e-3)
    for name in g_r:
        assert rel_err(g_k[name], g_r[name]) < tol, name


@pytest.mark.parametrize("pattern,package", [("MAM", "mamba_ssm"), ("KKA", "fla")])
def test_hybrid_lm_decode_with_kernels_equals_full_forward(pattern, package):
    """Prefill through the chunked kernels, decode through the step path: the full forward."""
    needs(package)
    model = hybrid(pattern).eval()
    x = torch.randint(0, 211, (2, 150), device="cuda")
    with torch.no_grad():
        full, _ = model(x)
        state = model.init_state(2)
        outs = [model(x[:, :97], state=state)[0]]
        outs += [model(x[:, t : t + 1], state=state)[0] for t in range(97, 150)]
    assert rel_err(torch.cat(outs, 1), full) < 1e-3
