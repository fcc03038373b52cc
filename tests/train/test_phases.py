"""The phase engine: [[phase]] tables resolve against [train]/[data], parameter selectors, freeze
sets (no gradient, no optimizer state, bitwise unchanged), optimizer state carried or reset
across phases, per-phase data, and exact resume at any step of a 3-phase run whose trainable set
changes between phases."""

import os
import signal

import pytest
import torch

from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from adamba.train.phases import plan, select
from tests.helpers import three_phase_config, tiny_overrides


def test_a_config_without_phases_is_one_lm_phase(tiny_data, tmp_path):
    cfg = load_config("tiny-cpu", tiny_overrides(tiny_data, tmp_path, steps=7))
    (ph,) = plan(cfg)
    assert (ph.name, ph.objective, ph.steps, ph.lr, ph.schedule) == ("lm", "lm", 7, 1e-2, "wsd")
    assert ph.data == [tiny_data["train"]] and ph.seed == cfg.train.seed
    el = plan(load_config("tiny-cpu", tiny_overrides(tiny_data, tmp_path) + ["elastic.enabled=true"]))
    assert [p.objective for p in el] == ["elastic", "gate-calibration"]


def test_phase_fields_resolve_against_train_and_data(tiny_data, tmp_path):
    cfg = three_phase_config(
        tmp_path,
        tiny_data,
        tmp_path / "r",
        extra=["phase.2.steps=0", "phase.2.tokens=1000", "train.schedule=wsd"],
    )
    a, b, c = plan(cfg)
    assert (a.lr, a.schedule, b.lr, b.schedule, c.schedule, c.warmup_frac) == (
        1e-2,
        "wsd",
        5e-3,
        "constant",
        "cosine",
        0.0,
    )
    assert c.steps == 8  # 1000 tokens / (4 x 32 per step), rounded up
    assert [p.seed for p in (a, b, c)] == [cfg.train.seed + i for i in range(3)]


@pytest.mark.parametrize(
    "over, match",
    [
        (["phase.0.tokens=100"], "steps = N or tokens = N"),
        (["phase.1.objective=elastic"], "elastic.enabled=true"),
        (["phase.1.objective=ppo"], "choose one of lm, sft, elastic"),
        (["phase.1.name=all"], "names repeat"),
        (["phase.1.schedule=linear"], "schedule"),
        (["phase.1.lr=0"], "phase.1.lr"),
        (["phase.1.train=['@X']"], "bad parameter selector"),
        (["phase.3.lr=1"], "numbered 0..2"),
    ],
)
def test_bad_phase_tables_are_one_line_errors(tiny_data, tmp_path, over, match):
    with pytest.raises(AdambaError, match=match):
        three_phase_config(tmp_path, tiny_data, tmp_path / "r", extra=over).validate()


def test_selectors_match_names_modules_and_layer_kinds(tiny_data, tmp_path):
    from adamba.model.lm import LM

    cfg = three_phase_config(tmp_path, tiny_data, tmp_path / "r")
    cfg.model.vocab_size = 400
    model = LM(cfg.model)
    m = select(model, ["@M"], "t")
    assert m and all(n.split(".")[1] in ("0", "2") for n in m)
    assert {n.split(".")[1] for n in m} == {"0", "2"}
    assert select(model, ["blocks.*.mixer"], "t") >= {n for n in m if ".mixer." in n}
    assert select(model, ["@A"], "t") == {n for n, _ in model.named_parameters() if n.startswith("blocks.1.")}
    assert select(model, ["@MA"], "t") == {n for n, _ in model.named_parameters() if n.startswith("blocks.")}
    with pytest.raises(AdambaError, match="matches no parameter"):
        select(model, ["blocks.*.mlp.typo"], "t")


def opt_state_bytes(opt) -> int:
    """Bytes of AdamW's moment buffers (exp_avg, exp_avg_sq)."""
    return sum(
        s[k].numel() * s[k].element_size() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")
    )


