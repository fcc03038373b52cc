"""The data interface every TRM task returns, and the helpers all tasks share.

A task is a fixed-size grid read row by row into a flat sequence of token ids (0 = padding,
never a target). Labels use -100 where a position is not scored, as torch's cross-entropy
ignores it. Puzzle ids index a per-puzzle embedding table (ARC gives one id per task and
augmentation; Sudoku and mazes share id 0).
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from adamba.errors import AdambaError

IGNORE = -100  # label of a position that is not scored


@dataclass
class TaskSpec:
    name: str  # "sudoku" | "maze" | "arc"
    vocab_size: int  # token ids 0..vocab_size-1; 0 = padding (never a target)
    seq_len: int  # every example is a flat [seq_len] sequence (a grid read row by row)
    grid: tuple[int, int]  # (rows, cols) of the grid the sequence is
    n_puzzle_ids: int  # size of the per-puzzle embedding table (1 = one shared id 0)


@dataclass
class Split:
    inputs: torch.Tensor  # [N, seq_len] int64 tokens
    labels: torch.Tensor  # [N, seq_len] int64 target tokens, -100 where not scored
    puzzle_ids: torch.Tensor  # [N] int64 in [0, n_puzzle_ids)
    meta: list[dict] | None = None  # per example, what scoring needs

    def __len__(self) -> int:
        return self.inputs.shape[0]


def exact_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] bool: every scored position (labels != -100) of the row predicted right."""
    if pred.shape != labels.shape:
        raise AdambaError(
            f"predictions have shape {tuple(pred.shape)}, labels {tuple(labels.shape)}: pass one row per label row"
        )
    scored = labels != IGNORE
    return ((pred == labels) | ~scored).all(dim=-1)


def split_bucket(cells, test_fraction: float) -> str:
    """'test' or 'train' from a hash of a grid's cells: a grid can land in one split only, so
    the held-out set never shares a puzzle with training, whatever the sizes asked for."""
    digest = hashlib.blake2b(bytes(int(c) for c in cells), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") / 2**64 < test_fraction else "train"


def check_split(task: str, split: str) -> None:
    if split not in ("train", "test"):
        raise AdambaError(f"{task}: unknown split '{split}': use 'train' or 'test'")


def read_puzzle_csv(
    path: str | Path, task: str, split: str, n: int | None, min_rating: float | None, seed: int
) -> list[tuple[str, str, str, float]]:
    """Rows (source, question, answer, rating) of the published Sudoku-Extreme / Maze-Hard files
    (sapientinc on Hugging Face): a header line, then one puzzle a row. `path` is the file or a
    folder holding {split}.csv; rows rated below `min_rating` are dropped, then `n` are kept
    (a seeded sample, in file order)."""
    p = Path(path)
    if p.is_dir():
        p = p / f"{split}.csv"
    if not p.is_file():
        raise AdambaError(
            f"{task}: no puzzle file at {p}: pass path= a CSV file or a folder with {split}.csv"
        )
    rows = []
    with open(p, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) != 4:
            raise AdambaError(f"{task}: {p} is not a source,question,answer,rating CSV (header {header})")
        for i, row in enumerate(reader, start=2):
            if len(row) != 4:
                raise AdambaError(
                    f"{task}: {p} line {i} has {len(row)} fields, expected source,question,answer,rating"
                )
            try:
                rating = float(row[3])
            except ValueError:
                raise AdambaError(f"{task}: {p} line {i}: rating '{row[3]}' is not a number") from None
            if min_rating is None or rating >= min_rating:
                rows.append((row[0], row[1], row[2], rating))
    if n is not None and n < len(rows):
        rows = [
            rows[i] for i in sorted(random.Random(f"{task}-csv|{seed}|{split}").sample(range(len(rows)), n))
        ]
    if not rows:
        raise AdambaError(
            f"{task}: no puzzle in {p} with min_rating={min_rating}: lower it or check the file"
        )
    return rows


FILE_OPTIONS = ("n", "min_rating", "seed", "n_aug")  # what a loader of a published file takes besides path


def generate_or_read(
    task: str, split: str, options: dict, generate, read, knob: str
) -> tuple[TaskSpec, Split]:
    """Dispatch a task's options: path= reads a published file (FILE_OPTIONS apply), anything
    else goes to the generator (its keyword arguments are the options). `knob` is the
    generator's difficulty option, named in the error for min_rating without a file."""
    check_split(task, split)
    made = set(inspect.signature(generate).parameters) - {"split"}
    unknown_options(task, options, made | {"path", *FILE_OPTIONS})
    if "path" in options:
        extra = sorted(set(options) - {"path", *FILE_OPTIONS})
        if extra:
            raise AdambaError(
                f"{task}: {', '.join(extra)} apply to generated puzzles, not to path=: drop them"
            )
        return read(split, **options)
    if "min_rating" in options:
        raise AdambaError(f"{task}: min_rating applies to a published file: pass path= or use {knob}")
    return generate(split, **options)


def unknown_options(task: str, options: dict, allowed: set[str]) -> None:
    bad = sorted(set(options) - allowed)
    if bad:
        raise AdambaError(
            f"{task}: unknown option(s) {', '.join(bad)}: allowed are {', '.join(sorted(allowed))}"
        )
