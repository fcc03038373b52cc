"""Interrupts take effect at a step boundary: SIGINT or SIGTERM anywhere in a step (the loader,
the forward, inside the optimizer's update, evaluation, a checkpoint save) lets the step finish,
saves it, and stops; resuming gives the uninterrupted loss curve bit for bit."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from adamba import checkpoint as ck
from adamba.config import load_config
from adamba.data.loader import TokenLoader
from adamba.model.lm import LM
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from tests.helpers import tiny_overrides

EXTRA = ["train.eval_every=4", "train.ckpt_every=4"]


def losses(run_dir):
    return [(r["step"], r["loss"], r.get("val_bpb")) for r in read_metrics(run_dir / "metrics.jsonl")]


def signal_on_call(monkeypatch, owner, name, nth, signum=signal.SIGINT):
    """Patch owner.name to send `signum` to this process on its nth call, then do its work."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signum)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, wrapper)


def test_signals_anywhere_in_a_step_resume_to_the_same_curve(tiny_data, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "r"
    steps = 16
    trainer.run(load_config("tiny-cpu", [*tiny_overrides(tiny_data, ref, steps), *EXTRA]))
    # (where, which call, signal, the step whose checkpoint the stop must leave)
    plan = [
        (TokenLoader, "__next__", 2, signal.SIGINT, 2),  # the loader of step 2
        (torch, "_foreach_lerp_", 1, signal.SIGTERM, 3),  # inside AdamW's update of step 3
        (LM, "forward", 2, signal.SIGINT, 4),  # the forward of step 4, then its eval and save
        (trainer, "evaluate_bpb", 1, signal.SIGINT, 8),  # step 8's evaluation
        (ck, "save_checkpoint", 1, signal.SIGTERM, 12),  # inside step 12's checkpoint save
    ]
    for owner, name, nth, signum, stopped_at in plan:
        with monkeypatch.context() as m:
            signal_on_call(m, owner, name, nth, signum)
            cfg = load_config("tiny-cpu", [*tiny_overrides(tiny_data, out, steps), *EXTRA])
            with pytest.raises(KeyboardInterrupt):
                trainer.run(cfg, resume=(out / "checkpoints").exists())
        state = ck.read_checkpoint(out).state
        assert state["step"] == stopped_at, (name, state["step"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    trainer.run(load_config("tiny-cpu", [*tiny_overrides(tiny_data, out, steps), *EXTRA]), resume=True)
    assert losses(out) == losses(ref)
    assert [s for s, *_ in losses(out)] == list(range(1, steps + 1))


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "r"
    real = TokenLoader.__next__
    calls = {"n": 0}

    def twice(self):
        calls["n"] += 1
        if calls["n"] == 8:  # step 6 (calls 5-6 were step 4's eval): a stop asked for, then forced
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self)

    monkeypatch.setattr(TokenLoader, "__next__", twice)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(load_config("tiny-cpu", [*tiny_overrides(tiny_data, out, 16), *EXTRA]))
    assert ck.read_checkpoint(out).state["step"] == 4  # the step in flight was abandoned, unsaved


def run_cli(out, data, steps, resume):
    sets = [a for o in [*tiny_overrides(data, out, steps), *EXTRA, "train.threads=1"] for a in ("--set", o)]
    flag = ["--resume"] if resume else ["--overwrite"]
    return subprocess.Popen(
        [sys.executable, "-m", "adamba", "train", "--config", "tiny-cpu", *sets, *flag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_random_sigint_and_sigterm_from_outside(tiny_data, tmp_path):
    """`adamba train` killed politely three times at random moments of its training, by another
    process, then resumed: the same metrics as one uninterrupted run."""
    steps, ref, out = 80, tmp_path / "ref", tmp_path / "r"
    proc = run_cli(ref, tiny_data, steps, resume=False)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    rng = random.Random(0)
    stopped = 0
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
        has_ckpt = (out / "checkpoints" / "LATEST").exists()
        seen = len(read_metrics(out / "metrics.jsonl")) if has_ckpt else 0
        proc = run_cli(out, tiny_data, steps, resume=has_ckpt)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # wait for training to be under way
            if (out / "metrics.jsonl").exists() and len(read_metrics(out / "metrics.jsonl")) > seen + 1:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))  # a random point of a step (~20-50 ms each)
        proc.send_signal(signum)
        code = proc.wait(timeout=300)
        err = proc.stderr.read()
        assert code in (0, 130), err  # 0: it had finished before the signal landed
        if code == 130:
            assert "interrupted" in err and "Traceback" not in err, err
            stopped += 1
    assert stopped >= 2  # the signals did land in training
    if ck.read_checkpoint(out).state["step"] < steps:
        proc = run_cli(out, tiny_data, steps, resume=True)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert losses(out) == losses(ref)
