"""Report-card tasks on a tiny trained checkpoint: multiple-choice scoring equals acc / acc_norm
worked out by hand from the oracle's log-likelihoods, records of every supported shape load,
GSM8K's answer extraction on real lines and its generation pipeline, the report card, the CLI
end to end (one checkpoint and --every), and one-line errors."""

import json
from pathlib import Path

import pytest

from adamba.checkpoint import load_model
from adamba.eval import report
from adamba.eval.tasks import gsm8k, mc, read_records
from tests.eval.test_likelihood import naive

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def dense(elastic_run):
    return load_model(elastic_run / "dense")


def test_records_of_every_shape_load():
    arc = mc.items("arc_easy", read_records(DATA / "arc_tiny.jsonl"))
    assert arc[0].context == "Question: Which of these is a planet?\nAnswer:" and arc[0].choices[0] == " Mars"
    assert [i.gold for i in arc] == [0, 0, 1, 0] and len(arc[1].choices) == 3  # numeric labels too
    hs = mc.items("hellaswag", read_records(DATA / "hellaswag_tiny.jsonl"))
    assert hs[0].context == "Cooking: A man cracks two eggs into a bowl. He" and hs[1].gold == 1
    gen = mc.items("mc", read_records(DATA / "mc_tiny.jsonl"))
    assert gen[1].gold == 1 and gen[0].choices == [" 4", " 5", " 22"]


def test_mc_scores_equal_hand_computed_acc(dense):
    model, tok, _ = dense
    its = mc.items("arc_easy", read_records(DATA / "arc_tiny.jsonl"))
    acc, acc_norm = mc.score("arc_easy", model, tok, its, batch_size=3)
    right = right_norm = 0
    for it in its:
        ctx = [tok.bos_id] + tok.encode(it.context)
        lps = [naive(model, ctx, tok.encode(c))[0] for c in it.choices]
        norm = [lp / len(c.encode()) for lp, c in zip(lps, it.choices)]
        right += lps.index(max(lps)) == it.gold
        right_norm += norm.index(max(norm)) == it.gold
    assert acc.value == right / 4 and acc_norm.value == right_norm / 4
    assert acc.baseline == pytest.approx((0.25 + 1 / 3 + 0.25 + 0.25) / 4) and acc.n == 4
    letters = mc.score_letters("arc_easy", model, tok, its[:2])
    assert letters.metric == "acc_letter" and letters.n == 2


def test_gsm8k_extraction_on_real_lines(shared_data):
    recs = read_records(shared_data / "gsm8k/train.jsonl")[:200]
    for r in recs:
        ref = r["answer"].split("####")[-1].strip().replace(",", "")
        assert gsm8k.extract(r["answer"]) == ref
    assert gsm8k.extract("so she pays $1,234.00.") == "1234"
    assert gsm8k.extract("The answer is 7. Then 8 apples") == "8"
    assert gsm8k.extract("no numbers") is None


def test_gsm8k_pipeline(dense):
    model, tok, _ = dense
    recs = [{"question": "What is 2 plus 3?", "answer": "2+3=5\n#### 5"}] * 2
    shots = [{"question": "What is 1 plus 1?", "answer": "1+1=2\n#### 2"}]
    s, rows = gsm8k.score(model, tok, recs, shots, max_new_tokens=8)
    assert s.metric == "exact_match" and s.n == 2 and s.baseline == 0.0
    assert (
        all(r["reference"] == "5" for r in rows) and s.value == sum(r["extracted"] == "5" for r in rows) / 2
    )
    assert all("\n\n" not in r["output"] for r in rows)


def test_report_card(tmp_path):
    s = [
        report.Score("arc_easy", "acc_norm", 0.5, 100, 0.25),
        report.Score("gsm8k", "exact_match", 0.1, 10, 0.0),
    ]
    assert s[0].stderr == pytest.approx(0.05) and s[0].ci95 == pytest.approx((0.402, 0.598))
    assert s[0].centred == pytest.approx(1 / 3)
    j, m = report.write(tmp_path, s, "card")
    data = json.loads(j.read_text())
    assert data["scores"][0]["centred"] == pytest.approx(1 / 3) and data["scores"][1][
        "stderr"
    ] == pytest.approx(0.0949, abs=1e-4)
    md = m.read_text()
    assert "| arc_easy | acc_norm | 0.5000 | 0.0500 | 0.402-0.598 | 0.2500 | +0.3333 | 100 |" in md
    assert "Mean centred score over 2 task(s)" in md


