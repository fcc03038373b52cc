"""A GPT-OSS-style mixture-of-experts feed-forward: a router picks the top-k experts of each token
(softmax over the k chosen logits), each expert a SwiGLU with biases and GPT-OSS's clamps.

Weights use GPT-OSS's layout (gate_up_proj [E, d, 2H] with gate and up interleaved in the last
dimension, down_proj [E, H, d], biases per expert, a router with bias), so its checkpoints map
one to one; tests/nn/test_moe.py checks the output against transformers' GptOssMLP.

Tokens are grouped by expert (sorted once) and each expert that has tokens runs one matmul on its
group, so the work is top_k dense FFNs per token, not n_experts. `stats` keeps the routing counts
and summed router probabilities of the last call, the inputs of the load-balancing loss; they are
sums, so a caller can all-reduce them across processes first and the loss does not depend on the
number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RouterStats:
    counts: torch.Tensor  # [E] assignments per expert (top-k: sums to k x tokens)
    prob_sum: torch.Tensor  # [E] summed softmax over all experts (differentiable)
    tokens: int


def balance_loss(s: RouterStats, n_experts: int) -> torch.Tensor:
    """Switch-Transformer load balancing as transformers computes it for GPT-OSS / Mixtral:
    E x sum_i f_i P_i, with f_i the assignments of expert i per token and P_i its mean router
    probability; k for a perfectly uniform top-k router, larger when routing collapses."""
    return n_experts * torch.sum((s.counts / s.tokens) * (s.prob_sum / s.tokens))


class MoE(nn.Module):
    PARAM_ROLES = {
        "router.weight": "matrix",
        "router.bias": "bias",
        "gate_up_proj": "matrix",
        "gate_up_proj_bias": "bias",
        "down_proj": "out",
        "down_proj_bias": "bias",
    }

    def __init__(
        self, d_model: int, n_experts: int, top_k: int, hidden: int, alpha: float = 1.702, limit: float = 7.0
    ):
        super().__init__()
        self.n_experts, self.top_k, self.hidden = n_experts, top_k, hidden
        self.alpha, self.limit = alpha, limit
        self.router = nn.Linear(d_model, n_experts, bias=True)
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, d_model, 2 * hidden))
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(n_experts, 2 * hidden))
        self.down_proj = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.down_proj_bias = nn.Parameter(torch.zeros(n_experts, d_model))
        nn.init.normal_(self.gate_up_proj, std=d_model**-0.5)
        nn.init.normal_(self.down_proj, std=hidden**-0.5)
        self.stats: RouterStats | None = None

    def activation(self, gate_up: torch.Tensor) -> torch.Tensor:
        """GPT-OSS's clamped SwiGLU: gate (even columns) capped at `limit`, up (odd) clamped to
        +-limit, (up + 1) x gate x sigmoid(alpha x gate)."""
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(max=self.limit)
        up = up.clamp(-self.limit, self.limit)
        return (up + 1) * gate * torch.sigmoid(gate * self.alpha)

    def units_at(self, width: float) -> int:
        """Units of every expert kept at a Matryoshka width: the first round(w * hidden), at least
        1 (the router is the same at every width: a token meets the same experts, narrower)."""
        return self.hidden if width >= 1.0 else min(self.hidden, max(1, round(width * self.hidden)))

    def forward(
        self, x: torch.Tensor, width: float = 1.0, row_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """width < 1: each expert's first units (gate/up are interleaved per unit, so the first
        2n columns of gate_up_proj); row_mask [B, 1, units] zeroes a row's units past its own
        width (rows of several widths in one pass, as the MLP's)."""
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        n = self.units_at(width)
        mask = None if row_mask is None else row_mask.expand(shape[0], shape[1], -1).reshape(-1, n)
        logits = self.router(h)  # [N, E]
        top, idx = torch.topk(logits, self.top_k, dim=-1)
        weights = F.softmax(top, dim=-1, dtype=top.dtype)  # over the chosen k
        flat = idx.reshape(-1)  # [N * k] expert of each assignment
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts)
        token = order // self.top_k  # the token of each sorted assignment
        out = torch.zeros_like(h)
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c == 0:
                continue
            rows = order[start : start + c]
            t = token[start : start + c]
            y = self.activation(h[t] @ self.gate_up_proj[e, :, : 2 * n] + self.gate_up_proj_bias[e, : 2 * n])
            if mask is not None:
                y = y * mask[t]
            y = y @ self.down_proj[e, :n] + self.down_proj_bias[e]
            out.index_add_(0, t, (y * weights.reshape(-1)[rows, None]).to(out.dtype))
            start += c
        self.stats = RouterStats(
            counts.to(logits.dtype), F.softmax(logits, -1, dtype=torch.float32).sum(0), h.shape[0]
        )
        return out.reshape(shape)

    def tokens_per_expert(self) -> list[int]:
        """How many token assignments each expert got in the last call."""
        return [] if self.stats is None else [int(c) for c in self.stats.counts]
