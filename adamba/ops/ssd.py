"""Mamba2's state-space duality (SSD) in pure PyTorch: chunked scan, naive recurrence, one step.

The recurrence, per head (state h_t is [head_dim, d_state]):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T,        y_t = h_t C_t

`ssd_chunked` computes the same thing with matrix multiplies: inside a chunk of Q tokens the
output is a masked "attention" (C_i . B_j) * exp(sum of dt*A over (j, i]) applied to dt*x; across
chunks only the [head_dim, d_state] states travel. The decay sums are taken directly over each
window (a masked cumsum, not a difference of two long cumsums, so they stay exact under strong
decay) and masked *before* exp: every exponent is a sum of non-positive terms or zero, so neither
values nor gradients overflow however strong the decay is.

B and C have `groups` heads' worth of channels; head i reads group i // (heads // groups), as in
mamba-ssm. Inputs in bf16/fp16 are computed in fp32 (fp64 stays fp64) and y is cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class DecayedScores(torch.autograd.Function):
    """M[..., r, i, j] = (C_i . B_j) exp(dA_{j+1} + ... + dA_i) for j <= i, else 0.

    The decay is masked before exp: entries above the diagonal sum nothing (exponent 0) and are
    zeroed by the lower-triangular C B^T, so no exponent is ever positive and no inf can reach a
    gradient. The hand-written backward needs about half the passes over these [.., Q, Q]
    tensors that autograd's chain (expand, mask, cumsum, exp, multiply) would make, and the
    [.., Q, Q] tensors are the bulk of the scan's memory traffic.
    """

    @staticmethod
    def forward(ctx, CB: Tensor, dA: Tensor) -> Tensor:  # CB [b,g,c,Q,Q], dA [b,g,c,r,Q]
        Q = dA.shape[-1]
        strict = torch.ones(Q, Q, dtype=torch.bool, device=dA.device).tril(-1)
        E = dA[..., :, None].expand(*dA.shape, Q).masked_fill(~strict, 0).cumsum(-2).exp_()
        CBm = CB.tril()
        ctx.save_for_backward(CBm, E, strict)
        return CBm[:, :, :, None] * E

    @staticmethod
    @once_differentiable
    def backward(ctx, dM: Tensor) -> tuple[Tensor, Tensor]:
        CBm, E, strict = ctx.saved_tensors
        T1 = dM * E
        dCB = T1.sum(3).tril_()
        G = T1.mul_(CBm[:, :, :, None])  # dM * M, zero above the diagonal
        # dA_k appears in every (i, j) with j < k <= i: ddA_k = sum_{i>=k} sum_{j<k} G[i, j]
        P = G.cumsum(-1)  # P[i, j] = sum_{j' <= j} G[i, j']
        ddA = torch.zeros_like(P[..., 0, :])
        ddA[..., 1:] = P[..., :, :-1].mul_(strict[:, :-1]).sum(-2)
        return dCB, ddA


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int, int, int, int, int]:
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    if dt.shape != (b, l, h) or A.shape != (h,) or B.shape != (b, l, g, n) or C.shape != B.shape:
        raise ValueError(
            f"ssd: shapes x{tuple(x.shape)} dt{tuple(dt.shape)} A{tuple(A.shape)} B{tuple(B.shape)} "
            f"C{tuple(C.shape)} do not match x[b,l,h,p] dt[b,l,h] A[h] B,C[b,l,g,n]"
        )
    if h % g:
        raise ValueError(f"ssd: heads={h} must be a multiple of groups={g}")
    return b, l, h, p, g, n


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan. x [b,l,h,p], dt [b,l,h] (after softplus), A [h] (< 0), B, C [b,l,g,n],
    initial_state [b,h,p,n] or None. Returns y [b,l,h,p] (x's dtype) and the final state
    [b,h,p,n] (fp32, or fp64 for fp64 inputs)."""
    b, l, h, p, g, n = _check(x, dt, A, B, C)
    if chunk_size < 1:
        raise ValueError(f"ssd_chunked: chunk_size={chunk_size} must be >= 1")
    out_dtype, cdt = x.dtype, _compute_dtype(x.dtype)
    r = h // g
    if l == 0:
        state = x.new_zeros(b, h, p, n, dtype=cdt) if initial_state is None else initial_state.to(cdt)
        return x.new_zeros(b, 0, h, p), state
    # autocast would push the matmuls below back to bf16; the scan wants its compute dtype
    with torch.autocast(x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(cdt) for t in (x, dt, A, B, C))
        Q = min(chunk_size, l)
        pad = -l % Q
        if pad:  # dt = 0 on padding: decay exp(0) = 1 and input 0, so the final state is untouched
            x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
            dt = F.pad(dt, (0, 0, 0, pad))
        c = (l + pad) // Q
        # Layouts: heads split as (g, r); the time axis as (c chunks, Q positions).
        xdt = (x * dt[..., None]).view(b, c, Q, g, r, p).permute(0, 3, 1, 2, 4, 5)  # [b,g,c,Q,r,p]
        Bc = B.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4)  # [b,g,c,Q,n]
        Cc = C.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4)
        dA = (dt * A).view(b, c, Q, g, r).permute(0, 3, 1, 4, 2)  # [b,g,c,r,Q]
        Acs = dA.cumsum(-1)

        # 1. within each chunk: y_i += sum_{j<=i} (C_i . B_j) exp(dA_(j, i]) dt_j x_j
        #    C B^T is shared by the r heads of a group; only the decay mask is per head.
        CB = Cc @ Bc.transpose(-1, -2)  # [b,g,c,Q,Q]
        M = DecayedScores.apply(CB, dA)  # [b,g,c,r,Q,Q]
        y_diag = M @ xdt.transpose(3, 4)  # [b,g,c,r,Q,p]

        # 2. each chunk's own contribution to the state at its end: sum_j exp(dA_(j, end]) dt_j x_j B_j^T
        decay_to_end = torch.exp(Acs[..., -1:] - Acs).transpose(-1, -2)  # [b,g,c,Q,r]
        xw = (xdt * decay_to_end[..., None]).reshape(b, g, c, Q, r * p)
        chunk_states = xw.transpose(-1, -2) @ Bc  # [b,g,c,(r p),n]

        # 3. pass states across chunks, h_start[k+1] = exp(chunk k's total decay) h_start[k] + chunk k's
        #    own state. A loop over chunks costs O(c) small ops; the matrix form over chunk pairs
        #    would cost O(c^2) and on CPU is slower already at c = 32.
        # (unbind, not indexing per k: its backward stacks once instead of c full-size zero-fills)
        own = chunk_states.view(b, g, c, r, p, n).unbind(2)
        chunk_decay = torch.exp(Acs[..., -1])[..., None, None].unbind(2)  # c x [b,g,r,1,1]
        state = (
            x.new_zeros(b, g, r, p, n)
            if initial_state is None
            else initial_state.to(cdt).reshape(b, g, r, p, n)
        )
        starts = []
        for k in range(c):
            starts.append(state)
            state = chunk_decay[k] * state + own[k]
        final = state.reshape(b, h, p, n)

        # 4. contribution of the state entering each chunk: y_i += exp(dA_[start, i]) C_i h_start
        h_start = torch.stack(starts, dim=2).permute(0, 1, 2, 5, 3, 4)  # [b,g,c,n,r,p]
        y_off = Cc @ h_start.reshape(b, g, c, n, r * p)  # [b,g,c,Q,(r p)]
        y_off = y_off.view(b, g, c, Q, r, p) * torch.exp(Acs).transpose(-1, -2)[..., None]

        y = y_off + y_diag.transpose(3, 4)  # [b,g,c,Q,r,p]
        y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c * Q, h, p)[:, :l]
    return y.to(out_dtype), final


