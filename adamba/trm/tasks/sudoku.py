"""Sudoku: a seeded generator with unique solutions and measured difficulty, the validity-
preserving augmentations, and a loader for the published Sudoku-Extreme CSV files.

Grids are n x n with boxes of br x bc cells (n = br * bc: box 2 is 4x4, "2x3" is 6x6, 3 is 9x9).
Tokens: 0 pad (unused), 1 blank cell, 1 + d for digit d (2..n+1); vocab_size = n + 2. This is
TRM's map (its digit "0" = blank is token 1), so its Sudoku-Extreme data reads the same.
Labels are the full solution and every cell is scored, as TRM scores them.

Difficulty is the node count of a fixed backtracking solver (most constrained cell first,
digits ascending, stop at the first solution): a puzzle that naked singles solve costs one node
per blank; every wrong guess adds more. It is in each example's meta as "nodes".
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from adamba.errors import AdambaError
from adamba.trm.tasks.spec import Split, TaskSpec, generate_or_read, read_puzzle_csv, split_bucket


def parse_box(box) -> tuple[int, int]:
    """2 -> (2, 2); "2x3" or (2, 3) -> (2, 3): box rows x box cols."""
    if isinstance(box, str):
        parts = box.lower().split("x")
        try:
            box = tuple(int(p) for p in parts) if len(parts) == 2 else int(box)
        except ValueError:
            raise AdambaError(f"sudoku: box '{box}' is not an int or 'RxC' (e.g. 3 or '2x3')") from None
    if isinstance(box, int):
        box = (box, box)
    if len(box) != 2 or min(box) < 1 or box[0] * box[1] < 2 or box[0] * box[1] > 16:
        raise AdambaError(f"sudoku: box {box} must be 1..4 cells a side with 2..16 digits (e.g. 2, '2x3', 3)")
    return int(box[0]), int(box[1])


class Board:
    """Geometry of an n x n sudoku with br x bc boxes: the peers (same row/col/box) of each cell."""

    def __init__(self, br: int, bc: int):
        self.br, self.bc, self.n = br, bc, br * bc
        n = self.n
        self.box_of = [(r // br) * (n // bc) + c // bc for r in range(n) for c in range(n)]
        self.full = (1 << (n + 1)) - 2  # bits 1..n

    def masks(self, cells: Sequence[int]) -> tuple[list[int], list[int], list[int]] | None:
        """Used-digit bitmasks per row, column and box; None if the givens already clash."""
        n = self.n
        rows, cols, boxes = [0] * n, [0] * n, [0] * n
        for i, v in enumerate(cells):
            if v:
                r, c, b, bit = i // n, i % n, self.box_of[i], 1 << v
                if (rows[r] | cols[c] | boxes[b]) & bit:
                    return None
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
        return rows, cols, boxes

    def search(
        self, cells: Sequence[int], limit: int = 2, rng: random.Random | None = None
    ) -> tuple[int, int, list[int] | None]:
        """Depth-first search, most constrained cell first: (solutions found up to `limit`, nodes
        visited = digits placed, the first solution). Digits go ascending, or shuffled with `rng`."""
        n, box_of, full = self.n, self.box_of, self.full
        grid = list(cells)
        m = self.masks(grid)
        if m is None:
            return 0, 0, None
        rows, cols, boxes = m
        empty = [i for i, v in enumerate(grid) if not v]
        found = [0, 0, None]  # solutions, nodes, first solution

        def rec() -> bool:  # True = stop (limit reached)
            best, best_free, best_count = -1, 0, n + 1
            for i in empty:
                if grid[i]:
                    continue
                free = full & ~(rows[i // n] | cols[i % n] | boxes[box_of[i]])
                count = free.bit_count()
                if count < best_count:
                    best, best_free, best_count = i, free, count
                    if count <= 1:
                        break
            if best < 0:  # no blank left: a solution
                found[0] += 1
                if found[2] is None:
                    found[2] = list(grid)
                return found[0] >= limit
            digits = [d for d in range(1, n + 1) if best_free >> d & 1]
            if rng is not None:
                rng.shuffle(digits)
            r, c, b = best // n, best % n, box_of[best]
            for d in digits:
                bit = 1 << d
                grid[best] = d
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                found[1] += 1
                stop = rec()
                rows[r] &= ~bit
                cols[c] &= ~bit
                boxes[b] &= ~bit
                grid[best] = 0
                if stop:
                    return True
            return False

        rec()
        return found[0], found[1], found[2]

    def count_solutions(self, cells: Sequence[int], limit: int = 2) -> int:
        return self.search(cells, limit)[0]

    def difficulty(self, cells: Sequence[int]) -> int:
        """Nodes the deterministic solver visits to its first solution."""
        return self.search(cells, limit=1)[1]

    def is_solution(self, cells: Sequence[int]) -> bool:
        """Every row, column and box holds each digit 1..n exactly once."""
        return (
            len(cells) == self.n**2 and all(1 <= v <= self.n for v in cells) and self.masks(cells) is not None
        )

    def random_solution(self, rng: random.Random) -> list[int]:
        return self.search([0] * self.n**2, limit=1, rng=rng)[2]

    def dig(self, solution: list[int], rng: random.Random, holes: int | None) -> list[int] | None:
        """Blank cells in random order, keeping each blank only if the solution stays unique;
        stop at `holes` blanks (None: until no cell can go). None if `holes` was not reached."""
        cells = list(solution)
        order = list(range(len(cells)))
        rng.shuffle(order)
        dug = 0
        for i in order:
            if holes is not None and dug >= holes:
                break
            cells[i] = 0
            if self.count_solutions(cells, 2) == 1:
                dug += 1
            else:
                cells[i] = solution[i]
        return cells if holes is None or dug >= holes else None

    def augment(self, grids: Sequence[Sequence[int]], rng: random.Random) -> list[list[int]]:
        """One random symmetry applied alike to every grid given (a puzzle and its solution):
        digit relabelling, band and row-within-band, stack and column-within-stack permutations,
        and (square boxes only) a transpose. Each maps sudokus to sudokus and solutions of the
        puzzle one to one to solutions of its image, so uniqueness is kept."""
        n, br, bc = self.n, self.br, self.bc
        digit = [0, *rng.sample(range(1, n + 1), n)]
        row_perm = [
            b * br + r for b in rng.sample(range(n // br), n // br) for r in rng.sample(range(br), br)
        ]
        col_perm = [
            s * bc + c for s in rng.sample(range(n // bc), n // bc) for c in rng.sample(range(bc), bc)
        ]
        transpose = br == bc and rng.random() < 0.5
        out = []
        for g in grids:
            src = [g[c * n + r] for r in range(n) for c in range(n)] if transpose else g
            out.append([digit[src[row_perm[r] * n + col_perm[c]]] for r in range(n) for c in range(n)])
        return out


def spec(n: int) -> TaskSpec:
    return TaskSpec(name="sudoku", vocab_size=n + 2, seq_len=n * n, grid=(n, n), n_puzzle_ids=1)


def to_split(puzzles: list[list[int]], solutions: list[list[int]], meta: list[dict]) -> Split:
    """Cells (0 blank, 1..n digits) -> tokens (1 blank, 2..n+1 digits)."""
    inputs = torch.tensor(puzzles, dtype=torch.int64) + 1
    labels = torch.tensor(solutions, dtype=torch.int64) + 1
    return Split(
        inputs=inputs, labels=labels, puzzle_ids=torch.zeros(len(puzzles), dtype=torch.int64), meta=meta
    )


def generate(
    split: str,
    box=2,
    n: int = 1000,
    holes: int | None = None,
    min_nodes: int = 0,
    seed: int = 0,
    test_fraction: float = 0.2,
    n_aug: int = 0,
    max_tries: int = 100,
) -> tuple[TaskSpec, Split]:
    """`n` puzzles with a unique solution each (+ `n_aug` augmented copies of each in train). A solution lands in train or test by its hash,
    so the splits never share one (augmented copies are redrawn until they stay in train)."""
    br, bc = parse_box(box)
    board = Board(br, bc)
    cells = board.n**2
    if holes is not None and not 0 <= holes < cells:
        raise AdambaError(f"sudoku: holes={holes} must be in 0..{cells - 1} for a {board.n}x{board.n} grid")
    if not 0 < test_fraction < 1:
        raise AdambaError(f"sudoku: test_fraction={test_fraction} must be strictly between 0 and 1")
    if n < 1 or n_aug < 0:
        raise AdambaError(f"sudoku: n={n} must be >= 1 and n_aug={n_aug} >= 0")
    rng = random.Random(f"sudoku|{br}x{bc}|{seed}|{split}")
    puzzles, solutions, meta = [], [], []
    for _ in range(n):
        for _try in range(max_tries):
            sol = board.random_solution(rng)
            if split_bucket(sol, test_fraction) != split:
                continue
            puzzle = board.dig(sol, rng, holes)
            if puzzle is None:
                continue
            nodes = board.difficulty(puzzle)
            if nodes >= min_nodes:
                break
        else:
            raise AdambaError(
                f"sudoku: no {board.n}x{board.n} puzzle with holes={holes}, min_nodes={min_nodes} in "
                f"{max_tries} tries: ask for fewer holes or a lower min_nodes"
            )
        item = {"nodes": nodes, "clues": sum(v > 0 for v in puzzle)}
        puzzles.append(puzzle)
        solutions.append(sol)
        meta.append(item)
        if split == "train":
            add_augmented(board, puzzle, sol, item, n_aug, rng, test_fraction, puzzles, solutions, meta)
    return spec(board.n), to_split(puzzles, solutions, meta)


def add_augmented(board, puzzle, sol, item, n_aug, rng, test_fraction, puzzles, solutions, meta) -> None:
    for _ in range(n_aug):
        for _try in range(100):
            p, s = board.augment([puzzle, sol], rng)
            if split_bucket(s, test_fraction) == "train":
                break
        else:
            continue  # every draw fell in test: skip this copy rather than leak it
        puzzles.append(p)
        solutions.append(s)
        meta.append({**item, "augmented": True})


def load_csv(
    split: str, path, n: int | None = None, min_rating: float | None = None, seed: int = 0, n_aug: int = 0
) -> tuple[TaskSpec, Split]:
    """Sudoku-Extreme (sapientinc/sudoku-extreme): question with '.' (or '0') for blanks, answer
    the 81 digits, rating = its solver's difficulty. `n` subsamples (seeded) after `min_rating`."""
    board = Board(3, 3)
    rng = random.Random(f"sudoku-aug|{seed}|{split}")
    rows = read_puzzle_csv(path, "sudoku", split, n, min_rating, seed)
    puzzles, solutions, meta = [], [], []
    for source, q, a, rating in rows:
        if len(q) != 81 or len(a) != 81 or not q.replace(".", "0").isdigit() or not a.isdigit():
            raise AdambaError(f"sudoku: puzzle '{q[:20]}...' is not 81 digits/dots with an 81-digit answer")
        puzzle = [int(ch) for ch in q.replace(".", "0")]
        sol = [int(ch) for ch in a]
        item = {"rating": rating, "source": source, "clues": sum(v > 0 for v in puzzle)}
        puzzles.append(puzzle)
        solutions.append(sol)
        meta.append(item)
        for _ in range(n_aug if split == "train" else 0):
            p, s = board.augment([puzzle, sol], rng)
            puzzles.append(p)
            solutions.append(s)
            meta.append({**item, "augmented": True})
    return spec(9), to_split(puzzles, solutions, meta)


def load(split: str, **options) -> tuple[TaskSpec, Split]:
    return generate_or_read("sudoku", split, options, generate, load_csv, "min_nodes")
