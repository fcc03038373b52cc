"""Training a TRM: deep supervision as a carry across optimizer steps.

Every optimizer step runs one supervision step on each row of the batch. A row keeps its example
and its (y, z) from step to step until it halts: after n_sup steps, or earlier when the Q head's
logit is > 0 (training with halting on), except that with probability `explore` a row first
draws a minimum of 2..n_sup steps (TRM's exploration). A halted row is refilled with the next
example of a seeded, epoch-shuffled stream and its y, z reset. Evaluation (evaluate.py) runs all
n_sup steps on the EMA weights.

Checkpoints (adamba.checkpoint, atomic, digests checked) hold the EMA weights as the model (what
`adamba trm eval` loads) and, in trainer.pt, the raw weights, AdamW's state, the RNGs, the
carry, the rows in flight and the stream position, so `--resume` continues bit for bit.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adamba.checkpoint import (
    Checkpoint,
    load_trainer_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from adamba.errors import AdambaError
from adamba.trm.config import TRMConfig, read_trm_config
from adamba.trm.evaluate import EvalResult, evaluate, task_scores
from adamba.trm.loss import trm_loss
from adamba.trm.model import EMA, TRM, Carry, SparseSignSGD, count_params
from adamba.trm.tasks import Split, TaskSpec, load_task


class Stream:
    """Example indices of a split in a seeded order, reshuffled every epoch; resumable."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm = self._order()

    def _order(self) -> torch.Tensor:
        return torch.randperm(
            self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        )

    def take(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._order()
            m = min(k, self.n - self.pos)
            out.append(self._perm[self.pos : self.pos + m])
            self.pos, k = self.pos + m, k - m
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._perm = self._order()


@dataclass
class Rows:
    """The batch in flight: each row's example index, supervision steps done, halted flag, carry."""

    idx: torch.Tensor
    steps: torch.Tensor
    halted: torch.Tensor
    carry: Carry

    def state_dict(self) -> dict:
        return {
            "idx": self.idx,
            "steps": self.steps,
            "halted": self.halted,
            "y": self.carry.y,
            "z": self.carry.z,
        }

    @staticmethod
    def from_state(s: dict, device) -> Rows:
        return Rows(s["idx"], s["steps"], s["halted"], Carry(s["y"].to(device), s["z"].to(device)))


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    params: int
    eval: EvalResult | None
    history: list[dict] = field(default_factory=list)


def lr_at(step: int, base: float, cfg: TRMConfig) -> float:
    """Linear warmup, then cosine from base to lr_min_ratio * base (TRM's schedule)."""
    t = cfg.train
    if step < t.warmup:
        return base * step / t.warmup
    progress = (step - t.warmup) / max(1, t.max_steps - t.warmup)
    return base * (t.lr_min_ratio + (1 - t.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: TRM, cfg: TRMConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms, biases, KDA's A_log time constants)."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.endswith("A_log") else keep).append(p)
    t = cfg.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))


def load_data(cfg: TRMConfig) -> tuple[TaskSpec, Split, Split]:
    """(spec, train, test) and the model's task-given sizes filled into cfg.model."""
    name = cfg.task.name
    spec, train = load_task(name, "train", **cfg.task.split_options("train"))
    _, test = load_task(name, "test", **cfg.task.split_options("test"))
    m = cfg.model
    for key, value in (
        ("vocab_size", spec.vocab_size),
        ("seq_len", spec.seq_len),
        ("n_puzzle_ids", spec.n_puzzle_ids),
    ):
        if getattr(m, key) not in (0, value):
            raise AdambaError(
                f"model.{key}={getattr(m, key)} but the task gives {value}: leave it 0 (from the task)"
            )
        setattr(m, key, value)
    if len(train) == 0:
        raise AdambaError(f"task {name}: the train split is empty; change task.options")
    return spec, train, test


class Trainer:
    """The state of one TRM run and one optimizer step at a time (tests and benchmarks drive it)."""

    def __init__(self, cfg: TRMConfig, train: Split, test: Split | None = None):
        t = cfg.train
        self.cfg, self.train, self.test = cfg, train, test
        self.device = torch.device(t.device)
        torch.manual_seed(t.seed)
        self.model = TRM(cfg.model).to(self.device)
        self.opt = make_optimizer(self.model, cfg)
        self.puzzle_opt = SparseSignSGD(self.model.puzzle_emb, cfg.model.puzzle_lr, cfg.model.puzzle_wd)
        self.ema = EMA(self.model, t.ema) if t.ema > 0 else None
        self.gen = torch.Generator().manual_seed(t.seed + 1)  # exploration draws
        self.stream = Stream(len(train), t.seed)
        B = t.batch_size
        self.rows = Rows(
            idx=torch.zeros(B, dtype=torch.long),
            steps=torch.zeros(B, dtype=torch.long),
            halted=torch.ones(B, dtype=torch.bool),  # every row starts empty: filled on step 1
            carry=self.model.initial_carry(B),
        )
        self.step = 0

    @property
    def eval_model(self) -> TRM:
        return self.ema.model if self.ema is not None else self.model

    def train_step(self) -> dict:
        cfg, m, r = self.cfg, self.cfg.model, self.rows
        if r.halted.any():  # refill: new examples, fresh y and z
            r.idx[r.halted] = self.stream.take(int(r.halted.sum()))
            r.steps[r.halted] = 0
            r.carry = self.model.reset_rows(r.carry, r.halted.to(self.device))
        dev = self.device
        inputs, labels = self.train.inputs[r.idx].to(dev), self.train.labels[r.idx].to(dev)
        pids = self.train.puzzle_ids[r.idx].to(dev)
        lr = lr_at(self.step, cfg.train.lr, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()
        prow = self.puzzle_opt.gather(pids)
        r.carry, logits, q = self.model(r.carry, inputs, pids, prow)
        loss, st = trm_loss(logits, q, labels, cfg.train.loss, cfg.train.q_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.opt.step()
        self.puzzle_opt.step(pids, prow, lr_at(self.step, m.puzzle_lr, cfg))
        if self.ema is not None:
            self.ema.update(self.model)
        with torch.no_grad():
            r.steps += 1
            halted = r.steps >= m.n_sup
            if m.halting and m.n_sup > 1:
                halted |= q.cpu() > 0
                explore = torch.rand(len(halted), generator=self.gen) < m.explore
                least = torch.randint(2, m.n_sup + 1, (len(halted),), generator=self.gen)
                halted &= r.steps >= explore * least
            r.halted = halted
        self.step += 1
        done = r.halted
        return {
            "step": self.step,
            "loss": loss.item(),
            "lm_loss": st["lm_loss"].item(),
            "q_loss": st["q_loss"].item(),
            "cell_acc": st["cell_acc"].item(),
            "exact": st["exact"].float().mean().item(),
            "q_acc": st["q_acc"].item(),
            "halted": int(done.sum()),
            "halt_steps": r.steps[done].float().mean().item() if done.any() else float("nan"),
            "lr": lr,
        }

    def evaluate(self, limit: int = 0) -> EvalResult | None:
        if self.test is None or len(self.test) == 0:
            return None
        return evaluate(self.eval_model, self.test, self.cfg.train.eval_batch, limit)

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "rows": self.rows.state_dict(),
            "stream": self.stream.state_dict(),
            "gen": self.gen.get_state(),
        }

    def save(self, run_dir: Path, spec: TaskSpec | None = None, ev: EvalResult | None = None) -> Path:
        state = {"task": spec.__dict__ if spec else None, "eval": ev.summary() if ev else None}
        return save_checkpoint(
            run_dir, self.step, self.eval_model, self.cfg, optimizer=self.opt, state=state, extra=self.state()
        )

    def load(self, path: Path) -> None:
        """Everything `save` wrote: weights, EMA, optimizer, carry, stream, RNGs."""
        ckpt = Checkpoint(path, self.cfg, json.loads((path / "state.json").read_text()))
        tr = load_trainer_state(ckpt)
        self.model.load_state_dict(tr["model"])
        if self.ema is not None:
            load_weights(self.ema.model, ckpt)
        self.opt.load_state_dict(tr["optimizer"])
        self.rows = Rows.from_state(tr["rows"], self.device)
        self.stream.load_state_dict(tr["stream"])
        self.gen.set_state(tr["gen"])
        set_rng_state(tr["rng"])
        self.step = ckpt.state["step"]


def _progress(enabled: bool, total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("trm"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    task = bar.add_task("train", total=total, completed=start, info="")
    return bar, task


def _prepare_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses to mix runs."""
    ckpts = run_dir / "checkpoints"
    if resume:
        if not ckpts.exists():
            raise AdambaError(f"nothing to resume in {run_dir}: no checkpoints/ (drop --resume to start)")
        return resolve_checkpoint(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise AdambaError(f"{run_dir} holds an earlier run: pass --resume to continue it or --overwrite")
        shutil.rmtree(run_dir)
    return None


RESUME_FREE = ("eval_every", "ckpt_every", "threads", "device")  # [train] keys a resume may change
TASK_GIVEN = ("vocab_size", "seq_len", "n_puzzle_ids")  # filled in from the task (0 = not yet)


def _check_resume(cfg: TRMConfig, saved: TRMConfig) -> None:
    """A resume continues the saved run: a --set (or an edited config) that changes anything else
    than train.max_steps, [run] and RESUME_FREE is refused in one line, not silently dropped."""
    new, old = cfg.to_dict(), saved.to_dict()
    diff = []
    for sec in ("model", "train", "task"):
        for key, value in new[sec].items():
            free = (sec == "train" and key in ("max_steps", *RESUME_FREE)) or (
                sec == "model" and key in TASK_GIVEN and value == 0
            )
            if not free and old[sec].get(key) != value:
                diff.append(f"{sec}.{key}: run {old[sec].get(key)!r} vs now {value!r}")
    if diff:
        raise AdambaError(
            f"cannot resume with a changed config ({', '.join(diff[:4])}): a resume continues the saved "
            "run (only train.max_steps, eval_every, ckpt_every, threads, device and [run] may change); "
            "start a new run (--overwrite or another --out) to train another"
        )


def run(cfg: TRMConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train per cfg into cfg.run.out_dir (metrics.jsonl, checkpoints/); returns the final eval."""
    run_dir = Path(cfg.run.out_dir)
    from_ckpt = _prepare_dir(run_dir, resume, overwrite)
    if from_ckpt is not None:
        saved = read_trm_config(from_ckpt)
        _check_resume(cfg, saved)
        saved.train.max_steps, saved.run = cfg.train.max_steps, cfg.run  # what a resume may change
        for key in RESUME_FREE:
            setattr(saved.train, key, getattr(cfg.train, key))
        cfg = saved
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    spec, train, test = load_data(cfg)
    trainer = Trainer(cfg, train, test)
    if from_ckpt is not None:
        trainer.load(from_ckpt)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics, trainer.step)
    t, t0, history, ev = cfg.train, time.time(), [], None
    bar, task = _progress(cfg.run.progress, t.max_steps, trainer.step)
    with bar, open(metrics, "a") as log:
        while trainer.step < t.max_steps:
            row = trainer.train_step()
            row["time"] = round(time.time() - t0, 3)
            history.append(row)
            log.write(json.dumps(row) + "\n")
            last = trainer.step == t.max_steps
            if t.eval_every and trainer.step % t.eval_every == 0 and not last:
                ev = trainer.evaluate(t.eval_n)
                if ev is not None:
                    log.write(json.dumps({"step": trainer.step, "eval": ev.summary()}) + "\n")
            if t.ckpt_every and trainer.step % t.ckpt_every == 0 and not last:
                trainer.save(run_dir, spec, ev)
            log.flush()
            info = f"loss {row['loss']:.3f} exact {row['exact']:.2f}"
            bar.update(task, completed=trainer.step, info=info)
        ev = trainer.evaluate()
        if ev is not None:
            scores = task_scores(spec, test, ev)
            log.write(
                json.dumps({"step": trainer.step, "eval": ev.summary(), "scores": scores, "final": True})
                + "\n"
            )
    trainer.save(run_dir, spec, ev)
    return TrainResult(run_dir, trainer.step, time.time() - t0, count_params(trainer.model), ev, history)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines past `step` (a resumed run rewrites them), so the file is one clean curve."""
    if not path.is_file():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    keep = [ln for ln in keep if not json.loads(ln).get("final")]
    path.write_text("".join(ln + "\n" for ln in keep))