@pytest.mark.parametrize("reset", [False, True])
def test_freeze_sets_and_optimizer_state_across_phases(tiny_data, tmp_path, reset):
    """Stepping the Trainer through three phases: frozen parameters get no gradient and no
    optimizer state and are bitwise unchanged; the state of parameters that keep training carries
    into the next phase (its step count continues) unless the phase says reset_optimizer; a
    parameter frozen for a phase starts again from fresh moments (its state was dropped)."""
    from adamba.train.trainer import Trainer, load_tokenizer

    cfg = three_phase_config(tmp_path, tiny_data, tmp_path / "r", reset=reset)
    cfg.validate()
    t = Trainer(cfg, tmp_path / "r", torch.device("cpu"), load_tokenizer(cfg), stop=None)
    t.build(resume=False)
    named = dict(t.model.named_parameters())
    mamba = {n for n in named if n.split(".")[1] in ("0", "2") and n.startswith("blocks.")}
    seen_bytes = []
    for i, ph in enumerate(t.phases):
        if i:
            prev_state = {n: t.optimizer.state[p] for n, p in named.items() if p in t.optimizer.state}
            t.enter_phase(i)
        trains = {n for n, p in named.items() if p.requires_grad}
        assert trains == ({"all": set(named), "mamba-only": mamba, "attn-only": set(named) - mamba}[ph.name])
        carried = {n for n, p in named.items() if p in t.optimizer.state}
        if i == 1:  # the Mamba layers keep training: their AdamW state continues (or is reset)
            assert carried == (set() if reset else mamba)
            for n in carried:
                assert t.optimizer.state[named[n]] is prev_state[n] and int(prev_state[n]["step"]) == 3
        if i == 2:  # attention trained in phase 0, was frozen (state dropped) in phase 1
            assert carried == set()
        before = {n: p.detach().clone() for n, p in named.items()}
        for _ in range(ph.steps):
            t.train_step()
        for n, p in named.items():
            if n in trains:
                assert not torch.equal(p, before[n]), n
            else:
                assert torch.equal(p, before[n]) and p.grad is None and p not in t.optimizer.state, n
        seen_bytes.append(opt_state_bytes(t.optimizer))
        # AdamW keeps two fp32 moments per trainable weight, none for frozen ones
        assert seen_bytes[-1] == 2 * 4 * sum(named[n].numel() for n in trains)
    t.loader.close()
    assert seen_bytes[1] < 0.5 * seen_bytes[0]  # the Mamba-only phase: optimizer memory saved


