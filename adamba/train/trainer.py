"""The training engine: `run(cfg)` (the CLI, the quickstart and tests call it) drives a `Trainer`
through the run's phases (adamba/train/phases.py), each with its objective
(adamba/train/objectives.py), trainable set, data, learning rate and schedule.

Everything the next step depends on (weights, optimizer moments, phase and step, loader
position, RNG, objective state, phase lengths) is checkpointed, so `resume=True` reproduces the
uninterrupted loss curve, inside a phase or across a phase boundary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adamba import checkpoint as ck
from adamba.config import Config
from adamba.data.loader import TokenLoader
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.eval.bpb import evaluate_bpb
from adamba.model.lm import LM
from adamba.train import dist, predictive, rundir
from adamba.train.monitor import ProgressDisplay, RunLogs, check_loggers
from adamba.train.objectives import OBJECTIVES, Objective
from adamba.train.optim import build_optimizer
from adamba.train.phases import Phase, plan, trainable
from adamba.train.rundir import RunLock, StepBoundaryStop
from adamba.train.schedule import lr_multiplier

CALIBRATION_STEPS = 5  # steps timed before a max_minutes budget fixes the run length
MAX_BAD_STEPS = 5  # consecutive non-finite steps before training stops


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens_seen: int
    tokens_per_s: float
    params: int
    val: dict | None
    elapsed_s: float
    rank: int = 0  # under torchrun: this process's rank (the CLI reports from rank 0 only)


def pick_device(name: str) -> torch.device:
    """train.device -> a device that exists here (a one-line error otherwise, not torch's
    traceback at the first tensor)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            have = f"{n} CUDA device(s) here" if n else "no CUDA device here"
            raise AdambaError(f"train.device={name!r} but there is {have}; use train.device=cpu or auto")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise AdambaError(
            f"train.device={name!r} but MPS (Apple GPUs) is not available here; use cpu or auto"
        )
    return dev


def autocast_ctx(device: torch.device, dtype: str):
    if dtype == "bfloat16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_compile(device: torch.device) -> None:
    """train.compile needs inductor's toolchain (a C++ compiler on a CPU, Triton on a GPU). Find
    out before the run starts, with a tiny function, not as a traceback at the first step."""
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(4, device=device))
    except Exception as e:  # any failure here means the first step would fail the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AdambaError(
            f"train.compile=true, but torch.compile does not work on {device.type} here "
            f"({type(e).__name__}: {first}); install a C++ compiler (CPU) or Triton (GPU), "
            "or set train.compile=false"
        ) from e


def load_tokenizer(cfg: Config) -> Tokenizer:
    if not cfg.data.tokenizer:
        raise AdambaError(
            "data.tokenizer is not set: point it at a tokenizer.json (see `adamba data tokenizer`)"
        )
    if not Path(cfg.data.tokenizer).exists():
        raise AdambaError(f"tokenizer not found: {cfg.data.tokenizer} (set data.tokenizer)")
    return Tokenizer.load(cfg.data.tokenizer)


def _check_resume_config(cfg: Config, ckpt: ck.Checkpoint) -> None:
    old, new = dataclasses.asdict(ckpt.cfg.model), dataclasses.asdict(cfg.model)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        detail = ", ".join(f"model.{k}: checkpoint {old.get(k)!r} vs config {new[k]!r}" for k in diff[:4])
        raise AdambaError(f"cannot resume: the model config differs from the checkpoint's ({detail})")


