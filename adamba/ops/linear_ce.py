"""Fused LM head + cross-entropy for training: mean CE of (h @ W^T) against targets.

Why: at small scale the head and its loss are a third of a CPU training step, and the plain
path pays for more than the matmuls: a [N, V] log-softmax kept for backward, a zero-filled
[N, V] gradient buffer from nll_loss's backward, and a separate log-softmax backward pass.
Here the gradients are formed during the forward, chunk by chunk of rows, in the logits buffer
itself (softmax - one-hot, in place), so no [N, V] tensor outlives its chunk and backward only
scales the two stored gradients. The FLOPs are the same three matmuls as the plain path (no
recompute). Used by `LM.forward` whenever a loss is asked for with gradients enabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMS = 1 << 24  # logits elements per chunk (64 MiB of fp32): bounds peak memory


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index, chunk_rows):
        n = (targets != ignore_index).sum()
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 at least; fp64 stays fp64
        # under autocast the weight-gradient matmul runs in the autocast dtype like the other two
        # (an in-place addmm_ is not autocast: it would be the step's one fp32 GEMM on a GPU)
        dev = h.device.type
        mm = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else acc
        denom = n.clamp(min=1).to(acc)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for i in range(0, h.shape[0], chunk_rows):
            hc, tc = h[i : i + chunk_rows], targets[i : i + chunk_rows]
            logits = F.linear(hc, weight).to(acc)
            valid = tc != ignore_index
            safe = torch.where(valid, tc, 0)
            lse = torch.logsumexp(logits, -1)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            total += ((lse - picked) * valid).sum()
            if need_h or need_w:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits buffer
                rows = torch.arange(len(tc), device=h.device)
                g[rows, safe] -= valid.to(g.dtype)
                g.mul_((valid.to(g.dtype) / denom)[:, None])
                gl = g.to(h.dtype)
                if need_h:
                    grad_h[i : i + chunk_rows] = gl @ weight
                if need_w and mm == acc:
                    grad_w.addmm_(g.t(), hc.to(acc))
                elif need_w:
                    grad_w += (g.t().to(mm) @ hc.to(mm)).to(acc)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.w_dtype = weight.dtype
        return total / denom

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = None
        if grad_w is not None:
            gw = (grad_w * grad_out).to(ctx.w_dtype)
        return gh, gw, None, None, None


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy of logits h @ weight^T ([..., d] x [V, d]) against integer targets
    [...], skipping ignore_index; equals F.cross_entropy(F.linear(h, weight), targets)."""
    h2 = h.reshape(-1, h.shape[-1])
    t = targets.reshape(-1)
    if t.shape[0] != h2.shape[0]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match hidden states {tuple(h.shape)}")
    chunk_rows = max(1, CHUNK_ELEMS // weight.shape[0])
    return _LinearCrossEntropy.apply(h2, weight, t, ignore_index, chunk_rows)
