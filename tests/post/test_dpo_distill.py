"""The `dpo` and `distill` objectives in the phase engine, on tiny models and locally generated data:
DPO on correct vs wrong sums (the wrong one drops the carry) makes a random model prefer the
correct answer on held-out questions; on-policy (and off-policy) distillation from a briefly
trained teacher checkpoint lowers the student's KL to it on held-out prompts; the one-line
config and setup errors (a teacher with another tokenizer among them)."""

import json
import random

import pytest
import torch

import adamba.post.objectives as po
from adamba import checkpoint as ck
from adamba.config import load_config
from adamba.data.chat import Message
from adamba.data.template import render, stop_ids
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model.lm import LM
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from tests.helpers import tiny_overrides

PHASE = '[[phase]]\nname = "{name}"\nobjective = "{name}"\nsteps = {steps}\n'
QUIET = [
    "train.schedule=constant",
    "train.warmup_frac=0",
    "train.eval_every=0",
    "train.ckpt_every=0",
    "run.tensorboard=false",
]


def sums(path, combos):
    """{prompt, chosen, rejected}: "What is 7+5?" -> "12" over "2" (the carry dropped)."""
    rows = [
        {"prompt": f"What is {a}+{b}?", "chosen": f"{a + b}", "rejected": f"{a + b - 10}"} for a, b in combos
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def split_sums(tmp_path):
    combos = [(a, b) for a in range(1, 10) for b in range(1, 10) if a + b >= 10]  # 45 questions
    random.Random(0).shuffle(combos)
    return sums(tmp_path / "train.jsonl", combos[:30]), sums(tmp_path / "test.jsonl", combos[30:])


def dpo_config(tiny_data, tmp_path, pairs, steps, *extra):
    conf = tmp_path / "dpo.toml"
    conf.write_text(PHASE.format(name="dpo", steps=steps))
    over = tiny_overrides(tiny_data, tmp_path / "run", steps) + QUIET
    over += [f"post.pairs={pairs}", "train.batch_size=8", "train.lr=1e-2", *extra]
    return load_config(str(conf), over)


def test_dpo_prefers_correct_sums_on_held_out_pairs(tiny_data, tmp_path):
    """30 DPO steps of 8 pairs from 30 questions a+b >= 10 (chosen: the sum; rejected: the sum
    without its carry, one digit shorter). On the 15 held-out questions the random model gives
    the shorter wrong reply the higher likelihood every time (accuracy 0.00); after training it
    prefers the correct sum on 0.80 of them (train.seed 1337; seeds 1, 2, 3: 0.87, 1.00, 0.73),
    and the implicit reward (against the phase-start reference, which the checkpoint keeps)
    ranks every held-out pair right (1.00 on all four seeds). In metrics.jsonl the batch
    accuracy is 0 at step 1 (policy = reference: no margin) and 1 from step 2; the margin ends
    at 1.4-3.3."""
    train, test = split_sums(tmp_path)
    cfg = dpo_config(tiny_data, tmp_path, train, 30)
    trainer.run(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["phase"] for r in rows] == ["dpo"] * 30 and all({"accuracy", "margin"} <= set(r) for r in rows)
    assert rows[0]["accuracy"] == 0.0 and rows[0]["margin"] == 0.0
    assert sum(r["accuracy"] for r in rows[-10:]) / 10 > 0.9
    assert sum(r["margin"] for r in rows[-5:]) / 5 > 1.0

    model = ck.load_model(tmp_path / "run")[0]
    state = ck.load_trainer_state(ck.read_checkpoint(tmp_path / "run"))["objective"]
    assert state["position"] == 30 * 8
    ref = LM(ck.read_checkpoint(tmp_path / "run").cfg.model)
    ref.load_state_dict(state["reference"])
    tok = Tokenizer.load(tiny_data["tokenizer"])
    held = po.load_pairs(str(test), tok)
    obj = po.DPOObjective.__new__(po.DPOObjective)
    obj.tok = tok
    with torch.no_grad():
        lp, rp = obj.logps(model, held), obj.logps(ref.eval(), held)
    n = len(held)
    before = (rp[:n] > rp[n:]).float().mean().item()
    after = (lp[:n] > lp[n:]).float().mean().item()
    d = lp - rp
    implicit = ((d[:n] - d[n:]) > 0).float().mean().item()
    assert before < 0.2 and after > before + 0.5 and implicit > 0.9, (before, after, implicit)


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    """A teacher checkpoint: the tiny model after 40 language-model steps on tiny_data."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    trainer.run(load_config(None, tiny_overrides(tiny_data, out, 40) + QUIET + ["train.seed=7"]))
    return out


TOPICS = ["lists", "dicts", "files", "loops", "strings", "numbers", "errors", "classes", "modules", "tests"]


def distill_config(tiny_data, tmp_path, teacher, steps, *extra):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"question": f"Tell me about {t}.", "answer": "-"}) + "\n" for t in TOPICS[:7])
    )
    conf = tmp_path / "distill.toml"
    conf.write_text(PHASE.format(name="distill", steps=steps))
    over = tiny_overrides(tiny_data, tmp_path / "run", steps) + QUIET
    over += [
        f"post.prompts={prompts}",
        f"post.teacher={teacher}",
        "post.group_size=4",
        "post.max_new_tokens=8",
    ]
    return load_config(str(conf), over + ["train.batch_size=2", "train.lr=1e-2", *extra])


def held_out_kl(student, teacher_model, tok) -> float:
    """Mean per-token reverse KL(student || teacher) on 8 student samples of each held-out prompt."""
    seqs, starts = [], []
    for i, t in enumerate(TOPICS[7:]):
        ids = render(tok, [Message("user", f"Tell me about {t}.")], prompt=True).ids
        for c in po.sample_group(
            student, ids, 8, 8, 1.0, None, stop_ids(tok), torch.Generator().manual_seed(i)
        ):
            seqs.append(ids + c)
            starts.append(len(ids))
    with torch.no_grad():
        s = po.completion_logits(student, seqs, starts, tok.pad_id)
        t = po.completion_logits(teacher_model, seqs, starts, tok.pad_id)
    return po.kl(s, t, direction="reverse").item()


@pytest.mark.parametrize("mode", ["on-policy", "off-policy"])
def test_distill_lowers_kl_to_the_teacher(tiny_data, tmp_path, teacher, mode):
    """20 steps (2 prompts x 4 samples of up to 8 tokens) from random weights: the held-out
    reverse KL to the teacher (8 student samples of each of 3 unseen prompts) falls from 1.95 to
    0.10 on-policy and 0.11 off-policy (train.seed 1337; seeds 1-3: 1.93-1.94 -> 0.11-0.13
    on-policy, 0.10-0.11 off-policy); the logged training KL falls likewise (on-policy reverse
    1.9 -> 0.1, off-policy forward 1.2 -> 0.1)."""
    cfg = distill_config(tiny_data, tmp_path, teacher, 20, f"post.distill_mode={mode}")
    tok = Tokenizer.load(tiny_data["tokenizer"])
    cfg.model.vocab_size = tok.vocab_size  # as the trainer sets it, so the start model is rebuilt
    torch.manual_seed(cfg.train.seed)
    start = LM(cfg.model).eval()
    trainer.run(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["phase"] for r in rows] == ["distill"] * 20
    assert all(1 <= r["completion_len"] <= 8 for r in rows)
    logged = [r["kl"] for r in rows]
    assert sum(logged[-5:]) / 5 < 0.5 * sum(logged[:2]) / 2, logged
    teacher_model = po.load_teacher(str(teacher), tok, tok.vocab_size, "cpu")
    before = held_out_kl(start, teacher_model, tok)
    after = held_out_kl(ck.load_model(tmp_path / "run")[0], teacher_model, tok)
    assert before > 1.0 and after < 0.25 * before, (before, after)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("post.dpo_beta=0", "post.dpo_beta=0.0 is out of range: use a finite number > 0"),
        (
            "post.label_smoothing=0.5",
            "post.label_smoothing=0.5 is out of range: use a finite number in [0, 0.5)",
        ),
        ("post.distill_mode=online", "post.distill_mode='online': choose one of on-policy, off-policy"),
    ],
)
def test_dpo_distill_config_values_are_checked(override, needle):
    with pytest.raises(AdambaError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_setup_errors(tiny_data, tmp_path, teacher, monkeypatch):
    """Refused in one line before the first step: no pairs file, a malformed pair, no teacher or
    prompts for distill, a teacher whose tokenizer is not the student's."""
    good = split_sums(tmp_path)[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "q", "chosen": "1", "rejected": "2"}) + '\n{"prompt": "q", "chosen": ""}\n'
    )
    for pairs, needle in [
        ("", "uses the 'dpo' objective: set post.pairs"),
        (bad, "record 2: write {prompt, chosen"),
    ]:
        with pytest.raises(AdambaError) as e:
            trainer.run(dpo_config(tiny_data, tmp_path, pairs, 1), overwrite=True)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert trainer.run(dpo_config(tiny_data, tmp_path, good, 1), overwrite=True).steps == 1

    real, n = ck.load_model, Tokenizer.load(tiny_data["tokenizer"]).vocab_size

    def other(change):  # the teacher as load_model returns it, with another tokenizer or vocabulary
        def load(path, *a, **k):
            model, tok, ckpt = real(path, *a, **k)
            if change == "tokenizer":
                tok.fingerprint = lambda: "0" * 64
            else:
                ckpt.cfg.model.vocab_size += 1
            return model, tok, ckpt

        return load

    cases = [
        ((teacher, "post.prompts="), "uses the 'distill' objective: set post.prompts"),
        (("",), "uses the 'distill' objective: set post.teacher"),
        ((teacher,), "its tokenizer (000000000000, model vocab"),
        ((teacher,), f"model vocab {n + 1}) is not the student's ("),
    ]
    for k, (args, needle) in enumerate(cases):
        if k >= 2:
            monkeypatch.setattr(ck, "load_model", other("tokenizer" if k == 2 else "vocab"))
        with pytest.raises(AdambaError) as e:
            trainer.run(distill_config(tiny_data, tmp_path, args[0], 1, *args[1:]), overwrite=True)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_resume_refuses_a_changed_teacher(tiny_data, tmp_path, teacher):
    """A distill run resumes against the teacher it began with; when the teacher path now holds
    other weights (its run trained on, LATEST moved), --resume is refused in one line."""
    import shutil

    moving = tmp_path / "teacher"
    shutil.copytree(teacher, moving)
    cfg = distill_config(tiny_data, tmp_path, moving, 2, "train.ckpt_every=2")
    trainer.run(cfg)
    resumed = distill_config(tiny_data, tmp_path, moving, 3)  # one more step, same teacher: fine
    assert trainer.run(resumed, resume=True).steps == 3
    model, tok, ckpt = ck.load_model(moving)
    with torch.no_grad():
        model.head.weight.mul_(1.5)
    ck.save_checkpoint(moving, 999, model, ckpt.cfg, ckpt.tokenizer_path)
    with pytest.raises(AdambaError) as e:
        trainer.run(distill_config(tiny_data, tmp_path, moving, 4), resume=True)
    msg = str(e.value)
    assert "is not the teacher this run began with" in msg and "\n" not in msg, msg
