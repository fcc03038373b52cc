"""The lm-evaluation-harness adapter, offline: a local task YAML over a local JSONL, run through
lm_eval.simple_evaluate and through lm_eval's command line; the harness's per-request
log-likelihoods are our own scorer's, and its accuracy is what `adamba eval` computes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

import torch  # noqa: E402

from adamba.checkpoint import load_model  # noqa: E402
from adamba.eval.likelihood import loglikelihoods, rolling_logprob  # noqa: E402
from adamba.eval.tasks import mc, read_records  # noqa: E402

DATA = Path(__file__).parent / "data"

MC_YAML = """task: tiny_arc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices.text}}}}"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n", "Question:"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""

ROLL_YAML = """task: tiny_roll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{question}}}}"
metric_list:
  - metric: word_perplexity
"""


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_eval_tasks")
    (d / "tiny_arc.yaml").write_text(MC_YAML.format(data=DATA / "arc_tiny.jsonl"))
    gsm = d / "gen.jsonl"
    gsm.write_text(
        "\n".join(
            json.dumps({"question": q, "answer": a}) for q, a in [("1 plus 1?", "2"), ("2 plus 2?", "4")]
        )
    )
    (d / "tiny_gen.yaml").write_text(GEN_YAML.format(data=gsm))
    (d / "tiny_roll.yaml").write_text(ROLL_YAML.format(data=gsm))
    return d


def test_simple_evaluate_matches_our_scorer(elastic_run, tasks_dir):
    from lm_eval.tasks import TaskManager

    import adamba.eval.harness  # noqa: F401  (registers "adamba")

    ckpt = elastic_run / "dense"
    res = lm_eval.simple_evaluate(
        model="adamba",
        model_args=f"ckpt={ckpt},batch_size=4",
        tasks=["tiny_arc", "tiny_gen", "tiny_roll"],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        log_samples=True,
        bootstrap_iters=0,
    )
    model, tok, _ = load_model(ckpt)
    its = mc.items("arc_easy", read_records(DATA / "arc_tiny.jsonl"))
    ours = {s.metric: s.value for s in mc.score("arc_easy", model, tok, its)}
    assert res["results"]["tiny_arc"]["acc,none"] == pytest.approx(ours["acc"])
    assert res["results"]["tiny_arc"]["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    # every per-request log-likelihood equals our scorer's for the same context/continuation
    for sample in res["samples"]["tiny_arc"]:
        assert len(sample["arguments"]) == len(sample["resps"]) >= 3
        for (ctx, cont), resp in zip(sample["arguments"], sample["resps"]):
            lp, greedy = resp[0]
            (s,) = loglikelihoods(model, [([tok.bos_id] + tok.encode(ctx), tok.encode(cont))])
            assert float(lp) == pytest.approx(s.logprob, abs=1e-5) and bool(greedy) == s.greedy
    # rolling: the whole text's log-probability, as our rolling scorer computes it, and (the
    # texts fit one window) minus the summed cross-entropy bpb is computed from
    for sample in res["samples"]["tiny_roll"]:
        text = sample["arguments"][0][0]
        got = float(sample["resps"][0][0])
        ids = [tok.bos_id] + tok.encode(text)
        assert got == pytest.approx(rolling_logprob(model, ids[1:], tok.bos_id)[0], abs=1e-5)
        with torch.no_grad():
            _, loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
        assert len(ids) <= model.cfg.max_seq_len and got == pytest.approx(
            -float(loss) * (len(ids) - 1), abs=1e-4
        )
    gen = res["samples"]["tiny_gen"]
    assert len(gen) == 2 and all(
        isinstance(s["resps"][0][0], str) and "\n\n" not in s["resps"][0][0] for s in gen
    )
    assert "exact_match,none" in res["results"]["tiny_gen"]


def test_registering_keeps_lm_eval_models():
    """Registering "adamba" first must not hide lm_eval's own models (its registry fills itself
    only when empty): a fresh interpreter, as a user script would meet it."""
    code = (
        "import adamba.eval.harness\n"
        "from lm_eval.api.registry import get_model\n"
        "print(get_model('adamba').__name__, get_model('dummy').__name__)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.split() == ["AdambaLM", "DummyLM"], res.stderr[-2000:]


def test_lm_eval_command_line(elastic_run, tasks_dir, tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamba.eval.harness",
            "--model",
            "adamba",
            "--model_args",
            f"ckpt={elastic_run / 'dense'}",
            "--tasks",
            "tiny_arc",
            "--include_path",
            str(tasks_dir),
            "--output_path",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tiny_arc" in res.stdout and "acc" in res.stdout
