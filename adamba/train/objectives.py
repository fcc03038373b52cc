"""Phase objectives, registered by name: what one training step of a phase computes.

An objective pulls the batches it needs from `next_batch()` (most take one per micro-step) and
returns (the loss to backprop, the loss to log, the number of target tokens they average over);
the trainer weights micro-steps and ranks by that count, so a step's gradient is the mean over
every target token of the step, however the batch is split across processes. Its `default_train` is what the phase trains
when its config says nothing, and its state (if any) is checkpointed with the run, so a phase
resumes exactly. Objectives of higher rooms register themselves on import with `register`
(adamba/post/objectives.py: `grpo`); the `adamba` command imports them, a script that builds a
Trainer itself imports them first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from adamba.config import Config
from adamba.errors import AdambaError
from adamba.train.phases import GATES, Phase

Batch = tuple[torch.Tensor, torch.Tensor]


def targets(y: torch.Tensor) -> torch.Tensor:
    """The number of scored positions of a batch (padding is -100)."""
    return (y != -100).sum()


class Objective:
    """The plain language-model loss: next-token cross-entropy over the batch."""

    default_train = ["*"]
    never_train = ["elastic"]  # parameters this objective gives no gradient (kept frozen)
    changes_lm = True  # the validation bits/byte can move (evaluated during the phase)

    def __init__(self, model: nn.Module, cfg: Config, phase: Phase, forward: nn.Module):
        self.model, self.cfg, self.phase, self.forward = model, cfg, phase, forward

    # the parallel wrapper may skip looking for parameters without a gradient (DDP's fast path)
    uses_every_trainable = True

    def loss(
        self, step: int, next_batch: Callable[[], Batch]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = next_batch()
        _, loss = self.forward(x, y)
        aux = getattr(self.model, "aux_loss", None)  # MoE load balancing: trained, not logged as loss
        return loss, loss if aux is None else loss - aux.detach(), targets(y)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ElasticObjective(Objective):
    """Matryoshka sandwich widths + the early-exit and width-predictor terms
    (adamba/train/elastic.py); logs the full-width LM loss. The gates are fitted by the
    gate-calibration objective only."""

    never_train = GATES
    uses_every_trainable = False  # the expansion schedule and exit terms are sampled per step

    def loss(self, step, next_batch):
        from adamba.train.elastic import elastic_loss

        x, y = next_batch()
        return (*elastic_loss(self.model, x, y, self.cfg.elastic), targets(y))


class GateCalibrationObjective(Objective):
    """The ConfidenceGates fitted to the frozen model's own layer agreement (GateFit)."""

    default_train = GATES
    never_train: list[str] = []
    uses_every_trainable = False  # each step fits the full-width gates and one narrow width's
    changes_lm = False

    def __init__(self, model, cfg, phase, forward):
        from adamba.train.elastic import GateFit

        super().__init__(model, cfg, phase, forward)
        self.fit = GateFit(model, cfg.elastic.calibrate_reuse)

    def loss(self, step, next_batch):
        total, logged = self.fit.loss(step, next_batch)
        return total, logged, targets(self.fit.batch[1])

    def state_dict(self) -> dict:
        return self.fit.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.fit.load_state_dict(state)


class SFTObjective(Objective):
    """Supervised fine-tuning on chat data: the language-model loss on the targets the data's
    loss mask keeps (the assistant's tokens; adamba/data/sft.py writes the mask, the loader turns
    the rest into -100). The phase's data must carry masks: plain text would train on everything."""

    needs_masked_data = True


ELSEWHERE = {
    name: "adamba.post" for name in ("grpo", "dpo", "distill")
}  # objectives that live in a room above train, by the package


class Registry(dict):
    """Objective name -> class; looking up one that is not registered is a one-line AdambaError
    (the trainer, `adamba phases` and `adamba estimate` look objectives up here)."""

    def __missing__(self, name: str) -> type[Objective]:
        if name in ELSEWHERE:
            raise AdambaError(
                f"objective {name!r} is defined in {ELSEWHERE[name]}: import {ELSEWHERE[name]}.objectives first "
                "(the adamba command does)"
            )
        raise AdambaError(f"unknown objective {name!r}: choose one of {', '.join(self)}")


OBJECTIVES: dict[str, type[Objective]] = Registry(
    {
        "lm": Objective,
        "sft": SFTObjective,
        "elastic": ElasticObjective,
        "gate-calibration": GateCalibrationObjective,
    }
)


def register(name: str, cls: type[Objective]) -> type[Objective]:
    """Make `cls` the objective of phases with `objective = name` (config.OBJECTIVES lists the
    names a config may use)."""
    OBJECTIVES[name] = cls
    return cls
