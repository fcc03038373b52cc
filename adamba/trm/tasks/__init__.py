"""TRM tasks: Sudoku, mazes and ARC as flat token grids, with their scorers.

    spec, split = load_task("sudoku", "train", box=2, n=10000, seed=0)

Each task module documents its tokens and options; `load_task` is deterministic given them.
"""

from __future__ import annotations

import torch

from adamba.errors import AdambaError
from adamba.trm.tasks import arc, maze, sudoku
from adamba.trm.tasks.arc_score import pass_at_k
from adamba.trm.tasks.spec import IGNORE, Split, TaskSpec, exact_accuracy

LOADERS = {"sudoku": sudoku.load, "maze": maze.load, "arc": arc.load}

__all__ = ["IGNORE", "Split", "TaskSpec", "exact_accuracy", "load_task", "score"]


def load_task(name: str, split: str, **options) -> tuple[TaskSpec, Split]:
    """name in {"sudoku", "maze", "arc"}, split in {"train", "test"}; options are the task's own."""
    if name not in LOADERS:
        raise AdambaError(f"unknown TRM task '{name}': choose one of {', '.join(sorted(LOADERS))}")
    return LOADERS[name](split, **options)


def score(spec: TaskSpec, split: Split, preds: torch.Tensor, q_conf: torch.Tensor | None = None) -> dict:
    """What evaluation reports for predictions [N, seq_len] of a split's rows: "exact" (the
    fraction of rows with every scored cell right) for every task; for mazes also
    "valid_shortest" (any shortest S -> G path counts); for ARC's test split also pass@1,
    pass@2 and task_all@2 (arc_score.py), voting with `q_conf` [N], the halting confidences."""
    if preds.shape != split.labels.shape:
        raise AdambaError(
            f"{spec.name}: predictions {tuple(preds.shape)} do not match the split's labels {tuple(split.labels.shape)}"
        )
    preds = preds.to(split.labels.device)
    out = {"n": len(split), "exact": exact_accuracy(preds, split.labels).sum().item() / len(split)}
    if spec.name == "arc":
        if q_conf is None:
            raise AdambaError("arc: pass@2 needs the halting confidences (q_conf) to break voting ties")
        out.update(pass_at_k(preds, q_conf, split.meta, frame=spec.grid[0]))
    if spec.name == "maze":
        out["valid_shortest"] = maze.valid_shortest(preds, split.inputs, spec.grid).sum().item() / len(split)
    return out