def ssd_step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One token: x [b,h,p], dt [b,h], A [h], B, C [b,g,n], state [b,h,p,n] (not modified).
    Returns y [b,h,p] (x's dtype) and the new state (compute dtype)."""
    b, h, p = x.shape
    g, n = B.shape[-2:]
    out_dtype, cdt = x.dtype, _compute_dtype(torch.promote_types(x.dtype, state.dtype))
    x, dt, A, B, C, state = (t.to(cdt) for t in (x, dt, A, B, C, state))
    r = h // g
    decay = torch.exp(dt * A).view(b, g, r, 1, 1)
    xdt = (x * dt[..., None]).view(b, g, r, p, 1)
    new = state.view(b, g, r, p, n) * decay + xdt * B.view(b, g, 1, 1, n)
    y = new @ C.view(b, g, 1, n, 1)  # [b,g,r,p,1]
    return y.reshape(b, h, p).to(out_dtype), new.view(b, h, p, n)


def ssd_recurrent(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Step-by-step reference (one `ssd_step` per token): the definition the chunked form must match."""
    b, l, h, p, g, n = _check(x, dt, A, B, C)
    cdt = _compute_dtype(x.dtype)
    state = x.new_zeros(b, h, p, n, dtype=cdt) if initial_state is None else initial_state.to(cdt)
    ys = []
    for t in range(l):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p, dtype=cdt)
    return y.to(x.dtype), state
