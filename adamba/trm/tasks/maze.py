"""Mazes: a seeded generator of shortest-path puzzles, the "valid and shortest" scorer and a
loader for the published Maze-Hard CSV files.

A maze is a rows x cols grid of walls and open cells with a start S and a goal G; the answer
draws a shortest S -> G path (4-connected moves) on it. Tokens are TRM's map of the characters
"# SGo": 1 wall '#', 2 open ' ', 3 start 'S', 4 goal 'G', 5 path 'o' (vocab_size 6, 0 pad
unused). Labels are the whole answer grid, every cell scored (walls, S and G copied, path cells
marked), as TRM scores them.

The generator draws each cell a wall with probability `wall` and S on a random open cell, then
G uniformly among the open cells at least `min_path` steps from S and (with `unique`, the
default) joined to it by one shortest path only, redrawing the walls when no cell qualifies:
then the labelled path is the only right answer and exact accuracy equals the valid-and-
shortest score.
"""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import torch

from adamba.errors import AdambaError
from adamba.trm.tasks.augment import SHAPE_KEEPING, dihedral
from adamba.trm.tasks.spec import Split, TaskSpec, generate_or_read, read_puzzle_csv, split_bucket

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
CHARSET = "# SGo"  # token = index + 1


def parse_size(size) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if isinstance(size, str):
        try:
            size = tuple(int(p) for p in size.lower().split("x"))
        except ValueError:
            size = ()
    if len(size) != 2 or not 2 <= size[0] <= 64 or not 2 <= size[1] <= 64:
        raise AdambaError(
            f"maze: size {size} must be an int or 'RxC' with 2..64 cells a side (e.g. 6 or '6x8')"
        )
    return int(size[0]), int(size[1])


def neighbours(i: int, rows: int, cols: int):
    r, c = divmod(i, cols)
    if r > 0:
        yield i - cols
    if r < rows - 1:
        yield i + cols
    if c > 0:
        yield i - 1
    if c < cols - 1:
        yield i + 1


def bfs(cells: list[int], rows: int, cols: int, start: int, passable) -> tuple[list[int], list[int]]:
    """Steps from `start` to every cell (-1 unreachable) and the number of shortest paths
    (capped at 2) over cells whose token is in `passable`."""
    dist, ways = [-1] * len(cells), [0] * len(cells)
    dist[start], ways[start] = 0, 1
    queue = deque([start])
    while queue:
        i = queue.popleft()
        for j in neighbours(i, rows, cols):
            if cells[j] not in passable:
                continue
            if dist[j] < 0:
                dist[j], ways[j] = dist[i] + 1, ways[i]
                queue.append(j)
            elif dist[j] == dist[i] + 1:
                ways[j] = min(2, ways[j] + ways[i])
    return dist, ways


def solve(cells: list[int], rows: int, cols: int) -> tuple[list[int], int, int] | None:
    """(the answer grid with one shortest path drawn, its steps, shortest paths capped at 2);
    None when G is unreachable."""
    start, goal = cells.index(START), cells.index(GOAL)
    dist, ways = bfs(cells, rows, cols, start, (OPEN, GOAL))
    if dist[goal] < 0:
        return None
    answer, i = list(cells), goal
    while dist[i] > 1:  # walk back along strictly decreasing distance
        i = next(j for j in neighbours(i, rows, cols) if dist[j] == dist[i] - 1 and cells[j] == OPEN)
        answer[i] = PATH
    return answer, dist[goal], ways[goal]


