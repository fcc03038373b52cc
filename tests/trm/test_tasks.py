"""TRM task data: generators checked against brute-force oracles, augmentations that keep
validity, loaders of the published file formats, and the scorers on hand-made cases."""

import itertools
import random

import pytest
import torch

from adamba.errors import AdambaError
from adamba.trm.tasks import exact_accuracy, load_task
from adamba.trm.tasks.sudoku import Board


def all_4x4_solutions() -> list[tuple[int, ...]]:
    """Every 4x4 sudoku by brute force over rows (288 of them): the oracle for uniqueness."""
    perms = list(itertools.permutations(range(1, 5)))
    out = []
    for rows in itertools.product(perms, repeat=4):
        cols_ok = all(len({r[c] for r in rows}) == 4 for c in range(4))
        boxes_ok = all(
            len({rows[r][c] for r in range(br, br + 2) for c in range(bc, bc + 2)}) == 4
            for br in (0, 2)
            for bc in (0, 2)
        )
        if cols_ok and boxes_ok:
            out.append(sum(rows, ()))
    return out


def naive_valid(grid: list[int], br: int, bc: int) -> bool:
    n = br * bc
    rows = [grid[r * n : (r + 1) * n] for r in range(n)]
    units = rows + [[rows[r][c] for r in range(n)] for c in range(n)]
    units += [
        [rows[r][c] for r in range(R, R + br) for c in range(C, C + bc)]
        for R in range(0, n, br)
        for C in range(0, n, bc)
    ]
    return all(sorted(u) == list(range(1, n + 1)) for u in units)


@pytest.fixture(scope="module")
def sols4():
    return all_4x4_solutions()


def test_exact_accuracy_counts_only_scored_positions():
    labels = torch.tensor([[2, 3, -100], [2, 3, 4], [5, -100, -100]])
    pred = torch.tensor([[2, 3, 9], [2, 3, 5], [5, 0, 0]])
    assert exact_accuracy(pred, labels).tolist() == [True, False, True]
    with pytest.raises(AdambaError, match="shape"):
        exact_accuracy(pred[:2], labels)


def test_4x4_generator_unique_and_valid_against_brute_force(sols4):
    assert len(sols4) == 288
    spec, split = load_task("sudoku", "train", box=2, n=200, seed=3)
    assert (spec.vocab_size, spec.seq_len, spec.grid, spec.n_puzzle_ids) == (6, 16, (4, 4), 1)
    assert split.inputs.shape == split.labels.shape == (200, 16) and split.puzzle_ids.eq(0).all()
    assert split.inputs.min() >= 1 and split.labels.min() >= 2  # 1 = blank, never a target
    for puzzle, sol in zip((split.inputs - 1).tolist(), (split.labels - 1).tolist()):
        assert naive_valid(sol, 2, 2)
        matches = [s for s in sols4 if all(p == 0 or p == v for p, v in zip(puzzle, s))]
        assert matches == [tuple(sol)]  # the givens agree with the solution and admit no other


def test_solution_counter_matches_brute_force(sols4):
    board, rng = Board(2, 2), random.Random(0)
    for _ in range(60):
        sol = list(rng.choice(sols4))
        puzzle = [v if rng.random() < 0.3 else 0 for v in sol]
        want = sum(all(p == 0 or p == v for p, v in zip(puzzle, s)) for s in sols4)
        assert board.count_solutions(puzzle, limit=1000) == want
        assert board.count_solutions(puzzle, limit=2) == min(want, 2)
    assert board.count_solutions([1, 1] + [0] * 14) == 0  # clashing givens


def test_difficulty_is_solver_nodes():
    board = Board(3, 3)
    spec, split = load_task("sudoku", "test", box=3, n=3, holes=30, seed=1)
    for puzzle, sol, m in zip((split.inputs - 1).tolist(), (split.labels - 1).tolist(), split.meta):
        assert naive_valid(sol, 3, 3) and m["clues"] == 51 and sum(v == 0 for v in puzzle) == 30
        assert m["nodes"] == board.difficulty(puzzle) >= 30  # at least one node per blank
        assert board.difficulty(sol) == 0
    # a minimal puzzle needs guesses: more nodes than blanks, and min_nodes keeps only those
    _, hard = load_task("sudoku", "train", box=3, n=4, seed=2, min_nodes=200)
    assert all(m["nodes"] >= 200 and m["nodes"] > 81 - m["clues"] for m in hard.meta)


def test_generator_is_deterministic_and_splits_never_share_a_solution():
    a = load_task("sudoku", "train", box="2x3", n=50, seed=5)[1]
    b = load_task("sudoku", "train", box="2x3", n=50, seed=5)[1]
    c = load_task("sudoku", "train", box="2x3", n=50, seed=6)[1]
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)
    train = {tuple(s) for s in load_task("sudoku", "train", box=2, n=500, n_aug=2, seed=0)[1].labels.tolist()}
    test = {tuple(s) for s in load_task("sudoku", "test", box=2, n=300, seed=0)[1].labels.tolist()}
    assert len(train) > 150 and len(test) > 30 and not train & test