def run(cfg: Config, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train `cfg` into cfg.run.out_dir. The run directory is locked for the run's life (a
    second run into it is refused); a fresh run over an earlier one is refused unless `resume`
    (continue it exactly) or `overwrite` (delete it first). SIGINT/SIGTERM finish the step in
    flight, save, and raise KeyboardInterrupt."""
    cfg.validate()
    check_loggers(cfg)
    run_dir = Path(cfg.run.out_dir)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg)
    empty = [ph.name for ph in plan(cfg) if not ph.data]
    if empty:
        raise AdambaError(
            f"data.train is empty (phases without data: {', '.join(empty)}): list the training manifests "
            "(see `adamba data shards`)"
        )
    d = dist.init(cfg.train.parallel, device)
    try:
        device = dist.local_device(d, device)
        # rank 0 owns the run directory (lock, refuse/overwrite); the others wait for it
        lock = RunLock(run_dir) if d.main else contextlib.nullcontext()
        with lock, StepBoundaryStop() as stop:
            if d.main:
                rundir.prepare(run_dir, resume, overwrite)
            d.barrier()
            return Trainer(cfg, run_dir, device, tokenizer, stop, d).fit(resume)
    finally:
        d.close()


class Trainer:
    """One run's model, phases and position, with `step` / `evaluate` / `state_dict`. Each phase
    gets its own optimizer over its trainable set (frozen parameters have no gradient and no
    optimizer state); the state of parameters that keep training carries over unless the phase
    says `reset_optimizer`."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        device: torch.device,
        tokenizer: Tokenizer,
        stop,
        d: dist.Dist | None = None,
    ):
        self.cfg, self.run_dir, self.device, self.tokenizer, self.stop = cfg, run_dir, device, tokenizer, stop
        self.dist = d or dist.Dist()
        self.phases: list[Phase] = plan(cfg, self.dist.world)
        self.amp = autocast_ctx(device, cfg.train.dtype)
        self.fp = tokenizer.fingerprint()
        self.token_bytes = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.long)
        self.model: LM | None = None
        self.wrapped: torch.nn.Module | None = None  # the phase's parallel wrapper (or the Step itself)
        self.shadow: LM | None = None  # FSDP2: a plain copy on rank 0 that checkpoints are written from
        self.optimizer: torch.optim.Optimizer | None = None
        self.loader: TokenLoader | None = None
        self.objective: Objective | None = None
        self.predictive: predictive.Predictive | predictive.Off = predictive.Off()  # [predictive]
        self.phase_i = self.phase_step = self.step = self.tokens_seen = 0
        self.elapsed_prev = 0.0
        self.last_saved: int | None = None
        self.bad_steps = 0
        self.skipped = 0  # non-finite steps skipped in this process's life
        self.val: dict | None = None

    @property
    def phase(self) -> Phase:
        return self.phases[self.phase_i]

    @property
    def total(self) -> int:
        return sum(ph.steps for ph in self.phases)

    # ---- setting up ------------------------------------------------------------------------
    def _read_resume(self) -> ck.Checkpoint:
        cfg, run_dir = self.cfg, self.run_dir
        try:
            ckpt = ck.read_checkpoint(run_dir)
        except AdambaError as e:
            raise AdambaError(f"--resume: nothing to resume in {run_dir} ({e})") from e
        if ckpt.cfg.model.vocab_size != self.tokenizer.model_rows(ckpt.cfg.model.vocab_size):
            raise AdambaError(
                f"tokenizer {cfg.data.tokenizer} has {self.tokenizer.vocab_size} tokens but the checkpoint in "
                f"{run_dir} was trained with {ckpt.cfg.model.vocab_size}; use the run's own tokenizer.json"
            )
        return ckpt

    def _read_init(self) -> ck.Checkpoint:
        """train.init_from: a checkpoint whose weights start this fresh run (its optimizer, step
        and data position are not taken): the model after surgery, say."""
        src = self.cfg.train.init_from
        try:
            init = ck.read_checkpoint(src)
        except AdambaError as e:
            raise AdambaError(f"train.init_from={src}: {e}") from e
        old, new = dataclasses.asdict(init.cfg.model), dataclasses.asdict(self.cfg.model)
        diff = [k for k in new if old.get(k) != new[k] and k != "max_seq_len"]
        if diff:
            detail = ", ".join(f"model.{k}: checkpoint {old.get(k)!r} vs config {new[k]!r}" for k in diff[:4])
            raise AdambaError(
                f"train.init_from={src}: the model config differs from the checkpoint's ({detail}); "
                "train the checkpoint's model (copy its [model] table)"
            )
        if init.cfg.elastic.enabled != self.cfg.elastic.enabled and init.cfg.elastic.enabled:
            raise AdambaError(
                f"train.init_from={src} holds elastic heads; set elastic.enabled=true to train it"
            )
        return init

    def _restore_plan(self, state: dict) -> None:
        """Phase lengths from the checkpoint where the config still asks for what it did (a time
        budget's length stays; a phase the user lengthened takes the new length); the phases up
        to the one in flight must be the same ones."""
        names = state.get("phase_names", [self.phases[0].name])
        cur = state.get("phase", 0)
        now = [ph.name for ph in self.phases]
        if now[: cur + 1] != names[: cur + 1]:
            raise AdambaError(
                f"cannot resume: the phases up to {names[cur]!r} were {names[: cur + 1]} and are now "
                f"{now[: cur + 1]}; only phases after the current one may change"
            )
        saved = state.get("phase_steps", [state.get("max_steps", self.phases[0].steps)])
        asked = state.get("phase_steps_config", [state.get("max_steps_config", self.phases[0].steps_config)])
        for ph, n, a in zip(self.phases, saved, asked):
            if a == ph.steps_config:
                ph.steps = n

    def build(self, resume: bool) -> None:
        cfg = self.cfg
        ckpt = self._read_resume() if resume else None
        cfg.model.vocab_size = self.tokenizer.model_rows(
            cfg.model.vocab_size if cfg.train.init_from or resume else 0
        )
        if ckpt is not None:
            _check_resume_config(cfg, ckpt)
            self._restore_plan(ckpt.state)
        torch.manual_seed(cfg.train.seed)
        self.model = LM(cfg.model).to(self.device)
        if cfg.elastic.enabled:  # Matryoshka heads join the model (their weights are in checkpoints)
            from adamba.model.elastic import attach_elastic

            attach_elastic(self.model, cfg.elastic)
        for block in self.model.blocks:
            block.checkpointing = cfg.train.activation_checkpointing
        if cfg.train.compile:
            check_compile(self.device)
        # the compiled forward shares its weights with `model` (checkpoints, eval, elastic use it)
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        self.step_module = dist.Step(self.model)
        for ph in self.phases:  # open and hash-check every phase's data before any work
            self._open_loader(ph, prefetch=0).close()
        if cfg.data.val:
            self._val_loader(verify=True)
        if ckpt is None and cfg.train.init_from:
            init = self._read_init()
            ck.load_weights(self.model, init, fresh=("elastic.",) if not init.cfg.elastic.enabled else ())
        if ckpt is not None:
            ck.load_weights(self.model, ckpt)  # before sharding: FSDP2 shards the loaded weights
        if self.dist.parallel == "fsdp":
            dist.shard(self.dist, self.step_module)
        if ckpt is None:
            self.enter_phase(0)
            return
        st = ckpt.state
        tstate = ck.load_trainer_state(ckpt)
        self.phase_i = st.get("phase", 0)
        self.phase_step = st.get("phase_step", st["step"])
        self.step, self.last_saved = st["step"], st["step"]
        self.tokens_seen, self.elapsed_prev = st.get("tokens_seen", 0), st.get("elapsed_s", 0.0)
        if "phase" not in st and st.get("gate_calibrated") and len(self.phases) > 1:
            self.phase_i, self.phase_step = 1, self.phases[1].steps  # a run from before phases
        self.enter_phase(self.phase_i, tstate["optimizer"], st.get("loader"), tstate.get("objective"))
        self.predictive.load_state_dict(tstate.get("predictive") or {})
        ck.set_rng_state(tstate["rng"])

    def _open_loader(self, ph: Phase, prefetch: int = 2) -> TokenLoader:
        return TokenLoader(
            ph.data,
            ph.batch_size,
            ph.seq_len,
            seed=ph.seed,
            rank=self.dist.rank,
            world_size=self.dist.world,
            tokenizer_fingerprint=self.fp,
            prefetch=prefetch,
        )

    def _val_loader(self, verify: bool = False) -> TokenLoader:
        c = self.cfg
        return TokenLoader(
            c.data.val,
            c.train.batch_size,
            c.data.seq_len,
            seed=0,
            rank=self.dist.rank,
            world_size=self.dist.world,
            tokenizer_fingerprint=self.fp,
            verify=verify,
            prefetch=0,
        )

    def enter_phase(self, i: int, opt_state=None, loader_state=None, objective_state=None) -> None:
        """Make phase i current: its trainable set (requires_grad), a fresh optimizer over it
        (state carried over for parameters that trained before), its loader and objective."""
        ph, model = self.phases[i], self.model
        kind = OBJECTIVES[ph.objective]
        names = trainable(model, ph, kind.default_train, kind.never_train)
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
        self.wrapped = None  # a DDP wrapper of the last phase lets go of its gradient hooks
        self.wrapped = dist.wrap(self.dist, self.step_module, not kind.uses_every_trainable)
        old = self.optimizer
        self.optimizer = build_optimizer(model, self.cfg.train, ph.weight_decay, ph.beta2)
        if opt_state is not None:
            dist.load_optimizer_state(model, self.optimizer, opt_state)
        elif old is not None and not ph.reset_optimizer:
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p in old.state:
                        self.optimizer.state[p] = old.state[p]
        # the elastic heads learn from detached inputs: they clip on their own norm, so their
        # gradients never shrink the LM's step
        self.head_params = [p for n, p in model.named_parameters() if n in names and n.startswith("elastic.")]
        heads = {id(p) for p in self.head_params}
        self.lm_params = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]
        if self.loader is not None:
            self.loader.close()
        self.loader = self._open_loader(ph)
        if getattr(kind, "needs_masked_data", False) and not self.loader.masked:
            raise AdambaError(
                f"phase {ph.name!r} ({ph.objective}) needs chat data with a loss mask: make it with "
                "`adamba data chat FILE --format ... --tokenizer ... --out DIR` and list DIR in the phase's data"
            )
        if loader_state is not None:
            self.loader.load_state_dict(loader_state)
        self.objective = kind(model, self.cfg, ph, self.forward)
        if objective_state:
            self.objective.load_state_dict(objective_state)
        self.predictive = predictive.build(self.cfg, model, ph.objective, ph.seq_len, self.dist.world)
        self.phase_i = i

    # ---- one step ---------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.loader)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_step(self) -> dict:
        """One optimizer step of the current phase; returns its metrics row. The gradient is the
        mean over every target token of the step (all micro-steps, all ranks); a non-finite loss
        or gradient on any rank skips the update everywhere (counted; MAX_BAD_STEPS in a row stop
        the run). With [predictive] on, a PREDICT step runs forward only (adamba/train/predictive.py)."""
        ph = self.phase
        lr = ph.lr * lr_multiplier(self.phase_step, ph.steps, ph)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        skip = self.predictive.skips_backward
        loss_acc, gnorm, extra = self.predictive.predict_step(self, lr) if skip else self.real_step(lr)
        self.step += 1
        self.phase_step += 1
        self.tokens_seen += ph.tokens_per_step
        row = {"step": self.step, "phase": ph.name, "loss": loss_acc, "lr": lr, "grad_norm": gnorm, **extra}
        row.update(self.model.moe_report() if hasattr(self.model, "moe_report") else {})  # MoE routing
        row.update(self.objective.metrics() if hasattr(self.objective, "metrics") else {})  # e.g. GRPO reward
        if self.skipped:
            row["skipped_steps"] = self.skipped
        return row

    def real_step(self, lr: float) -> tuple[float, float, dict]:
        """Forward, backward and AdamW's step: (loss, gradient norm, the predictive mode's metrics)."""
        ph, opt, d, extra = self.phase, self.optimizer, self.dist, {}
        count, loss_sum = 0.0, 0.0
        for k in range(ph.grad_accum):
            with dist.no_sync(d, self.wrapped, k < ph.grad_accum - 1), self.amp:
                loss, logged, n = self.wrapped(self.objective.loss, self.phase_step, self.next_batch)
                (loss * n).backward()  # a sum over tokens; divided by the global count below
            count += float(n)
            loss_sum += float(logged.detach()) * float(n)
        count, loss_sum = d.all_sum([count, loss_sum])
        scale = d.world / max(count, 1.0)  # DDP / FSDP2 average over ranks; make it a token mean
        for p in opt.param_groups:
            for q in p["params"]:
                if q.grad is not None:
                    q.grad.mul_(scale)
        loss_acc = loss_sum / max(count, 1.0)
        clip = ph.grad_clip or float("inf")
        gnorm = (
            float(dist.full(torch.nn.utils.clip_grad_norm_(self.lm_params, clip))) if self.lm_params else 0.0
        )
        hnorm = (
            float(dist.full(torch.nn.utils.clip_grad_norm_(self.head_params, clip)))
            if self.head_params
            else 0.0
        )
        bad = d.any(not (math.isfinite(loss_acc) and math.isfinite(gnorm) and math.isfinite(hnorm)))
        if bad:
            opt.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.skipped += 1
            self.display.print(
                f"[yellow]step {self.step + 1}: non-finite loss/grad ({loss_acc}, {gnorm}); update skipped[/]"
            )
            if self.bad_steps >= MAX_BAD_STEPS:
                kept = (
                    f"the last checkpoint, step {self.last_saved}, predates it"
                    if self.last_saved
                    else "no checkpoint was saved"
                )
                raise AdambaError(
                    f"training diverged: {self.bad_steps} consecutive non-finite steps at step {self.step} "
                    f"({kept}); lower the learning rate (now {ph.lr}) or raise the warm-up"
                )
        else:
            self.bad_steps = 0
            extra = self.predictive.real_step(opt.step, loss_acc, lr, ph.grad_accum, int(count))
            opt.zero_grad(set_to_none=True)
        return loss_acc, gnorm, extra

    def evaluate(self) -> dict | None:
        """Bits per byte on data.val: eval_batches steps' worth of sequences, always the same ones
        (each rank scores its share, inside the wrapper, where FSDP2 gathers the weights)."""
        if not self.cfg.data.val:
            return None
        val_loader = self._val_loader()
        n = self.cfg.train.eval_batches * self.cfg.train.grad_accum  # a step's sequences, eval_batches times
        batches = (next(val_loader) for _ in range(n))
        amp = self.amp if self.device.type == "cuda" else None
        with torch.no_grad():  # DDP readies a gradient reduction for any forward run with grad on
            out = self.wrapped(evaluate_bpb, self.model, batches, self.token_bytes, self.device, amp)
        if self.dist.parallel == "fsdp":
            self.step_module.reshard()  # FSDP2 keeps the root's weights gathered after a forward
        if self.dist.world == 1:
            return out
        loss, nats, tokens, nbytes = self.dist.all_sum(
            [
                out["loss"] * out["tokens"],
                out["bpb"] * math.log(2) * out["bytes"],
                out["tokens"],
                out["bytes"],
            ]
        )
        return {
            "loss": loss / tokens,
            "bpb": nats / (math.log(2) * nbytes),
            "tokens": int(tokens),
            "bytes": int(nbytes),
        }

    def state_dict(self, elapsed: float, loader_state: dict) -> tuple[dict, dict]:
        """(state.json's fields, trainer.pt's extra entries) of the current position."""
        state = {
            "phase": self.phase_i,
            "phase_name": self.phase.name,
            "phase_step": self.phase_step,
            "phase_names": [ph.name for ph in self.phases],
            "phase_steps": [ph.steps for ph in self.phases],
            "phase_steps_config": [ph.steps_config for ph in self.phases],
            "loader": loader_state,
            "data_id": self.loader.data_id,  # snapshot id (name@version#hash) or "manifests"
            "tokens_seen": self.tokens_seen,
            "elapsed_s": elapsed,
        }
        return state, {"objective": self.objective.state_dict(), "predictive": self.predictive.state_dict()}

    def save(self, elapsed: float, loader_state: dict) -> None:
        """Every rank gathers (FSDP2's shards are collectives); rank 0 writes, and all ranks learn
        whether it could (a full disk stops every rank with the same one-line error)."""
        state, extra = self.state_dict(elapsed, loader_state)
        extra["optimizer"] = dist.optimizer_state(self.model, self.optimizer)
        model = self.model
        if self.dist.parallel == "fsdp":
            weights = dist.full_state(self.model)
            if self.dist.main:
                if self.shadow is None:
                    self.shadow = LM(self.cfg.model)
                    if self.cfg.elastic.enabled:
                        from adamba.model.elastic import attach_elastic

                        attach_elastic(self.shadow, self.cfg.elastic)
                self.shadow.load_state_dict(weights)
                model = self.shadow
        error = None
        if self.dist.main:
            try:
                ck.save_checkpoint(
                    self.run_dir, self.step, model, self.cfg, self.cfg.data.tokenizer, None, state, extra
                )
            except AdambaError as e:
                error = e
        if self.dist.any(error is not None):
            raise error or AdambaError(f"rank 0 could not save checkpoint step {self.step}; see its error")
        self.last_saved = self.step

    # ---- the run ----------------------------------------------------------------------------
    def fit(self, resume: bool) -> TrainResult:
        cfg, run_dir = self.cfg, self.run_dir
        self.build(resume)
        try:
            if self.dist.main:
                (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        except OSError as e:
            raise AdambaError(f"cannot write {run_dir / 'config.json'}: {e.strerror}") from e
        start, tokens_start = self.step, self.tokens_seen
        main = self.dist.main
        metrics = RunLogs(run_dir, cfg, resume_step=start if resume else None) if main else None
        self.display = display = ProgressDisplay(self.total, start, enabled=cfg.run.progress and main)
        budget_fixed = resume or cfg.train.max_minutes <= 0 or self.phase_i != 0
        t0, t_calib = time.time(), None
        stop = self.stop
        loader_state = self.loader.state_dict()  # position at the start of the current step
        stop.on_first = lambda signum: display.print(
            f"[yellow]{stop.name()}: finishing step {self.step + 1}, then saving "
            "(Ctrl-C again stops at once, keeping the last checkpoint)[/]"
        )

        def stop_here() -> None:
            """At a step boundary after an interrupt: save the finished steps, then stop."""
            if self.bad_steps == 0 and self.step > start and self.last_saved != self.step:
                self.save(
                    self.elapsed_prev + time.time() - t0, loader_state
                )  # never inside a non-finite streak
            display.close()
            kept = f"checkpoint saved at step {self.last_saved}" if self.last_saved else "no checkpoint saved"
            if main:
                print(f"interrupted ({stop.name()}): {kept}; continue with --resume", file=sys.stderr)
            raise KeyboardInterrupt

        self.model.train()
        try:
            while True:
                if self.phase_step >= self.phase.steps:  # the phase is done: the next one, if any
                    if self.phase_i + 1 >= len(self.phases):
                        break
                    self.phase_step = 0
                    self.enter_phase(self.phase_i + 1)
                    loader_state = self.loader.state_dict()
                    continue
                if self.dist.any(stop.requested):  # every rank stops at the same step
                    stop_here()
                if not budget_fixed and self.step - start == 1:
                    t_calib = time.time()  # the first step pays one-off costs; time the next ones
                if not budget_fixed and t_calib is not None and self.step - start == 1 + CALIBRATION_STEPS:
                    per_step = (time.time() - t_calib) / CALIBRATION_STEPS
                    eval_cost = 0.1  # leave ~10% of the budget for evaluation and checkpoints
                    fit = int(self.dist.min(cfg.train.max_minutes * 60 * (1 - eval_cost) / per_step))
                    self.phase.steps = max(self.phase_step + 1, min(self.phase.steps, fit))
                    budget_fixed = True
                row = self.train_step()
                now = time.time()
                elapsed = self.elapsed_prev + now - t0
                row.update(
                    tokens=self.tokens_seen,
                    tok_s=(self.tokens_seen - tokens_start) / max(1e-9, now - t0),
                    elapsed_s=elapsed,
                )
                phase_end = self.phase_step == self.phase.steps
                every = cfg.train.eval_every
                if self.objective.changes_lm and every > 0 and (self.step % every == 0 or phase_end):
                    self.val = self.evaluate()
                    if self.val is not None:
                        row.update(val_loss=self.val["loss"], val_bpb=self.val["bpb"])
                if metrics is not None:
                    metrics.write(row, self.phase_i)
                extra = f" {self.phase.name}" + (f" val_bpb {self.val['bpb']:.3f}" if self.val else "")
                display.update(self.step, self.total, row["loss"], row["lr"], row["tok_s"], extra)
                loader_state = self.loader.state_dict()
                due = phase_end or (cfg.train.ckpt_every > 0 and self.step % cfg.train.ckpt_every == 0)
                if due and self.bad_steps == 0:  # never from inside a non-finite streak
                    self.save(elapsed, loader_state)
        finally:
            display.close()
            if metrics is not None:
                metrics.close()
            self.loader.close()
        elapsed = time.time() - t0
        return TrainResult(
            run_dir=run_dir,
            steps=self.step,
            tokens_seen=self.tokens_seen,
            tokens_per_s=(self.tokens_seen - tokens_start) / max(1e-9, elapsed),
            params=self.model.num_params(),
            val=self.val,
            elapsed_s=self.elapsed_prev + elapsed,
            rank=self.dist.rank,
        )
