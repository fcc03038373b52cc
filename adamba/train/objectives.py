"""Phase objectives, registered by name: what one training step of a phase computes.

An objective pulls the batches it needs from `next_batch()` (most take one per micro-step) and
returns (the loss to backprop, the loss to log). Its `default_train` is what the phase trains
when its config says nothing, and its state (if any) is checkpointed with the run, so a phase
resumes exactly. Later issues register `sft`, `distill`, ... the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from adamba.config import Config
from adamba.train.phases import GATES, Phase

Batch = tuple[torch.Tensor, torch.Tensor]


class Objective:
    """The plain language-model loss: next-token cross-entropy over the batch."""

    default_train = ["*"]
    never_train = ["elastic"]  # parameters this objective gives no gradient (kept frozen)
    changes_lm = True  # the validation bits/byte can move (evaluated during the phase)

    def __init__(self, model: nn.Module, cfg: Config, phase: Phase, forward: nn.Module):
        self.model, self.cfg, self.phase, self.forward = model, cfg, phase, forward

    def loss(self, step: int, next_batch: Callable[[], Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next_batch()
        _, loss = self.forward(x, y)
        return loss, loss

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ElasticObjective(Objective):
    """Matryoshka sandwich widths + the early-exit and width-predictor terms
    (adamba/train/elastic.py); logs the full-width LM loss. The gates are fitted by the
    gate-calibration objective only."""

    never_train = GATES

    def loss(self, step, next_batch):
        from adamba.train.elastic import elastic_loss

        x, y = next_batch()
        return elastic_loss(self.model, x, y, self.cfg.elastic)


class GateCalibrationObjective(Objective):
    """The ConfidenceGates fitted to the frozen model's own layer agreement (GateFit)."""

    default_train = GATES
    never_train: list[str] = []
    changes_lm = False

    def __init__(self, model, cfg, phase, forward):
        from adamba.train.elastic import GateFit

        super().__init__(model, cfg, phase, forward)
        self.fit = GateFit(model, cfg.elastic.calibrate_reuse)

    def loss(self, step, next_batch):
        return self.fit.loss(step, next_batch)

    def state_dict(self) -> dict:
        return self.fit.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.fit.load_state_dict(state)


OBJECTIVES: dict[str, type[Objective]] = {
    "lm": Objective,
    "elastic": ElasticObjective,
    "gate-calibration": GateCalibrationObjective,
}