@pytest.mark.parametrize("box", [(2, 2), (2, 3), (3, 3)])
def test_augmentation_keeps_validity_and_uniqueness(box):
    board, rng = Board(*box), random.Random(1)
    _, split = load_task("sudoku", "train", box=box, n=4, seed=4)
    seen, transposed = set(), False
    n = board.n

    def blanks_per_row(p):  # a multiset kept by row/column permutations, swapped with columns' by a transpose
        return sorted(p[r * n : (r + 1) * n].count(0) for r in range(n))

    def blanks_per_col(p):
        return sorted(p[c::n].count(0) for c in range(n))

    for puzzle, sol in zip((split.inputs - 1).tolist(), (split.labels - 1).tolist()):
        for _ in range(10):
            p, s = board.augment([puzzle, sol], rng)
            assert naive_valid(s, *box)
            assert all(v == 0 or v == w for v, w in zip(p, s)) and p.count(0) == puzzle.count(0)
            n_sol, _, found = board.search(p, limit=2)
            assert n_sol == 1 and found == s
            seen.add(tuple(s))
            assert {tuple(blanks_per_row(p)), tuple(blanks_per_col(p))} == {
                tuple(blanks_per_row(puzzle)),
                tuple(blanks_per_col(puzzle)),
            }
            transposed |= blanks_per_row(puzzle) != blanks_per_col(puzzle) and blanks_per_row(
                p
            ) == blanks_per_col(puzzle)
    assert len(seen) > 30
    assert transposed == (box[0] == box[1])  # only square boxes may transpose


def test_train_augmented_copies(sols4):
    _, split = load_task("sudoku", "train", box=2, n=20, n_aug=3, seed=0)
    assert len(split) == 80 and sum(m.get("augmented", False) for m in split.meta) == 60
    assert all(naive_valid(s, 2, 2) for s in (split.labels - 1).tolist())


def write_extreme_csv(path, puzzles, solutions, ratings):
    lines = ["source,question,answer,rating"]
    for p, s, r in zip(puzzles, solutions, ratings):
        q = "".join("." if v == 0 else str(v) for v in p)
        lines.append(f"gen,{q},{''.join(map(str, s))},{r}")
    path.write_text("\n".join(lines) + "\n")


def test_sudoku_extreme_csv_loader(tmp_path):
    _, gen = load_task("sudoku", "test", box=3, n=6, holes=45, seed=0)
    puzzles, sols = (gen.inputs - 1).tolist(), (gen.labels - 1).tolist()
    write_extreme_csv(tmp_path / "train.csv", puzzles, sols, [0, 5, 10, 20, 30, 40])
    (tmp_path / "test.csv").write_text((tmp_path / "train.csv").read_text())
    spec, split = load_task("sudoku", "test", path=tmp_path)
    assert spec.grid == (9, 9) and spec.vocab_size == 11
    assert torch.equal(split.inputs, gen.inputs) and torch.equal(split.labels, gen.labels)
    _, some = load_task("sudoku", "train", path=tmp_path / "train.csv", min_rating=10, n=2, n_aug=1, seed=0)
    assert len(some) == 4 and all(m["rating"] >= 10 for m in some.meta)
    assert all(naive_valid(s, 3, 3) for s in (some.labels - 1).tolist())
    with pytest.raises(AdambaError, match="no puzzle file"):
        load_task("sudoku", "train", path=tmp_path / "missing")
    (tmp_path / "bad.csv").write_text("source,question,answer,rating\nx,123,456,0\n")
    with pytest.raises(AdambaError, match="81 digits"):
        load_task("sudoku", "train", path=tmp_path / "bad.csv")


@pytest.mark.parametrize(
    "name, split, options, match",
    [
        ("chess", "train", {}, "unknown TRM task"),
        ("sudoku", "valid", {}, "unknown split"),
        ("sudoku", "train", {"colour": 1}, "unknown option"),
        ("sudoku", "train", {"box": "2y3"}, "box"),
        ("sudoku", "train", {"box": 5}, "box"),
        ("sudoku", "train", {"box": 2, "holes": 16}, "holes"),
        ("sudoku", "train", {"box": 2, "holes": 13, "max_tries": 5}, "fewer holes"),
        ("sudoku", "train", {"min_rating": 3}, "path="),
    ],
)
def test_one_line_errors(name, split, options, match):
    with pytest.raises(AdambaError, match=match) as e:
        load_task(name, split, **options)
    assert "\n" not in str(e.value)


def test_file_options_and_generator_options_do_not_mix(tmp_path):
    (tmp_path / "train.csv").write_text("source,question,answer,rating\n")
    with pytest.raises(AdambaError, match="holes apply to generated"):
        load_task("sudoku", "train", path=tmp_path, holes=3)
    with pytest.raises(AdambaError, match="no puzzle in"):
        load_task("sudoku", "train", path=tmp_path)


def test_score_dispatch():
    from adamba.trm.tasks import score

    spec, split = load_task("sudoku", "test", box=2, n=10, seed=0)
    preds = split.labels.clone()
    preds[:3, 0] = 1  # three rows wrong in one cell
    assert score(spec, split, preds) == {"n": 10, "exact": 0.7}
    with pytest.raises(AdambaError, match="do not match"):
        score(spec, split, preds[:5])
