"""Training: `run(cfg)` trains a model from a Config (the `adamba train` command calls it)."""

from adamba.train.trainer import TrainResult, run

__all__ = ["TrainResult", "run"]