def valid_shortest(pred: torch.Tensor, inputs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[N] bool: the prediction keeps every wall, S and G of the input, marks path only on open
    cells, and its path cells join S to G in exactly the shortest number of steps (so they are
    one shortest path, any of them if there are several)."""
    rows, cols = grid
    out = []
    for p, x in zip(pred.tolist(), inputs.tolist()):
        fixed_ok = all(pv == xv for pv, xv in zip(p, x) if xv != OPEN)
        open_ok = all(pv in (OPEN, PATH) for pv, xv in zip(p, x) if xv == OPEN)
        if not (fixed_ok and open_ok and START in x and GOAL in x):
            out.append(False)
            continue
        shortest = bfs(x, rows, cols, x.index(START), (OPEN, GOAL))[0][x.index(GOAL)]
        along = bfs(p, rows, cols, p.index(START), (PATH, GOAL))[0][p.index(GOAL)]
        out.append(shortest > 0 and along == shortest and p.count(PATH) == shortest - 1)
    return torch.tensor(out, dtype=torch.bool)


def spec(rows: int, cols: int) -> TaskSpec:
    return TaskSpec(
        name="maze", vocab_size=len(CHARSET) + 1, seq_len=rows * cols, grid=(rows, cols), n_puzzle_ids=1
    )


def to_split(inputs: list[list[int]], answers: list[list[int]], meta: list[dict]) -> Split:
    x = torch.tensor(inputs, dtype=torch.int64)
    return Split(
        inputs=x,
        labels=torch.tensor(answers, dtype=torch.int64),
        puzzle_ids=torch.zeros(len(x), dtype=torch.int64),
        meta=meta,
    )


def augmented(
    cells: list[int], answer: list[int], rows: int, cols: int, rng: random.Random
) -> tuple[list[int], list[int]]:
    """The same random dihedral transform (one keeping the shape when rows != cols) of both."""
    t = rng.randrange(8) if rows == cols else rng.choice(SHAPE_KEEPING)
    return tuple(dihedral(np.array(g).reshape(rows, cols), t).reshape(-1).tolist() for g in (cells, answer))


def bucket_with_goal(cells: list[int], goal: int, test_fraction: float) -> str:
    """The split the maze would belong to with G on `goal` (cells is left as it was)."""
    cells[goal] = GOAL
    bucket = split_bucket(cells, test_fraction)
    cells[goal] = OPEN
    return bucket


def generate(
    split: str,
    size=6,
    n: int = 1000,
    wall: float = 0.3,
    min_path: int = 1,
    unique: bool = True,
    seed: int = 0,
    test_fraction: float = 0.2,
    n_aug: int = 0,
    max_tries: int = 1000,
) -> tuple[TaskSpec, Split]:
    """`n` mazes (+ `n_aug` dihedral copies of each in train); a maze lands in train or test by
    the hash of its input grid, so the splits never share one."""
    rows, cols = parse_size(size)
    if not 0 <= wall < 1:
        raise AdambaError(f"maze: wall={wall} must be in [0, 1)")
    if not 1 <= min_path <= rows * cols:
        raise AdambaError(
            f"maze: min_path={min_path} must be 1..{rows * cols} steps for a {rows}x{cols} grid"
        )
    if not 0 < test_fraction < 1 or n < 1 or n_aug < 0:
        raise AdambaError(
            f"maze: need 0 < test_fraction < 1, n >= 1 and n_aug >= 0 (got {test_fraction}, {n}, {n_aug})"
        )
    rng = random.Random(f"maze|{rows}x{cols}|{seed}|{split}")
    inputs, answers, meta = [], [], []
    for _ in range(n):
        for _try in range(max_tries):
            cells = [WALL if rng.random() < wall else OPEN for _ in range(rows * cols)]
            free = [i for i, v in enumerate(cells) if v == OPEN]
            if not free:
                continue
            s = rng.choice(free)
            dist, ways = bfs(cells, rows, cols, s, (OPEN,))
            goals = [i for i in free if dist[i] >= min_path and (ways[i] == 1 or not unique)]
            rng.shuffle(goals)
            cells[s] = START
            goal = next((g for g in goals if bucket_with_goal(cells, g, test_fraction) == split), None)
            if goal is not None:
                cells[goal] = GOAL
                break
        else:
            raise AdambaError(
                f"maze: no {rows}x{cols} maze with wall={wall}, min_path={min_path}, unique={unique} in "
                f"{max_tries} tries: lower min_path or wall, or set unique=false"
            )
        answer, steps, ways = solve(cells, rows, cols)
        item = {"path_len": steps, "n_shortest": ways}
        inputs.append(cells)
        answers.append(answer)
        meta.append(item)
        for _ in range(n_aug if split == "train" else 0):
            for _try in range(100):
                x, y = augmented(cells, answer, rows, cols, rng)
                if split_bucket(x, test_fraction) == "train":
                    inputs.append(x)
                    answers.append(y)
                    meta.append({**item, "augmented": True})
                    break
    return spec(rows, cols), to_split(inputs, answers, meta)


def load_csv(
    split: str, path, n: int | None = None, min_rating: float | None = None, seed: int = 0, n_aug: int = 0
) -> tuple[TaskSpec, Split]:
    """Maze-Hard (sapientinc/maze-30x30-hard-1k): square grids in the characters "# SGo",
    question without the path, answer with it; `n` subsamples (seeded) after `min_rating`."""
    rng = random.Random(f"maze-aug|{seed}|{split}")
    rows_ = read_puzzle_csv(path, "maze", split, n, min_rating, seed)
    side = int(round(len(rows_[0][1]) ** 0.5))
    inputs, answers, meta = [], [], []
    for source, q, a, rating in rows_:
        if len(q) != side * side or len(a) != side * side or set(q + a) - set(CHARSET):
            raise AdambaError(
                f"maze: row '{source}' is not two {side}x{side} grids in the characters '{CHARSET}'"
            )
        x, y = [CHARSET.index(ch) + 1 for ch in q], [CHARSET.index(ch) + 1 for ch in a]
        item = {"rating": rating, "source": source}
        inputs.append(x)
        answers.append(y)
        meta.append(item)
        for _ in range(n_aug if split == "train" else 0):
            ax, ay = augmented(x, y, side, side, rng)
            inputs.append(ax)
            answers.append(ay)
            meta.append({**item, "augmented": True})
    return spec(side, side), to_split(inputs, answers, meta)


def load(split: str, **options) -> tuple[TaskSpec, Split]:
    return generate_or_read("maze", split, options, generate, load_csv, "min_path")
