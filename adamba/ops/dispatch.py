"""Run-time choice between the field's fast kernels and our pure-PyTorch ops.

Layers call the functions here, never a kernel package directly. Each op is one function that
uses its kernel when the inputs live on CUDA, the package imports, and the reference path is not
forced; otherwise it calls the pure-PyTorch twin in `adamba.ops` with the same signature and the
same result (tests compare the two). Packages are imported lazily and at most once, so a CPU
machine without them never sees an import error.

To add an op: a `_load_<package>()` that returns its kernels or None, and a function with the
pure op's signature that asks `_kernel(tensor, _load_<package>)` first.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch

from adamba.ops import delta as _delta
from adamba.ops import ssd as _ssd

_force_reference = os.environ.get("ADAMBA_FORCE_REFERENCE", "") not in ("", "0")


@contextmanager
def force_reference(enabled: bool = True) -> Iterator[None]:
    """Within this block every op takes the pure-PyTorch path (used by tests and benchmarks)."""
    global _force_reference
    before, _force_reference = _force_reference, enabled
    try:
        yield
    finally:
        _force_reference = before


def reference_forced() -> bool:
    return _force_reference


def _kernel(x: torch.Tensor, load: Callable[[], SimpleNamespace | None]) -> SimpleNamespace | None:
    """The package's kernels if this call should use them, else None."""
    if _force_reference or not x.is_cuda:
        return None
    return load()


@functools.cache
def _load_mamba_ssm() -> SimpleNamespace | None:
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # not installed, or built for another torch/CUDA: fall back silently
        return None
    return SimpleNamespace(chunk_scan=mamba_chunk_scan_combined, state_update=selective_state_update)


@functools.cache
def _load_fla() -> SimpleNamespace | None:
    try:
        from fla.ops.kda import chunk_kda
    except Exception:  # not installed, or built for another torch/CUDA: fall back silently
        return None
    return SimpleNamespace(chunk=chunk_kda)


def kernels_available() -> dict[str, bool]:
    """Which kernel packages import here (CUDA is still required at call time)."""
    return {"mamba_ssm": _load_mamba_ssm() is not None, "fla": _load_fla() is not None}


# --- Mamba2 SSD (mamba-ssm) ---------------------------------------------------------------


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`adamba.ops.ssd.ssd_chunked`, on mamba-ssm's fused Triton scan when possible."""
    k = _kernel(x, _load_mamba_ssm)
    if k is None:
        return _ssd.ssd_chunked(x, dt, A, B, C, chunk_size, initial_state)
    # The Triton kernels index with strides but need unit stride on the last axis.
    x, dt, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, dt, B, C))
    y, final = k.chunk_scan(
        x,
        dt,
        A.float(),
        B,
        C,
        chunk_size,
        initial_states=None if initial_state is None else initial_state.float(),
        return_final_states=True,
    )
    return y, final


def ssd_step(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`adamba.ops.ssd.ssd_step`, on mamba-ssm's selective_state_update when possible. That
    kernel has no backward, so it is used only when no gradient is needed."""
    k = _kernel(x, _load_mamba_ssm)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C, state))
    if k is None or needs_grad:
        return _ssd.ssd_step(x, dt, A, B, C, state)
    h, p = x.shape[1:]
    n = B.shape[-1]
    new = state.float().clone()  # the kernel updates in place; ours returns a new state
    # The kernel takes per-channel dt and A ([b,h,p], [h,p,n]); expanded views cost nothing.
    # mamba-ssm 2.3.2 reads dt_bias's and D's strides unconditionally and fails on None, so a
    # zero bias and a zero skip go along (exact: they add 0); older versions just add them.
    y = k.state_update(
        new,
        x,
        dt[..., None].expand(-1, -1, p),
        A.float()[:, None, None].expand(h, p, n),
        B,
        C,
        D=x.new_zeros(h, 1, dtype=torch.float32).expand(h, p),
        dt_bias=dt.new_zeros(h, 1, dtype=torch.float32).expand(h, p),
    )
    return y, new


# --- Kimi Delta Attention (flash-linear-attention) ------------------------------------------


def kda_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`adamba.ops.delta.kda_chunked`, on fla's `chunk_kda` Triton kernel when possible (its
    chunk size is fixed at 64; the result does not depend on it). Decoding steps stay on
    `adamba.ops.delta.kda_step`: one token of state update is cheap either way."""
    kern = _kernel(q, _load_fla)
    if kern is None:
        return _delta.kda_chunked(q, k, v, g, beta, scale, initial_state, chunk_size)
    # one dtype for q, k, v (the layer's L2 norm returns fp32 q, k); gates and state in fp32
    q, k = q.to(v.dtype), k.to(v.dtype)
    o, final = kern.chunk(
        q,
        k,
        v,
        g.float(),
        beta.float(),
        scale=scale,
        initial_state=None if initial_state is None else initial_state.float(),
        output_final_state=True,
    )
    return o, final
