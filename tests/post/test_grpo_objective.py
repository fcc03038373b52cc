"""The `grpo` objective in the phase engine: a tiny random model learns, through `adamba train`, to
answer a fixed number it almost never says at the start (exact-answer reward); the per-token log
probabilities equal the model's own; a beta > 0 run keeps the phase-start model as its reference
and resumes exactly (prompt position, reference, weights); the registry's and [post]'s one-line
errors."""

import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch

import adamba.post.objectives as po
from adamba import checkpoint as ck
from adamba.config import load_config
from adamba.data.template import stop_ids
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model.lm import LM
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from adamba.train.objectives import OBJECTIVES
from tests.helpers import adamba, model_config, tiny_overrides

QUESTIONS = ["What is the number?", "Say the number.", "Which number?", "Give the number.", "Number, please."]
GRPO_PHASE = '[[phase]]\nname = "grpo"\nobjective = "grpo"\nsteps = {steps}\n'


def write_prompts(path, answer="7"):
    path.write_text("".join(json.dumps({"question": q, "answer": answer}) + "\n" for q in QUESTIONS))
    return path


def grpo_overrides(data, out, prompts, steps):
    return tiny_overrides(data, out, steps) + [
        f"post.prompts={prompts}",
        "post.reward=exact",
        "post.max_new_tokens=4",
        "post.group_size=8",
        "train.batch_size=2",  # prompts per micro-step: 16 completions
        "train.lr=3e-2",
        "train.schedule=constant",
        "train.warmup_frac=0",
        "train.eval_every=0",
        "train.ckpt_every=0",
        "run.tensorboard=false",
    ]


def test_grpo_learns_a_fixed_answer_through_adamba_train(tiny_data, tmp_path):
    """From random weights the model says "7" as its last number in a few percent of its 4-token
    replies; 30 GRPO steps (16 completions each, exact-answer reward) make it say it nearly always.
    Measured with these prompts over train.seed 1..10 and 1337: mean reward of the first 5 steps
    0.00-0.05, of the last 5 0.59-1.00 (seed 1337, the one run here: 0.01 -> 1.00)."""
    conf = tmp_path / "grpo.toml"
    conf.write_text(GRPO_PHASE.format(steps=30))
    over = grpo_overrides(tiny_data, tmp_path / "run", write_prompts(tmp_path / "p.jsonl"), 30)
    res = adamba("train", "--config", str(conf), *[a for o in over for a in ("--set", o)])
    assert res.returncode == 0, res.stderr
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["phase"] for r in rows] == ["grpo"] * 30
    assert all({"reward", "accuracy", "completion_len"} <= set(r) for r in rows)
    reward = [r["reward"] for r in rows]
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    assert first < 0.2 and last > first + 0.5, reward
    assert [r["accuracy"] for r in rows] == reward  # the reward is exact_answer alone
    assert all(1 <= r["completion_len"] <= 4 for r in rows)
    # `adamba phases` knows the objective too (the command imports adamba.post.objectives)
    plan = adamba("phases", "--config", str(conf), *[a for o in over for a in ("--set", o)])
    assert plan.returncode == 0 and "grpo" in plan.stdout, plan.stderr


def test_completion_logp_is_the_models_own(tiny_data, tmp_path):
    """The per-token log probabilities of the completions (right-padded batch, head on the masked
    positions only) equal log_softmax(logits / temperature) of the model over each sequence alone;
    sampling stops each completion at its first stop token."""
    tok = Tokenizer.load(tiny_data["tokenizer"])
    torch.manual_seed(0)
    model = LM(
        model_config(vocab_size=tok.vocab_size, d_model=32, n_layer=2, attn={"n_head": 2, "n_kv_head": 1})
    )
    stops = stop_ids(tok) | set(range(100, 200))  # a quarter of the vocabulary: completions of mixed lengths
    prompt = po.load_prompts(str(write_prompts(tmp_path / "lp.jsonl")), tok)[0][0]
    comps = po.sample_group(model, prompt, 6, 12, 1.0, None, stops, torch.Generator().manual_seed(0))
    assert all(1 <= len(c) <= 12 for c in comps) and len({len(c) for c in comps}) > 1
    assert all(not (set(c[:-1]) & stops) and (len(c) == 12 or c[-1] in stops) for c in comps)
    assert model.training  # sampled in eval mode, handed back as it was
    seqs = [prompt + c for c in comps]
    logp, mask = po.completion_logp(model, seqs, [len(prompt)] * len(seqs), tok.pad_id, temperature=0.7)
    assert mask.sum(1).tolist() == [len(c) for c in comps]
    with torch.no_grad():
        for i, s in enumerate(seqs):
            lg = torch.log_softmax(model(torch.tensor([s]))[0][0].float() / 0.7, -1)
            want = lg[len(prompt) - 1 : len(s) - 1].gather(-1, torch.tensor(comps[i])[:, None]).squeeze(-1)
            torch.testing.assert_close(logp[i][mask[i]], want, rtol=1e-5, atol=1e-5)


TWO_PHASES = '[[phase]]\nname = "lm"\nsteps = 2\n\n' + GRPO_PHASE.format(steps=4)


