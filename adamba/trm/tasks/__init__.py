"""TRM tasks: Sudoku, mazes and ARC as flat token grids, with their scorers.

    spec, split = load_task("sudoku", "train", box=2, n=10000, seed=0)

Each task module documents its tokens and options; `load_task` is deterministic given them.
"""

from __future__ import annotations

from adamba.errors import AdambaError
from adamba.trm.tasks import sudoku
from adamba.trm.tasks.spec import IGNORE, Split, TaskSpec, exact_accuracy

LOADERS = {"sudoku": sudoku.load}

__all__ = ["IGNORE", "Split", "TaskSpec", "exact_accuracy", "load_task"]


def load_task(name: str, split: str, **options) -> tuple[TaskSpec, Split]:
    """name in {"sudoku", "maze", "arc"}, split in {"train", "test"}; options are the task's own."""
    if name not in LOADERS:
        raise AdambaError(f"unknown TRM task '{name}': choose one of {', '.join(sorted(LOADERS))}")
    return LOADERS[name](split, **options)