@pytest.mark.parametrize("stop_at", [2, 3, 5, 6, 8])
def test_three_phase_resume_is_exact_at_any_step(tiny_data, tmp_path, monkeypatch, stop_at):
    """Interrupt a 3-phase run (trainable set changing between phases) after step `stop_at`
    (inside a phase and at phase boundaries), resume, and the loss trajectory equals the
    uninterrupted run's bit for bit; the checkpoint records phase and step."""
    from adamba import checkpoint as ck

    ref = tmp_path / "ref"
    trainer.run(three_phase_config(tmp_path, tiny_data, ref))
    real = trainer.Trainer.train_step

    def step_then_signal(self):
        row = real(self)
        if self.step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # lands during step stop_at; honoured at its end
        return row

    out = tmp_path / "cut"
    monkeypatch.setattr(trainer.Trainer, "train_step", step_then_signal)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(three_phase_config(tmp_path, tiny_data, out))
    st = ck.read_checkpoint(out).state
    assert st["step"] == stop_at
    assert (st["phase"], st["phase_step"]) == ((stop_at - 1) // 3, (stop_at - 1) % 3 + 1)
    monkeypatch.setattr(trainer.Trainer, "train_step", real)
    trainer.run(three_phase_config(tmp_path, tiny_data, out), resume=True)
    a, b = (
        [(r["step"], r["phase"], r["loss"]) for r in read_metrics(d / "metrics.jsonl")] for d in (ref, out)
    )
    assert a == b and len(a) == 9
    assert [r[1] for r in a] == ["all"] * 3 + ["mamba-only"] * 3 + ["attn-only"] * 3
    wa, wb = (ck.load_model(d)[0].state_dict() for d in (ref, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_changed_earlier_phases(tiny_data, tmp_path):
    out = tmp_path / "r"
    cfg = three_phase_config(tmp_path, tiny_data, out)
    cfg.phase = cfg.phase[:2]
    trainer.run(cfg)
    longer = three_phase_config(tmp_path, tiny_data, out)  # a phase appended after the last: fine
    assert trainer.run(longer, resume=True).steps == 9
    renamed = three_phase_config(tmp_path, tiny_data, out, extra=["phase.1.name=other"])
    with pytest.raises(AdambaError, match="only phases after the current one may change"):
        trainer.run(renamed, resume=True)


def test_each_phase_reads_its_own_data(tiny_data, tmp_path, monkeypatch):
    """A curriculum: phase 1 names other data (here the val manifest) and its batches are exactly
    that data's stream (seeded train.seed + 1); phases 0 and 2 read data.train."""
    from adamba.data.loader import TokenLoader

    cfg = three_phase_config(
        tmp_path, tiny_data, tmp_path / "r", extra=[f"phase.1.data=['{tiny_data['val']}']"]
    )
    cfg.validate()
    assert [p.data for p in plan(cfg)] == [[tiny_data["train"]], [tiny_data["val"]], [tiny_data["train"]]]
    seen = []
    real = TokenLoader.__next__
    monkeypatch.setattr(TokenLoader, "__next__", lambda self: seen.append(real(self)) or seen[-1])
    trainer.run(cfg)
    monkeypatch.setattr(TokenLoader, "__next__", real)
    got = [x for x, _ in seen if x.shape == (4, 32)]  # training batches (eval is off)
    assert len(got) == 9

    def stream(path, seed, n):
        loader = TokenLoader([path], 4, 32, seed=seed, prefetch=0)
        return [next(loader)[0] for _ in range(n)]

    seed = cfg.train.seed
    assert all(torch.equal(a, b) for a, b in zip(got[3:6], stream(tiny_data["val"], seed + 1, 3)))
    assert all(torch.equal(a, b) for a, b in zip(got[:3], stream(tiny_data["train"], seed, 3)))
    assert all(torch.equal(a, b) for a, b in zip(got[6:], stream(tiny_data["train"], seed + 2, 3)))
    assert not torch.equal(got[3], stream(tiny_data["train"], seed + 1, 1)[0])


def test_plan_preset_trains_its_four_phases(tiny_data, tmp_path):
    """The original plan in miniature (plan-tiny), shortened: base, Mamba-only, Matryoshka +
    heads, gate calibration, each logged under its name; in the Mamba-only phase the attention
    layer and embeddings stay bitwise unchanged."""
    from adamba import checkpoint as ck

    over = [o for o in tiny_overrides(tiny_data, tmp_path / "p") if not o.startswith("model.n_layer")]
    over += ["model.mamba.d_state=16", "model.mamba.head_dim=16", "model.mamba.chunk_size=16"]
    over += [f"phase.{i}.steps=2" for i in range(4)] + ["train.ckpt_every=0", "train.eval_every=0"]
    seen = {}
    real = trainer.Trainer.enter_phase

    def spy(self, i, *a, **k):
        real(self, i, *a, **k)
        seen[i] = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    import unittest.mock as mock

    with mock.patch.object(trainer.Trainer, "enter_phase", spy):
        res = trainer.run(load_config("plan-tiny", over))
    assert res.steps == 8
    rows = read_metrics(tmp_path / "p" / "metrics.jsonl")
    assert [r["phase"] for r in rows] == [p for p in ("base", "mamba", "matryoshka", "gates") for _ in (0, 1)]
    after_mamba = seen[2]  # the weights as phase 2 starts = as phase 1 left them
    for n, v in seen[1].items():
        moved = not torch.equal(v, after_mamba[n])
        assert moved == (n.startswith(("blocks.0.", "blocks.2.", "blocks.3."))), n  # M A M M A
    assert ck.read_checkpoint(tmp_path / "p").state["phase_name"] == "gates"
