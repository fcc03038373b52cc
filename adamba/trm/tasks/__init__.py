"""TRM tasks: Sudoku, mazes and ARC as flat token grids, with their scorers.

    spec, split = load_task("sudoku", "train", box=2, n=10000, seed=0)

Each task module documents its tokens and options; `load_task` is deterministic given them.
"""

from __future__ import annotations

import torch

from adamba.errors import AdambaError
from adamba.trm.tasks import maze, sudoku
from adamba.trm.tasks.spec import IGNORE, Split, TaskSpec, exact_accuracy

LOADERS = {"sudoku": sudoku.load, "maze": maze.load}

__all__ = ["IGNORE", "Split", "TaskSpec", "exact_accuracy", "load_task", "score"]


def load_task(name: str, split: str, **options) -> tuple[TaskSpec, Split]:
    """name in {"sudoku", "maze", "arc"}, split in {"train", "test"}; options are the task's own."""
    if name not in LOADERS:
        raise AdambaError(f"unknown TRM task '{name}': choose one of {', '.join(sorted(LOADERS))}")
    return LOADERS[name](split, **options)


def score(spec: TaskSpec, split: Split, preds: torch.Tensor, q_conf: torch.Tensor | None = None) -> dict:
    """What evaluation reports for predictions [N, seq_len] of a split's rows: "exact" (the
    fraction of rows with every scored cell right) for every task; for mazes also
    "valid_shortest" (any shortest S -> G path counts)."""
    if preds.shape != split.labels.shape:
        raise AdambaError(
            f"{spec.name}: predictions {tuple(preds.shape)} do not match the split's labels {tuple(split.labels.shape)}"
        )
    preds = preds.to(split.labels.device)
    out = {"n": len(split), "exact": exact_accuracy(preds, split.labels).sum().item() / len(split)}
    if spec.name == "maze":
        out["valid_shortest"] = maze.valid_shortest(preds, split.inputs, spec.grid).sum().item() / len(split)
    return out