def test_eval_cli_one_checkpoint_and_every(elastic_run, tmp_path, capsys):
    from adamba.cli import main

    out = tmp_path / "card"
    main(
        [
            "eval",
            "--ckpt",
            str(elastic_run / "dense"),
            "--tasks",
            "arc_easy,mc",
            "--data",
            f"arc_easy={DATA / 'arc_tiny.jsonl'}",
            "--data",
            f"mc={DATA / 'mc_tiny.jsonl'}",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "| arc_easy | acc |" in text and "| mc | acc_norm |" in text
    assert [s["task"] for s in json.loads((out / "results.json").read_text())["scores"]] == [
        "arc_easy"
    ] * 2 + ["mc"] * 2
    assert (out / "report.md").read_text().startswith("# adamba eval")
    main(
        [
            "eval",
            "--ckpt",
            str(elastic_run / "dense"),
            "--tasks",
            "mc",
            "--chat",
            "--data",
            f"mc={DATA / 'mc_tiny.jsonl'}",
        ]
    )
    assert "| mc | acc_letter |" in capsys.readouterr().out
    # every checkpoint of the elastic run (steps 4 and 6: Matryoshka, then gate calibration)
    every = tmp_path / "every"
    main(
        ["eval", "--ckpt", str(elastic_run / "el"), "--every", "--tasks", "bpb,mc"]
        + ["--data", f"mc={DATA / 'mc_tiny.jsonl'}", "--out", str(every), "--batches", "2"]
    )
    rows = json.loads((every / "every.json").read_text())["checkpoints"]
    assert [r["step"] for r in rows] == [4, 6] and all("bpb" in r and len(r["scores"]) == 2 for r in rows)
    assert (every / "every.md").read_text().count("| mc | acc |") == 2
    assert (every / "every.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--tasks", "arc_hard"], "unknown eval task(s) arc_hard"),
        (["--tasks", "mc"], "task mc reads a local file"),
        (["--tasks", "arc_easy", "--data", "arc_easy=/no/such.jsonl"], "no such file"),
        (["--tasks", "bpb,arc_easy", "--data", "x.jsonl"], "ambiguous"),
        (["--tasks", "arc_easy", "--limit", "0"], "--limit 0 must be >= 1"),
    ],
)
def test_eval_errors_one_line(capsys, tmp_path, argv, needle):
    from tests.cli.test_bad_args import cli_error

    assert needle in cli_error(capsys, "eval", "--ckpt", str(tmp_path / "none"), *argv)


def test_arc_agi_pass_at_2(dense, monkeypatch):
    import numpy as np

    from adamba.eval.tasks import arc_agi

    g = np.array([[0, 1], [2, 3]])
    assert arc_agi.grid_text(g) == "01\n23" and (arc_agi.parse_grid("01\n23\n") == g).all()
    assert arc_agi.parse_grid("01\n2") is None and arc_agi.parse_grid("ab") is None
    assert arc_agi.pass_at_2([None, g], g) and not arc_agi.pass_at_2([g[:1], None], g)
    assert not arc_agi.pass_at_2([None, None, g], g)  # a third attempt does not count
    tasks = arc_agi.load("eval")[:2]
    model, tok, _ = dense
    s, rows = arc_agi.score(model, tok, tasks)  # the tiny model: the pipeline runs, scores ~0
    assert s.metric == "pass@2" and s.n == sum(len(t.test) for t in tasks) and s.baseline == 0.0
    # an oracle attempt (the right grid on the second try) scores 1
    answers = iter([a for t in tasks for _, y in t.test for a in (None, np.asarray(y))])
    monkeypatch.setattr(arc_agi, "attempt", lambda *a, **k: next(answers))
    assert arc_agi.score(model, tok, tasks)[0].value == 1.0
