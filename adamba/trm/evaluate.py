"""Evaluation of a TRM: every row runs all n_sup supervision steps (halting never stops a row
here, as in TRM, so a batch stays in step), and each step is scored, which answers "does
recursion help?" (exact accuracy after step 1, 2, ... n_sup) and "what would halting save?":
a row's halting step is the first whose Q logit is > 0 (the last step if none is), the accuracy
there is what a halting model would score, and 1 - mean halting step / n_sup the compute saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from adamba.checkpoint import Checkpoint, load_weights, resolve_checkpoint
from adamba.config_io import apply_overrides
from adamba.errors import AdambaError
from adamba.trm.config import TRMConfig, read_trm_config, task_override
from adamba.trm.model import TRM
from adamba.trm.tasks import Split, TaskSpec, exact_accuracy, load_task, score


@dataclass
class EvalResult:
    acc_by_step: list[float]  # exact accuracy after each supervision step
    halt_steps: float  # mean step (1-based) at which the Q head halts a row
    halt_acc: float  # exact accuracy of the answers at those steps
    compute_saved: float  # 1 - halt_steps / n_sup
    q_acc: float  # how often "q > 0" agrees with "answer right", over every step
    preds: torch.Tensor  # [N, seq_len] answers after the last step
    q_halt: torch.Tensor  # [N] last step's halting logits (ARC ties are broken by them)
    n: int

    @property
    def exact(self) -> float:
        return self.acc_by_step[-1]

    def summary(self) -> dict:
        return {
            "exact": self.exact,
            "acc_by_step": [round(a, 4) for a in self.acc_by_step],
            "halt_steps": round(self.halt_steps, 3),
            "halt_acc": self.halt_acc,
            "compute_saved": round(self.compute_saved, 4),
            "q_acc": round(self.q_acc, 4),
            "n": self.n,
        }


@torch.no_grad()
def evaluate(model: TRM, split: Split, batch_size: int = 256, limit: int = 0) -> EvalResult:
    """Score the first `limit` rows of `split` (0: all) at every supervision step."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(split) if limit <= 0 else min(limit, len(split))
    n_sup = model.cfg.n_sup
    correct = torch.zeros(n_sup, n, dtype=torch.bool)
    qs = torch.zeros(n_sup, n)
    preds = torch.zeros(n, split.inputs.shape[1], dtype=torch.long)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        inputs = split.inputs[lo:hi].to(device)
        pids = split.puzzle_ids[lo:hi].to(device)
        labels = split.labels[lo:hi]
        carry = model.initial_carry(hi - lo)
        for s in range(n_sup):
            carry, logits, q = model(carry, inputs, pids)
            pred = logits.argmax(-1).cpu()
            correct[s, lo:hi] = exact_accuracy(pred, labels)
            qs[s, lo:hi] = q.cpu()
        preds[lo:hi] = pred
    model.train(was_training)
    fires = qs > 0
    halt = torch.where(fires.any(0), fires.float().argmax(0), torch.full((n,), n_sup - 1))
    halt_acc = correct.gather(0, halt[None]).float().mean().item()
    mean_halt = (halt + 1).float().mean().item()
    return EvalResult(
        acc_by_step=correct.float().mean(1).tolist(),
        halt_steps=mean_halt,
        halt_acc=halt_acc,
        compute_saved=1 - mean_halt / n_sup,
        q_acc=(fires == correct).float().mean().item(),
        preds=preds,
        q_halt=qs[-1],
        n=n,
    )


def load_trm(
    path: str | Path, overrides: list[str] | None = None, device: str = "cpu"
) -> tuple[TRM, TRMConfig, Path]:
    """(EMA model in eval mode, its config, the checkpoint folder) from a run dir or checkpoint.
    `overrides`: task.(test_)options.KEY=V and model.n_sup (more steps at test time); a change
    to the network's shape is refused by the weights' check."""
    ckpt = resolve_checkpoint(path)
    cfg = read_trm_config(ckpt)
    apply_overrides(cfg, [o for o in overrides or [] if not task_override(cfg, o)])
    cfg.validate()
    model = TRM(cfg.model)
    load_weights(model, Checkpoint(ckpt, cfg, {}))
    return model.to(device).eval(), cfg, ckpt


def run_eval(
    path: str | Path, task: str | None, overrides: list[str], device: str = "cpu", limit: int = 0
) -> tuple[EvalResult, TRMConfig, list[str]]:
    """`adamba trm eval`: the checkpoint on its task's test split; extra lines (ARC: pass@2)."""
    model, cfg, ckpt = load_trm(path, overrides, device)
    if task and task != cfg.task.name:
        raise AdambaError(f"{ckpt} was trained on {cfg.task.name}, not {task}: use --task {cfg.task.name}")
    spec, split = load_task(cfg.task.name, "test", **cfg.task.split_options("test"))
    m = cfg.model
    if (spec.vocab_size, spec.seq_len) != (m.vocab_size, m.seq_len) or spec.n_puzzle_ids > m.n_puzzle_ids:
        raise AdambaError(
            f"the test split ({spec.vocab_size} tokens, {spec.seq_len} cells, {spec.n_puzzle_ids} puzzle ids) does not "
            f"fit {ckpt} ({m.vocab_size}, {m.seq_len}, {m.n_puzzle_ids}): keep the task options it was trained with"
        )
    ev = evaluate(model, split, cfg.train.eval_batch, limit)
    scores = task_scores(spec, split, ev)
    extra = [f"maze: valid and shortest {scores['valid_shortest']:.4f}"] if "valid_shortest" in scores else []
    if "pass@2" in scores:
        extra.append(
            f"arc: pass@2 {scores['pass@2']:.4f} (pass@1 {scores['pass@1']:.4f}, every test input of a task "
            f"{scores['task_all@2']:.4f}) over {scores['n_tasks']} tasks, {scores['n_test_inputs']} test inputs"
        )
    return ev, cfg, extra


def task_scores(spec: TaskSpec, split: Split, ev: EvalResult) -> dict:
    """The task's own scorer on the final answers (ARC: pass@2, voting with sigmoid(q_halt) as
    the confidence, as TRM's evaluator does) over the rows evaluated."""
    n = ev.n
    part = Split(
        split.inputs[:n], split.labels[:n], split.puzzle_ids[:n], split.meta[:n] if split.meta else None
    )
    return score(spec, part, ev.preds, torch.sigmoid(ev.q_halt))
