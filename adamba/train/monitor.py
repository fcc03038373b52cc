"""Run-time feedback: metrics.jsonl (one JSON line per logged step) and a live rich progress line."""

from __future__ import annotations

import json
import math
import os
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
