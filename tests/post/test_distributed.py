"""GRPO (with its KL reference), DPO and on-policy distillation under torchrun: 2 DDP ranks of
one prompt (pair) each follow the loss curve of one process of two to 1e-5 through a 3-phase run
grpo -> dpo -> distill. Each rank samples its own prompts from the same seeded stream (rollouts
are seeded by the prompt's position in it, not by the rank), and the trainer weights the ranks'
losses by the count each objective returns, so the split cannot change the step. FSDP2 is
refused for these objectives in one line (they sample and score with the unwrapped model)."""

import json

import adamba.post.objectives  # noqa: F401  (registers grpo, dpo, distill)
from adamba.config import load_config
from adamba.train import trainer
from tests.helpers import tiny_overrides
from tests.train.test_distributed import torchrun

PHASES = "".join(
    f'[[phase]]\nname = "{o}"\nobjective = "{o}"\nsteps = 3\n' for o in ("grpo", "dpo", "distill")
)


def setup(tiny_data, tmp_path, out, batch):
    """The phases file, the [post] data, a teacher checkpoint; the overrides of a run."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"question": f"What is {a}+{a}?", "answer": str(2 * a)}) + "\n" for a in range(6))
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"What is {a}+9?", "chosen": str(a + 9), "rejected": str(a - 1)}) + "\n"
            for a in range(1, 7)
        )
    )
    quiet = ["train.eval_every=0", "train.ckpt_every=0", "run.tensorboard=false", "train.threads=1"]
    teacher = tmp_path / "teacher"
    if not teacher.exists():
        trainer.run(load_config(None, tiny_overrides(tiny_data, teacher, 6) + quiet + ["train.seed=7"]))
    (tmp_path / "phases.toml").write_text(PHASES)
    return (
        tiny_overrides(tiny_data, out, 9)
        + quiet
        + [
            f"post.prompts={prompts}",
            f"post.pairs={pairs}",
            f"post.teacher={teacher}",
            "post.group_size=4",
            "post.max_new_tokens=6",
            "post.beta=0.1",  # GRPO's KL to its phase-start reference
            "post.reward=exact+0.1*format",
            "train.schedule=constant",
            "train.warmup_frac=0",
            f"train.batch_size={batch}",
        ]
    )


def curve(out):
    from adamba.train.monitor import read_metrics

    return [(r["step"], r["phase"], r["loss"]) for r in read_metrics(out / "metrics.jsonl")]


def test_post_objectives_under_ddp_follow_one_process(tiny_data, tmp_path):
    one = tmp_path / "one"
    over = setup(tiny_data, tmp_path, one, 2)
    trainer.run(load_config(str(tmp_path / "phases.toml"), over))
    ref = curve(one)
    assert [p for _, p, _ in ref] == ["grpo"] * 3 + ["dpo"] * 3 + ["distill"] * 3

    two = tmp_path / "two"
    over = setup(tiny_data, tmp_path, two, 1) + ["train.parallel=ddp"]
    res = torchrun(
        ["train", "--config", str(tmp_path / "phases.toml"), *(a for o in over for a in ("--set", o))]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = curve(two)
    assert [(s, p) for s, p, _ in got] == [(s, p) for s, p, _ in ref]
    for (s, p, a), (_, _, b) in zip(got, ref):
        assert abs(a - b) <= 1e-5 * max(abs(b), 1e-3), (s, p, a, b)
    assert len({round(b, 6) for _, _, b in ref}) > 3  # the curve moves: the comparison means something


def test_fsdp_is_refused_in_one_line(tiny_data, tmp_path):
    over = setup(tiny_data, tmp_path, tmp_path / "run", 1) + ["train.parallel=fsdp"]
    res = torchrun(
        ["train", "--config", str(tmp_path / "phases.toml"), *(a for o in over for a in ("--set", o))]
    )
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("adamba: error:")]
    assert len(lines) == 2, res.stderr[-3000:]  # one line from each rank, no traceback of ours
    assert "'grpo' objective" in lines[0] and "FSDP2" in lines[0] and "train.parallel=ddp" in lines[0]
    assert "[rank0]:" not in res.stderr and "[rank1]:" not in res.stderr  # no rank died with a traceback
