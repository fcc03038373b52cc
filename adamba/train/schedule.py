"""Learning-rate multipliers as pure functions of the step, so resuming needs only the step."""

from __future__ import annotations

import math
from typing import Protocol


class Schedule(Protocol):
    """What a schedule reads: [train] has these fields, and so does each resolved phase."""

    schedule: str  # cosine | wsd | constant
    warmup_frac: float
    decay_frac: float
    min_lr_frac: float


def lr_multiplier(step: int, total: int, cfg: Schedule) -> float:
    """Linear warmup, then cosine to min_lr_frac, WSD (stable, then linear decay over the last
    decay_frac of training to min_lr_frac), or constant. warmup_frac = 0: no warm-up (the cosine
    starts at step 0); any other fraction warms up at least one step."""
    warmup = max(1, int(round(cfg.warmup_frac * total))) if cfg.warmup_frac > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    lo = cfg.min_lr_frac
    if cfg.schedule == "wsd":
        decay_start = int(total * (1.0 - cfg.decay_frac))
        if step < decay_start:
            return 1.0
        frac = (step - decay_start) / max(1, total - decay_start)
        return 1.0 - (1.0 - lo) * min(1.0, frac)
    frac = (step - warmup) / max(1, total - warmup)
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
