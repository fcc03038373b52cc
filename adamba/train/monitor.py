"""Run-time feedback: metrics.jsonl (one JSON line per logged step) and a live rich progress line."""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from adamba.errors import AdambaError


class MetricsLog:
    """Append-only JSONL, one os.write per line (O_APPEND), so a reader sees whole lines but for
    the last one of a write cut short (a full disk, a kill). On resume, lines past the resumed
    step and unreadable (torn) lines are dropped, with a note, so the file reads as one
    continuous run."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        try:
            if resume_step is not None and path.exists():
                rows, torn = _parse(path.read_bytes())
                if torn:
                    print(
                        f"adamba: note: dropped {torn} unreadable line(s) of {path} (a write cut short)",
                        file=sys.stderr,
                    )
                keep = "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= resume_step)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(keep)
                os.replace(tmp, path)
            elif resume_step is None and path.exists():
                path.unlink()
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise AdambaError(f"cannot write {path}: {e.strerror}") from e

    def write(self, row: dict) -> None:
        data = memoryview((json.dumps(row) + "\n").encode())
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as e:
            raise AdambaError(f"cannot write {self.path}: {e.strerror}") from e

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _parse(data: bytes) -> tuple[list[dict], int]:
    """(the readable rows, how many lines were not readable JSON objects)."""
    rows, bad = [], 0
    for ln in data.splitlines():
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn line (a write cut short) is skipped."""
    return _parse(Path(path).read_bytes())[0]


class ProgressDisplay:
    """A rich progress bar with loss, lr, tokens/s and ETA; silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.enabled = enabled
        self.t0 = time.time()
        if not enabled:
            return
        self.console = Console(file=sys.stderr)
        self.progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, info="")
        self.progress.start()

    def update(self, step: int, total: int, loss: float, lr: float, tok_s: float, extra: str = "") -> None:
        if not self.enabled:
            return
        loss_s = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
        info = f"loss {loss_s}  lr {lr:.2e}  {tok_s:,.0f} tok/s {extra}"
        self.progress.update(self.task, completed=step, total=total, info=info)

    def print(self, msg: str) -> None:
        if self.enabled:
            self.progress.console.print(msg)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


def check_loggers(cfg) -> None:
    """Fail before any work when a requested logger cannot run (one line, not a traceback)."""
    if cfg.run.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise AdambaError(
                "run.wandb = true but wandb is not installed: `pip install wandb`, or --set run.wandb=false"
            ) from None


class RunLogs:
    """Where the trainer's metric rows go: metrics.jsonl always; TensorBoard event files in
    <run>/tensorboard/ (run.tensorboard, default on); Weights & Biases (run.wandb). Only the main
    rank makes one. A resume from step S drops what the interrupted run logged after S in all of
    them (TensorBoard: a purge marker at S + 1, which its reader honours; W&B: the same run id,
    continued), so every view reads as one run."""

    def __init__(self, run_dir: Path, cfg, resume_step: int | None):
        self.jsonl = MetricsLog(run_dir / "metrics.jsonl", resume_step=resume_step)
        self.tb = self.wandb = None
        self.phases: dict[str, int] = {}
        if cfg.run.tensorboard:
            from tensorboardX import SummaryWriter

            tb_dir = run_dir / "tensorboard"
            if resume_step is None and tb_dir.exists():  # a fresh run: no events of an earlier one
                for f in tb_dir.glob("events.out.tfevents.*"):
                    f.unlink()
            purge = None if resume_step is None else resume_step + 1
            # a file per process run; numbered, since its name otherwise has only whole seconds
            # in it and a quick resume would truncate the earlier file
            n = len(list(tb_dir.glob("events.out.tfevents.*"))) if tb_dir.exists() else 0
            self.tb = SummaryWriter(str(tb_dir), purge_step=purge, flush_secs=10, filename_suffix=f".{n}")
        if cfg.run.wandb:
            check_loggers(cfg)
            import wandb

            id_file = run_dir / "wandb_id.txt"  # one W&B run per run directory, resumes included
            if resume_step is None or not id_file.exists():
                id_file.write_text(secrets.token_hex(6))
            self.wandb = wandb.init(
                project=cfg.run.wandb_project,
                name=run_dir.name,
                id=id_file.read_text().strip(),
                resume="allow",
                dir=str(run_dir),
                config=cfg.to_dict(),
            )

    def write(self, row: dict, phase_index: int) -> None:
        """One step's row: to metrics.jsonl as it is; to TensorBoard / W&B as scalars named
        train/<key> and val/<key> (val_bpb -> val/bpb), phase/index, and the loss once more
        under phase_loss/<phase name> so each phase's curve can be read on its own."""
        self.jsonl.write(row)
        if self.tb is None and self.wandb is None:
            return
        step = row["step"]
        scalars = {"phase/index": phase_index, f"phase_loss/{row['phase']}": row["loss"]}
        for k, v in row.items():
            if k in ("step", "phase") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            scalars[f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}"] = v
        if self.tb is not None:
            for tag, v in scalars.items():
                self.tb.add_scalar(tag, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
