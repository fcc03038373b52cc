"""Mazes: the generator against a relaxation-BFS oracle and a brute-force path count, the
valid-and-shortest scorer on hand-made grids, dihedral copies, the Maze-Hard loader."""

import numpy as np
import pytest
import torch

from adamba.errors import AdambaError
from adamba.trm.tasks import exact_accuracy, load_task, maze
from adamba.trm.tasks.augment import SHAPE_KEEPING, dihedral, inverse_dihedral


def oracle_dist(cells, rows, cols):
    """Steps from S to every open cell by repeated relaxation (Bellman-Ford), not a queue."""
    inf = 10**9
    dist = [0 if v == maze.START else inf for v in cells]
    for _ in range(rows * cols):
        for i, v in enumerate(cells):
            if v in (maze.OPEN, maze.GOAL):
                r, c = divmod(i, cols)
                near = [
                    dist[(r + dr) * cols + c + dc]
                    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
                    if 0 <= r + dr < rows and 0 <= c + dc < cols
                ]
                dist[i] = min([dist[i], *(d + 1 for d in near)])
    return dist


def shortest_paths(cells, rows, cols, steps):
    """Every simple S -> G path of exactly `steps` moves, by depth-first enumeration."""
    goal = divmod(cells.index(maze.GOAL), cols)
    found = []

    def walk(path):
        r, c = path[-1]
        if len(path) - 1 + abs(r - goal[0]) + abs(c - goal[1]) > steps:
            return
        if (r, c) == goal:
            found.append(list(path))
            return
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if (
                0 <= nr < rows
                and 0 <= nc < cols
                and (nr, nc) not in path
                and cells[nr * cols + nc] in (maze.OPEN, maze.GOAL)
            ):
                walk([*path, (nr, nc)])

    walk([divmod(cells.index(maze.START), cols)])
    return found


def test_maze_generator_against_bfs_oracle():
    spec, split = load_task("maze", "train", size=6, n=60, min_path=5, seed=1)
    assert (spec.vocab_size, spec.seq_len, spec.grid) == (6, 36, (6, 6))
    for x, y, m in zip(split.inputs.tolist(), split.labels.tolist(), split.meta):
        assert x.count(maze.START) == x.count(maze.GOAL) == 1 and maze.PATH not in x
        steps = oracle_dist(x, 6, 6)[x.index(maze.GOAL)]
        assert steps == m["path_len"] >= 5
        paths = shortest_paths(x, 6, 6, steps)
        assert len(paths) == 1  # unique shortest path
        drawn = {i for i, v in enumerate(y) if v == maze.PATH}
        assert drawn == {r * 6 + c for r, c in paths[0][1:-1]}
        assert all(a == b for a, b in zip(x, y) if b != maze.PATH)
    assert maze.valid_shortest(split.labels, split.inputs, spec.grid).all()


def test_maze_valid_and_shortest_scorer():
    # 3x3 open room, S top-left, G bottom-right: six shortest paths of 4 steps
    S, G, O, P, W = maze.START, maze.GOAL, maze.OPEN, maze.PATH, maze.WALL
    x = [S, O, O, O, O, O, O, O, G]
    right = [S, P, P, O, O, P, O, O, G]  # along the top, down the right
    other = [S, O, O, P, P, P, O, O, G]  # down one, across, down
    detour = [S, P, P, P, P, P, O, O, G]  # connected but two cells too many
    broken = [S, P, O, O, O, P, O, O, G]  # two path cells, not joined
    bad_fixed = [S, P, P, O, O, P, O, O, O]  # G erased
    inputs = torch.tensor([x] * 5)
    ok = maze.valid_shortest(torch.tensor([right, other, detour, broken, bad_fixed]), inputs, (3, 3))
    assert ok.tolist() == [True, True, False, False, False]
    assert exact_accuracy(torch.tensor([other]), torch.tensor([right])).tolist() == [False]
    walled = [S, W, O, O, W, O, O, O, G]  # the only shortest path now: down, down, right, right
    assert maze.valid_shortest(
        torch.tensor([[S, W, O, P, W, O, P, P, G], [S, W, O, O, W, O, P, P, G]]),
        torch.tensor([walled] * 2),
        (3, 3),
    ).tolist() == [True, False]
    assert maze.valid_shortest(
        torch.tensor([[S, P, O, P, W, O, P, P, G]]), torch.tensor([walled]), (3, 3)
    ).tolist() == [False]  # path on a wall