def test_kl_reference_and_exact_resume(tiny_data, tmp_path, monkeypatch):
    """beta > 0 after an lm phase: the reference is the model as the grpo phase begins (KL 0 at
    its first step, > 0 after); a run interrupted inside the grpo phase resumes with the same
    prompt position and reference, and its metrics and weights equal the uninterrupted run's."""
    conf = tmp_path / "two.toml"
    conf.write_text(TWO_PHASES)
    prompts = write_prompts(tmp_path / "p.jsonl")

    def cfg(out):
        return load_config(str(conf), grpo_overrides(tiny_data, out, prompts, 6) + ["post.beta=0.1"])

    ref = tmp_path / "ref"
    trainer.run(cfg(ref))
    real = trainer.Trainer.train_step

    def step_then_signal(self):
        row = real(self)
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # honoured at the end of the step
        return row

    out = tmp_path / "cut"
    monkeypatch.setattr(trainer.Trainer, "train_step", step_then_signal)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(cfg(out))
    monkeypatch.setattr(trainer.Trainer, "train_step", real)
    saved = ck.load_trainer_state(ck.read_checkpoint(out))["objective"]
    assert saved["position"] == 2 * 2  # two grpo steps of 2 prompts
    assert set(saved["reference"]) == set(LM(cfg(out).model).state_dict())
    trainer.run(cfg(out), resume=True)
    a, b = (read_metrics(d / "metrics.jsonl") for d in (ref, out))
    keys = ("step", "phase", "loss", "reward", "kl")
    assert [tuple(r.get(k) for k in keys) for r in a] == [tuple(r.get(k) for k in keys) for r in b]
    grpo = [r for r in a if r["phase"] == "grpo"]
    assert len(grpo) == 4 and grpo[0]["kl"] == 0.0 and all(r["kl"] > 0 for r in grpo[1:])
    assert all("kl" not in r and "reward" not in r for r in a if r["phase"] == "lm")
    wa, wb = (ck.load_model(d)[0].state_dict() for d in (ref, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_unregistered_objective_is_one_line(tiny_data, tmp_path, monkeypatch):
    conf = tmp_path / "g.toml"
    conf.write_text(GRPO_PHASE.format(steps=1))
    cfg = load_config(
        str(conf), grpo_overrides(tiny_data, tmp_path / "r", write_prompts(tmp_path / "p.jsonl"), 1)
    )
    monkeypatch.delitem(OBJECTIVES, "grpo")
    with pytest.raises(AdambaError) as e:
        trainer.run(cfg)
    assert str(e.value) == (
        "objective 'grpo' is defined in adamba.post: import adamba.post.objectives first (the adamba command does)"
    )


@pytest.mark.parametrize(
    "override, needle",
    [
        ("post.group_size=1", "post.group_size=1 is out of range: use an integer >= 2"),
        ("post.temperature=0", "post.temperature=0.0 is out of range"),
        ("post.max_new_tokens=0", "post.max_new_tokens=0 is out of range"),
        ("post.top_k=-1", "post.top_k=-1 is out of range"),
        ("post.beta=-0.1", "post.beta=-0.1 is out of range"),
        ("post.eps_high=nan", "post.eps_high=nan is out of range"),
        ("post.loss_type=ppo", "post.loss_type='ppo': choose one of grpo, bnpo, dr_grpo, dapo"),
        ("post.scale=rank", "post.scale='rank': choose one of group, batch, none"),
        ("post.nope=1", "unknown config key 'post.nope'"),
    ],
)
def test_post_config_values_are_checked(override, needle):
    with pytest.raises(AdambaError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_reward_spec():
    reward, terms = po.parse_reward("exact + 0.1*format")
    assert terms == [("exact", 1.0), ("format", 0.1)]
    assert reward("so #### 7", "7") == pytest.approx(1.1) and reward("7", "#### 7") == 1.0
    for bad in ("", "exakt", "x*exact", "exact+", "inf*format"):
        with pytest.raises(AdambaError, match="post.reward=.*exact.*format"):
            po.parse_reward(bad)


def test_grpo_setup_errors(tiny_data, tmp_path, monkeypatch):
    """Refused in one line before the first step: no prompts file set, a malformed record, a
    reward name that does not exist, a tokenizer without adamba's chat tokens."""
    conf = tmp_path / "g.toml"
    conf.write_text(GRPO_PHASE.format(steps=1))
    good = write_prompts(tmp_path / "p.jsonl")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Say 7."}], "answer": "7"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "1"}) + '\n{"messages": [{"role": "assistant"}]}\n')

    def run(prompts, *extra):
        over = grpo_overrides(tiny_data, tmp_path / "r", prompts, 1) + list(extra)
        return trainer.run(load_config(str(conf), over), overwrite=True)

    assert run(chat).steps == 1  # a chat record with an answer field
    cases = [
        (("",), "uses the 'grpo' objective: set post.prompts"),
        ((bad,), "record 2: messages must be a list"),
        ((good, "post.reward=exact+0.5*tool"), "post.reward='exact+0.5*tool'"),
        ((tmp_path / "missing.jsonl",), "no such file"),
    ]
    for args, needle in cases:
        with pytest.raises(AdambaError) as e:
            run(*args)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)

    def imported(path):  # the objective's tokenizer, as if imported from Hugging Face
        t = Tokenizer.load(path)
        t.foreign, t._special = True, {"<|eos|>": t.eos_id}  # no chat tokens
        return t

    monkeypatch.setattr(po, "Tokenizer", SimpleNamespace(load=imported))
    with pytest.raises(AdambaError, match="adamba's chat tokens"):
        run(good)
