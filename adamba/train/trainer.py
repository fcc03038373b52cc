"""The training loop: one function, `run(cfg)`, used by the CLI, the quickstart and tests.

Everything the next step depends on (weights, optimizer moments, loader position, RNG, step,
schedule length) is checkpointed, so `resume=True` reproduces the uninterrupted loss curve.
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
from adamba.train import rundir
from adamba.train.monitor import MetricsLog, ProgressDisplay
from adamba.train.optim import build_optimizer
from adamba.train.rundir import RunLock
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
    run_dir = Path(cfg.run.out_dir)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg)
    if not cfg.data.train:
        raise AdambaError("data.train is empty: list the training manifests (see `adamba data shards`)")
    with RunLock(run_dir), rundir.StepBoundaryStop() as stop:
        rundir.prepare(run_dir, resume, overwrite)
        return _train(cfg, run_dir, device, tokenizer, resume, stop)


def _train(
    cfg: Config,
    run_dir: Path,
    device: torch.device,
    tokenizer: Tokenizer,
    resume: bool,
    stop: rundir.StepBoundaryStop,
) -> TrainResult:
    ckpt = None
    if resume:
        try:
            ckpt = ck.read_checkpoint(run_dir)
        except AdambaError as e:
            raise AdambaError(f"--resume: nothing to resume in {run_dir} ({e})") from e
        if ckpt.cfg.model.vocab_size != tokenizer.vocab_size:
            raise AdambaError(
                f"tokenizer {cfg.data.tokenizer} has {tokenizer.vocab_size} tokens but the checkpoint in {run_dir} "
                f"was trained with {ckpt.cfg.model.vocab_size}; use the run's own tokenizer.json"
            )
    cfg.model.vocab_size = tokenizer.vocab_size
    if ckpt is not None:
        _check_resume_config(cfg, ckpt)

    torch.manual_seed(cfg.train.seed)
    model = LM(cfg.model).to(device)
    if cfg.elastic.enabled:  # Matryoshka training: gate + predictor heads join the model (the gate
        # is fitted by the calibration phase after the LM steps)
        from adamba.model.elastic import attach_elastic
        from adamba.train.elastic import elastic_loss

        attach_elastic(model, cfg.elastic)
    optimizer = build_optimizer(model, cfg.train)
    # compiled forward for the training step; weights stay shared with `model` (checkpoints,
    # eval and the elastic path use the eager module)
    if cfg.train.compile:
        check_compile(device)
    fwd = torch.compile(model) if cfg.train.compile else model
    fp = tokenizer.fingerprint()
    loader = TokenLoader(
        cfg.data.train, cfg.train.batch_size, cfg.data.seq_len, seed=cfg.train.seed, tokenizer_fingerprint=fp
    )
    if cfg.data.val:  # open (and hash-check) the validation shards once, before any work
        TokenLoader(
            cfg.data.val, cfg.train.batch_size, cfg.data.seq_len, tokenizer_fingerprint=fp, prefetch=0
        )
    token_bytes = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.long)
    amp = autocast_ctx(device, cfg.train.dtype)

    start, total, tokens_seen, elapsed_prev = 0, cfg.train.max_steps, 0, 0.0
    if ckpt is not None:
        ck.load_weights(model, ckpt)
        tstate = ck.load_trainer_state(ckpt)
        optimizer.load_state_dict(tstate["optimizer"])
        loader.load_state_dict(ckpt.state["loader"])
        ck.set_rng_state(tstate["rng"])
        start = ckpt.state["step"]
        if ckpt.state.get("max_steps_config", total) == total:  # keep a budget-derived length
            total = ckpt.state.get("max_steps", total)  # else: the user extended or shortened the run
        tokens_seen = ckpt.state.get("tokens_seen", 0)
        elapsed_prev = ckpt.state.get("elapsed_s", 0.0)

    try:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    except OSError as e:
        raise AdambaError(f"cannot write {run_dir / 'config.json'}: {e.strerror}") from e
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=start if ckpt is not None else None)
    display = ProgressDisplay(total, start, enabled=cfg.run.progress)
    budget_fixed = ckpt is not None or cfg.train.max_minutes <= 0
    gate_calibrated = ckpt.state.get("gate_calibrated", 0) if ckpt is not None else 0
    gate_loss = ckpt.state.get("gate_calibration_loss") if ckpt is not None else None

    def evaluate() -> dict | None:
        if not cfg.data.val:
            return None
        val_loader = TokenLoader(
            cfg.data.val,
            cfg.train.batch_size,
            cfg.data.seq_len,
            seed=0,
            tokenizer_fingerprint=fp,
            verify=False,
            prefetch=0,
        )
        batches = (next(val_loader) for _ in range(cfg.train.eval_batches))
        return evaluate_bpb(model, batches, token_bytes, device, amp if device.type == "cuda" else None)

    def save(step: int, elapsed: float, loader_state: dict) -> None:
        nonlocal last_saved
        state = {
            "loader": loader_state,
            "max_steps": total,
            "max_steps_config": cfg.train.max_steps,
            "data_id": loader.data_id,  # snapshot id (name@version#hash) or "manifests"
            "tokens_seen": tokens_seen,
            "elapsed_s": elapsed,
            "gate_calibrated": gate_calibrated,
        }
        if gate_loss is not None:
            state["gate_calibration_loss"] = gate_loss
        ck.save_checkpoint(run_dir, step, model, cfg, cfg.data.tokenizer, optimizer, state)
        last_saved = step

    # the predictor learns from detached inputs; a shared clip norm would still let
    # their gradients (and so settings like elastic.predictor_tol) shrink the LM's update
    head_params = list(model.elastic.parameters()) if hasattr(model, "elastic") else []
    heads = {id(p) for p in head_params}
    lm_params = [p for p in model.parameters() if id(p) not in heads]
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len * cfg.train.grad_accum
    t0 = time.time()
    t_calib = None
    bad_steps = 0
    val = None
    step = start
    last_saved = start if ckpt is not None else None  # the newest checkpoint on disk
    model.train()
    loader_state = loader.state_dict()  # position at the start of the current step
    stop.on_first = lambda signum: display.print(
        f"[yellow]{stop.name()}: finishing step {step + 1}, then saving "
        "(Ctrl-C again stops at once, keeping the last checkpoint)[/]"
    )

    def stop_here() -> None:
        """At a step boundary after an interrupt: save the finished steps, then stop."""
        if bad_steps == 0 and step > start and last_saved != step:
            save(step, elapsed_prev + time.time() - t0, loader_state)  # never inside a non-finite streak
        display.close()
        kept = f"checkpoint saved at step {last_saved}" if last_saved else "no checkpoint saved"
        print(f"interrupted ({stop.name()}): {kept}; continue with --resume", file=sys.stderr)
        raise KeyboardInterrupt

    try:
        while step < total:
            if stop.requested:
                stop_here()
            if not budget_fixed and step - start == 1:
                t_calib = time.time()  # the first step pays one-off costs; time the next ones
            if not budget_fixed and t_calib is not None and step - start == 1 + CALIBRATION_STEPS:
                per_step = (time.time() - t_calib) / CALIBRATION_STEPS
                eval_cost = 0.1  # leave ~10% of the budget for evaluation and checkpoints
                fit = int(cfg.train.max_minutes * 60 * (1 - eval_cost) / per_step)
                total = max(step + 1, min(total, fit))
                budget_fixed = True
            lr = cfg.train.lr * lr_multiplier(step, total, cfg.train)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            loss_acc = 0.0
            for _ in range(cfg.train.grad_accum):
                x, y = next(loader)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with amp:
                    if cfg.elastic.enabled:  # sandwich widths + exit and predictor terms
                        loss, lm_loss = elastic_loss(model, x, y, cfg.elastic)
                    else:
                        _, loss = fwd(x, y)
                        lm_loss = loss
                (loss / cfg.train.grad_accum).backward()
                loss_acc += float(lm_loss.detach()) / cfg.train.grad_accum  # logged: full-width LM loss
            clip = cfg.train.grad_clip or float("inf")
            gnorm = float(torch.nn.utils.clip_grad_norm_(lm_params, clip))
            # the elastic heads clip on their own norm, so they never scale the LM's step
            hnorm = float(torch.nn.utils.clip_grad_norm_(head_params, clip)) if head_params else 0.0
            if not (math.isfinite(loss_acc) and math.isfinite(gnorm) and math.isfinite(hnorm)):
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                display.print(
                    f"[yellow]step {step}: non-finite loss/grad ({loss_acc}, {gnorm}); update skipped[/]"
                )
                if bad_steps >= MAX_BAD_STEPS:
                    kept = (
                        f"the last checkpoint, step {last_saved}, predates it"
                        if last_saved
                        else "no checkpoint was saved"
                    )
                    raise AdambaError(
                        f"training diverged: {bad_steps} consecutive non-finite steps at step {step} ({kept}); "
                        f"lower train.lr (now {cfg.train.lr}) or raise train.warmup_frac"
                    )
            else:
                bad_steps = 0
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            elapsed = elapsed_prev + time.time() - t0
            tok_s = (step - start) * tokens_per_step / max(1e-9, time.time() - t0)
            row = {
                "step": step,
                "loss": loss_acc,
                "lr": lr,
                "grad_norm": gnorm,
                "tokens": tokens_seen,
                "tok_s": tok_s,
                "elapsed_s": elapsed,
            }
            if cfg.train.eval_every > 0 and (step % cfg.train.eval_every == 0 or step == total):
                val = evaluate()
                if val is not None:
                    row.update(val_loss=val["loss"], val_bpb=val["bpb"])
            metrics.write(row)
            display.update(step, total, loss_acc, lr, tok_s, f" val_bpb {val['bpb']:.3f}" if val else "")
            loader_state = loader.state_dict()
            due = step == total or (cfg.train.ckpt_every > 0 and step % cfg.train.ckpt_every == 0)
            if due and bad_steps == 0:  # never from inside a non-finite streak
                save(step, elapsed, loader_state)
    finally:
        display.close()
        metrics.close()
        if step < total:
            loader.close()
    ec = cfg.elastic
    if ec.enabled and ec.calibrate_steps > 0 and step >= total and gate_calibrated < ec.calibrate_steps:
        # the gate-calibration phase: LM frozen, gate fitted to the final model's own agreement
        from adamba.train.elastic import calibrate_gate

        bar = ProgressDisplay(ec.calibrate_steps, 0, enabled=cfg.run.progress)

        def on_step(i: int, loss: float, lr: float) -> None:
            bar.update(i, ec.calibrate_steps, loss, lr, 0.0, " gate calibration")
            if stop.requested:  # the LM's checkpoint is saved; --resume redoes the calibration
                bar.close()
                print(
                    f"interrupted ({stop.name()}) during gate calibration: the checkpoint of step {step} "
                    "is saved; --resume runs the calibration again",
                    file=sys.stderr,
                )
                raise KeyboardInterrupt

        try:
            with amp:
                losses = calibrate_gate(
                    model,
                    ((x.to(device), y.to(device)) for x, y in iter(loader.__next__, None)),
                    ec.calibrate_steps,
                    on_step=on_step,
                    reuse=ec.calibrate_reuse,
                )
        finally:
            bar.close()
            if stop.requested:
                loader.close()
        gate_calibrated, gate_loss = ec.calibrate_steps, sum(losses[-20:]) / len(losses[-20:])
        save(step, elapsed_prev + time.time() - t0, loader.state_dict())
    loader.close()  # stop the prefetch thread now, not at garbage collection
    elapsed = time.time() - t0
    return TrainResult(
        run_dir=run_dir,
        steps=step,
        tokens_seen=tokens_seen,
        tokens_per_s=(step - start) * tokens_per_step / max(1e-9, elapsed),
        params=model.num_params(),
        val=val,
        elapsed_s=elapsed_prev + elapsed,
    )