def test_maze_splits_determinism_and_augmentation():
    a = load_task("maze", "train", size="5x7", n=40, seed=2, n_aug=2)[1]
    b = load_task("maze", "train", size="5x7", n=40, seed=2, n_aug=2)[1]
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels) and len(a) == 120
    assert maze.valid_shortest(a.labels, a.inputs, (5, 7)).all()  # dihedral copies stay solved
    train = {tuple(x) for x in load_task("maze", "train", size=4, n=400, seed=0, n_aug=3)[1].inputs.tolist()}
    test = {tuple(x) for x in load_task("maze", "test", size=4, n=200, seed=0)[1].inputs.tolist()}
    assert len(test) > 100 and not train & test
    _, loose = load_task("maze", "test", size=8, n=30, min_path=8, unique=False, seed=0)
    assert any(m["n_shortest"] > 1 for m in loose.meta)
    assert maze.valid_shortest(loose.labels, loose.inputs, (8, 8)).all()


def test_dihedral_transforms_are_a_group_with_exact_inverses():
    g = np.arange(12).reshape(3, 4)
    images = {dihedral(g, t).tobytes() + bytes(dihedral(g, t).shape) for t in range(8)}
    assert len(images) == 8  # eight different symmetries
    for t in range(8):
        assert np.array_equal(inverse_dihedral(dihedral(g, t), t), g)
        assert (dihedral(g, t).shape == g.shape) == (t in SHAPE_KEEPING)
    with pytest.raises(ValueError):
        dihedral(g, 8)


def test_maze_hard_csv_loader(tmp_path):
    _, gen = load_task("maze", "test", size=5, n=4, seed=0)
    lines = ["source,question,answer,rating"]
    for i, (x, y) in enumerate(zip(gen.inputs.tolist(), gen.labels.tolist())):
        lines.append(
            f"gen,{''.join(maze.CHARSET[v - 1] for v in x)},{''.join(maze.CHARSET[v - 1] for v in y)},{i}"
        )
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    spec, split = load_task("maze", "train", path=tmp_path, n_aug=1)
    assert spec.grid == (5, 5) and spec.vocab_size == 6 and len(split) == 8
    assert torch.equal(split.inputs[::2], gen.inputs) and torch.equal(split.labels[::2], gen.labels)
    assert maze.valid_shortest(split.labels, split.inputs, (5, 5)).all()
    assert len(load_task("maze", "train", path=tmp_path, min_rating=2)[1]) == 2
    (tmp_path / "test.csv").write_text("source,question,answer,rating\nx,#SGX,#SGo,0\n")
    with pytest.raises(AdambaError, match="characters"):
        load_task("maze", "test", path=tmp_path)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"size": 1}, "size"),
        ({"size": "ax3"}, "size"),
        ({"wall": 1.0}, "wall"),
        ({"size": 3, "min_path": 10}, "min_path"),
        ({"size": 5, "min_path": 12, "max_tries": 20}, "lower min_path"),
        ({"min_rating": 1}, "path="),
    ],
)
def test_maze_one_line_errors(options, match):
    with pytest.raises(AdambaError, match=match) as e:
        load_task("maze", "train", **options)
    assert "\n" not in str(e.value)


def test_score_reports_valid_and_shortest_for_mazes():
    from adamba.trm.tasks import score

    spec, split = load_task("maze", "test", size=3, n=6, unique=False, min_path=4, seed=0)
    preds = split.labels.clone()
    for row, (x, y) in enumerate(zip(split.inputs.tolist(), split.labels.tolist())):
        others = [
            p
            for p in shortest_paths(x, 3, 3, 4)
            if {r * 3 + c for r, c in p[1:-1]} != {i for i, v in enumerate(y) if v == maze.PATH}
        ]
        if others:  # draw another shortest path: wrong for exact, right for valid_shortest
            preds[row] = torch.tensor(x)
            for r, c in others[0][1:-1]:
                preds[row, r * 3 + c] = maze.PATH
    got = score(spec, split, preds)
    assert got["valid_shortest"] == 1.0 and got["exact"] < 1.0
