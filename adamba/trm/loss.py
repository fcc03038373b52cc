"""TRM's losses: cross-entropy on the answer (softmax or stablemax) and the halting head's BCE.

Stablemax (Prieto et al. 2025, "Grokking at the edge of numerical stability", as TRM uses it):
s(x) = 1 / (1 - x) for x < 0, x + 1 otherwise, and p_i = s(x_i) / sum_j s(x_j). It grows only
linearly in the logit, so probabilities cannot saturate the way softmax's exponentials do
(softmax collapse); TRM computes it in float64.

The per-row loss is the mean over the row's scored cells; rows are summed and the batch total
divided by the batch size (TRM divides the summed loss by the global batch). The halting target
is "every scored cell of this row is right now", the simplified one-head form TRM uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def token_ce(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, S] per-cell cross-entropy, 0 where labels == IGNORE."""
    mask = labels != IGNORE
    safe = torch.where(mask, labels, 0)
    if kind == "stablemax":
        logp = log_stablemax(logits.double())
        nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    else:
        nll = F.cross_entropy(logits.float().flatten(0, 1), safe.flatten(), reduction="none").view(
            labels.shape
        )
    return torch.where(mask, nll, 0)


def trm_loss(
    logits: torch.Tensor, q_halt: torch.Tensor, labels: torch.Tensor, kind: str, q_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss to backpropagate, detached stats) for one supervision step of a batch."""
    B = labels.shape[0]
    mask = labels != IGNORE
    count = mask.sum(-1)
    per_row = token_ce(logits, labels, kind).sum(-1) / count.clamp_min(1)
    with torch.no_grad():
        right = (logits.argmax(-1) == labels) & mask
        exact = right.sum(-1) == count
    q_loss = F.binary_cross_entropy_with_logits(q_halt, exact.to(q_halt.dtype), reduction="sum")
    lm = per_row.sum()
    loss = (lm + q_weight * q_loss) / B
    stats = {
        "lm_loss": (lm / B).detach().float(),
        "q_loss": (q_loss / B).detach().float(),
        "cell_acc": (right.sum() / mask.sum().clamp_min(1)).float(),
        "exact": exact,
        "q_acc": ((q_halt >= 0) == exact).float().mean(),
    }
    return loss.float(), stats
