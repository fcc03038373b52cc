"""The report card: stderr, 95% CI, baseline and centred score in results.json and report.md for
an `adamba eval` run, and `--every` over a run with two checkpoints (one row per checkpoint and
task, a PNG plot)."""

import json
from pathlib import Path

import pytest

from adamba.eval import report

DATA = Path(__file__).parent / "data"


def test_score_arithmetic_and_files(tmp_path):
    s = [
        report.Score("arc_easy", "acc_norm", 0.5, 100, 0.25),
        report.Score("gsm8k", "exact_match", 0.1, 10, 0.0),
        report.Score("mc", "acc", 0.0, 4, 0.5),
    ]
    assert s[0].stderr == pytest.approx(0.05) and s[0].ci95 == pytest.approx((0.402, 0.598))
    assert s[0].centred == pytest.approx(1 / 3) and s[2].centred == pytest.approx(-1.0)
    assert s[2].stderr == 0.0 and s[2].ci95 == (0.0, 0.0)  # clipped at 0
    j, m = report.write(tmp_path, s, "card", {"step": 7})
    data = json.loads(j.read_text())
    assert data["meta"] == {"step": 7}
    assert data["scores"][0]["centred"] == pytest.approx(1 / 3)
    assert data["scores"][1]["stderr"] == pytest.approx(0.0949, abs=1e-4)
    assert data["scores"][1]["ci95"] == pytest.approx([0.0, 0.286], abs=1e-3)
    md = m.read_text()
    assert md.startswith("# card\n")
    assert "| arc_easy | acc_norm | 0.5000 | 0.0500 | 0.402-0.598 | 0.2500 | +0.3333 | 100 |" in md
    assert "| gsm8k | exact_match | 0.1000 | 0.0949 | 0.000-0.286 | 0.0000 | +0.1000 | 10 |" in md
    # the CORE-style mean counts one metric per task (acc_norm, exact match; not mc's raw acc)
    assert "Mean centred score over 2 task(s): +0.2167" in md


def test_eval_run_writes_the_card(elastic_run, tmp_path):
    from adamba.eval.run import run_eval

    out = tmp_path / "card"
    lines = run_eval(
        str(elastic_run / "dense"),
        ["arc_easy", "mc"],
        [f"arc_easy={DATA / 'arc_tiny.jsonl'}", f"mc={DATA / 'mc_tiny.jsonl'}"],
        out=str(out),
        progress=False,
    )
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["step"] == 2 and Path(data["meta"]["checkpoint"]).name.startswith("step_")
    rows = [(s["task"], s["metric"], s["n"]) for s in data["scores"]]
    assert rows == [
        ("arc_easy", "acc", 5),
        ("arc_easy", "acc_norm", 5),
        ("mc", "acc", 2),
        ("mc", "acc_norm", 2),
    ]
    for s in data["scores"]:
        assert s["stderr"] == pytest.approx((s["value"] * (1 - s["value"]) / s["n"]) ** 0.5)
        assert s["centred"] == pytest.approx((s["value"] - s["baseline"]) / (1 - s["baseline"]))
    assert data["scores"][2]["baseline"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    md = (out / "report.md").read_text()
    assert md.startswith("# adamba eval") and md.count("\n| arc_easy |") == 2 and md.count("\n| mc |") == 2
    assert "Mean centred score over 2 task(s)" in md
    assert any(line.startswith("| arc_easy | acc |") for line in lines) and lines[-1].startswith("-> ")


def test_every_checkpoint_of_a_run(elastic_run, tmp_path, capsys):
    from adamba.cli import main

    every = tmp_path / "every"
    main(
        ["eval", "--ckpt", str(elastic_run / "el"), "--every", "--tasks", "bpb,mc", "--quiet"]
        + ["--data", f"mc={DATA / 'mc_tiny.jsonl'}", "--out", str(every), "--batches", "2"]
    )
    printed = capsys.readouterr().out
    assert "step 4: bpb" in printed and "step 6: bpb" in printed
    rows = json.loads((every / "every.json").read_text())["checkpoints"]
    # steps 4 and 6 of the elastic run (Matryoshka, then gate calibration)
    assert [r["step"] for r in rows] == [4, 6] and all("bpb" in r and len(r["scores"]) == 2 for r in rows)
    md = (every / "every.md").read_text()
    assert md.count("| mc | acc |") == 2 and md.count("| bpb | bits/byte |") == 2
    assert "| 4 | mc | acc |" in md and "| 6 | mc | acc |" in md
    png = (every / "every.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_every_needs_checkpoints(tmp_path, capsys):
    from tests.cli.test_bad_args import cli_error

    err = cli_error(capsys, "eval", "--ckpt", str(tmp_path), "--every", "--tasks", "bpb")
    assert "has no checkpoints/step_N folders" in err
