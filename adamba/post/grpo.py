"""GRPO (Shao et al. 2024, DeepSeekMath) and the normalisations people use with it.

For each prompt a group of G completions is sampled and scored; a completion's advantage is its
reward against its group: (r - mean_group) / (std_group + 1e-4) with Bessel's std ("group"), the
std of the whole batch ("batch", Dr. GRPO's advice against per-group scaling) or no scaling
("none"). The policy loss per completion token is the PPO clipped surrogate
-min(ratio x A, clip(ratio, 1 - eps_low, 1 + eps_high) x A), ratio = exp(logp - logp_old), plus
beta x k3 KL to a reference model, exp(ref - logp) - (ref - logp) - 1. How tokens are averaged
is the loss type:
  grpo     mean over each completion's tokens, then over completions (length-biased)
  bnpo     mean over every token of the batch
  dr_grpo  sum over tokens / (completions x max_completion_length) (no length bias)
  dapo     sum over tokens / tokens of the whole generation batch (across micro-batches, ranks)
These are TRL 1.16's GRPOTrainer formulas (tests/post/test_losses.py writes them out per token
and compares). nanochat's on-policy simplification (no ratio, no KL, advantage r - mean) is
loss_type "grpo" with scale "none", one update per sample (ratio 1) and beta 0.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALES = ("group", "batch", "none")


def advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """[N] rewards of N = prompts x group_size completions (a group's completions adjacent) ->
    [N] advantages against their group's mean, scaled per `scale`."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}: choose one of {', '.join(SCALES)}")
    groups = rewards.view(-1, group_size)
    centred = (groups - groups.mean(1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = groups.std(1, keepdim=True).expand_as(groups).reshape(-1)  # Bessel-corrected
    else:
        std = rewards.std().expand_as(rewards)
    return centred / (std + 1e-4)


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "grpo",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.0,
    logp_ref: torch.Tensor | None = None,
    max_len: int | None = None,
    n_tokens: float | None = None,
) -> torch.Tensor:
    """The GRPO loss of completion tokens: logp / logp_old / logp_ref [B, T] per-token log
    probabilities (policy now, at sampling, reference), adv [B] advantages, mask [B, T] 1 on the
    completion's tokens. max_len: dr_grpo's constant length; n_tokens: dapo's token count of the
    whole generation batch (default: this batch's)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - logp_old)
    a = adv[:, None]
    per_token = -torch.min(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)
    if beta:
        d = logp_ref - logp
        per_token = per_token + beta * (torch.exp(d) - d - 1)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.shape[0] * (max_len or per_token.shape[1]))
    total = mask.sum() if n_tokens is None else torch.as_tensor(n_tokens, dtype=logp.dtype)
    return (per_token * mask).sum() / total.clamp(min=1.0)
