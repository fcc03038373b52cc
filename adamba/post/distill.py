"""Distillation losses: per-token KL between a student's and a teacher's next-token distributions.

On-policy distillation (Agarwal et al. 2024, GKD; Thinking Machines 2025) samples from the
student and lets the teacher score every token: loss = reverse KL(student || teacher) per token,
mode-seeking, on the student's own mistakes. Off-policy distillation trains on the teacher's
samples instead (forward KL, or plain SFT on them). `kl` computes both directions with a
temperature and a token mask; it equals TRL 1.16's GKDTrainer.generalized_jsd_loss at beta = 1
(reverse) and beta = 0 (forward) with reduction batchmean (tests/post/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    direction: str = "reverse",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over masked tokens of KL(student || teacher) ("reverse") or KL(teacher || student)
    ("forward"); logits [B, T, V], mask [B, T] (1: a token of the completion)."""
    if direction not in ("reverse", "forward"):
        raise ValueError(f"direction {direction!r}: choose 'reverse' or 'forward'")
    s = F.log_softmax(student_logits.float() / temperature, -1)
    t = F.log_softmax(teacher_logits.float() / temperature, -1)
    p, q = (s, t) if direction == "reverse" else (t, s)
    per_token = (p.exp() * (p - q)).sum(-1)  # KL(p || q)
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)
