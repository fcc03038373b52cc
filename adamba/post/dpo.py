"""DPO (Rafailov et al. 2023): from preference pairs, with a frozen reference model.

loss = -log sigmoid(beta x ((logp_c - ref_c) - (logp_r - ref_r))), each logp the summed log
probability of the chosen (c) or rejected (r) completion's tokens; label smoothing (cDPO) mixes
in the flipped pair. TRL 1.16's DPOTrainer "sigmoid" loss (tests/post/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logp(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] per-token log probabilities, [B, T] 0/1 mask -> [B] summed over the masked tokens."""
    return (logp * mask.to(logp.dtype)).sum(-1)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, [B] preference accuracy: the implicit reward ranks chosen above rejected)
    from [B] sequence log probabilities of the policy and the reference."""
    delta = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    return loss.mean(), (delta > 0).float()
