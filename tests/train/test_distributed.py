"""Training in 2 processes under torchrun (gloo on CPU): DDP and FSDP2 follow the one-process loss
curve of the same global batch to 1e-5 through a 3-phase run whose trainable set changes between
phases (a DDP wrapper per phase), with gradient accumulation; a Ctrl-C under DDP resumes exactly;
a checkpoint written by 2 ranks (FSDP2's gathered state) resumes in 1 process; an MoE model's
balance loss uses router statistics summed over the ranks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adamba.config import load_config
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from tests.helpers import HYBRID, three_phase_config, tiny_overrides

STEPS = (7, 7, 6)  # 20 steps over the three phases
STOP_AT = Path(__file__).with_name("stop_at.py")


def args_for(tmp_path, data, out, batch, extra=()):
    three_phase_config(tmp_path, data, out, steps=STEPS)  # writes tmp_path / phases.toml
    over = (
        tiny_overrides(data, out) + HYBRID + ["train.eval_every=10", "train.ckpt_every=0", "train.threads=1"]
    )
    over += [f"train.batch_size={batch}", *extra]
    return ["train", "--config", str(tmp_path / "phases.toml"), *(a for o in over for a in ("--set", o))]


def torchrun(args, stop_at=None):
    """`torchrun --nproc_per_node=2 -m adamba ARGS` (or stop_at.py, which Ctrl-Cs every rank at
    the end of step `stop_at`); returns the finished process."""
    entry = ["-m", "adamba"] if stop_at is None else [str(STOP_AT), str(stop_at)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *entry, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def curve(out):
    return [(r["step"], r["phase"], r["loss"], r.get("val_bpb")) for r in read_metrics(out / "metrics.jsonl")]


def assert_same_curve(a, b, rel):
    assert len(a) == len(b) == sum(STEPS)
    for (s1, p1, l1, v1), (s2, p2, l2, v2) in zip(a, b):
        assert (s1, p1) == (s2, p2)
        assert abs(l1 - l2) <= rel * abs(l1), (s1, l1, l2)
        assert (v1 is None) == (v2 is None) and (v1 is None or abs(v1 - v2) <= rel * v1)


@pytest.fixture(scope="module")
def one_process(tiny_data, tmp_path_factory):
    """The reference: one process, batch 4, the 3-phase run."""
    tmp = tmp_path_factory.mktemp("one")
    cfg = three_phase_config(tmp, tiny_data, tmp / "run", steps=STEPS, extra=["train.eval_every=10"])
    cfg.train.batch_size = 4
    trainer.run(cfg)
    return curve(tmp / "run")


@pytest.mark.parametrize(
    "parallel, batch, accum",
    [("ddp", 1, 2), ("fsdp", 2, 1)],  # 2 ranks x 1 x 2 micro-steps, 2 ranks x 2: both 4 a step
)
def test_two_ranks_follow_one_process(tiny_data, tmp_path, one_process, parallel, batch, accum):
    out = tmp_path / "run"
    res = torchrun(
        args_for(tmp_path, tiny_data, out, batch, [f"train.parallel={parallel}", f"train.grad_accum={accum}"])
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained 20 steps") == 1  # rank 0 reports
    assert_same_curve(curve(out), one_process, 1e-5)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0's alone


def test_ddp_ctrl_c_resumes_exactly(tiny_data, tmp_path):
    """Every rank stops after step 9 (inside the Mamba-only phase), saves, exits 130; --resume
    under DDP continues the curve of an uninterrupted DDP run bit for bit."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    extra = ["train.parallel=ddp"]
    assert torchrun(args_for(tmp_path, tiny_data, ref, 2, extra)).returncode == 0
    res = torchrun(args_for(tmp_path, tiny_data, cut, 2, extra), stop_at=9)
    assert res.returncode != 0 and "checkpoint saved at step 9" in res.stderr
    assert [r[0] for r in curve(cut)] == list(range(1, 10))
    res = torchrun(args_for(tmp_path, tiny_data, cut, 2, extra) + ["--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert curve(cut) == curve(ref)


def test_two_rank_fsdp_checkpoint_resumes_in_one_process(tiny_data, tmp_path, one_process):
    out = tmp_path / "run"
    res = torchrun(args_for(tmp_path, tiny_data, out, 2, ["train.parallel=fsdp"]), stop_at=12)
    assert "checkpoint saved at step 12" in res.stderr
    cfg = three_phase_config(tmp_path, tiny_data, out, steps=STEPS, extra=["train.eval_every=10"])
    cfg.train.batch_size = 4
    trainer.run(cfg, resume=True)
    assert_same_curve(curve(out), one_process, 1e-5)


def test_moe_balance_loss_is_global(tiny_data, tmp_path):
    """An MoE model (aux_weight 1, so the balance loss steers training) trained by 2 DDP ranks of
    batch 2 follows 1 process of batch 4: the router statistics are summed over the ranks."""
    moe = [
        "model.ffn=moe",
        "model.moe.n_experts=4",
        "model.moe.aux_weight=1.0",
        "train.eval_every=0",
        "train.ckpt_every=0",
    ]
    one = tmp_path / "one"
    trainer.run(
        load_config("tiny-cpu", tiny_overrides(tiny_data, one, steps=6) + moe + ["train.batch_size=4"])
    )
    two = tmp_path / "two"
    over = (
        tiny_overrides(tiny_data, two, steps=6)
        + moe
        + ["train.batch_size=2", "train.parallel=ddp", "train.threads=1"]
    )
    res = torchrun(["train", "--config", "tiny-cpu", *(a for o in over for a in ("--set", o))])
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert len(a) == len(b) == 6
    for r1, r2 in zip(a, b):
        assert abs(r1["loss"] - r2["loss"]) <= 1e-5 * abs(r1["loss"]), (r1["step"], r1["loss"], r2["loss"])
