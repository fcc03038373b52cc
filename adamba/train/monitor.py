"""Run-time feedback: metrics.jsonl (one JSON line per logged step) and a live rich progress line."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsLog:
    """Append-only JSONL; on resume, entries past the resumed step are dropped so the file
    reads as one continuous run."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            keep = [
                ln
                for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_step
            ]
            path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None and path.exists():
            path.unlink()
        self._fh = open(path, "a")

    def write(self, row: dict) -> None:
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


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
