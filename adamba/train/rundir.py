"""A run directory has one writer: a lock held for the run's life, no silent overwrite of an
earlier run, and interrupts that take effect at a step boundary.

The lock is an flock on RUN/.lock, so the kernel releases it when the process dies, even by
kill -9; the file records who held it, which tells a live holder (refused, named) from a stale
file left by a killed run (reported and taken over).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from adamba.errors import AdambaError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK = ".lock"
RUN_FILES = ("metrics.jsonl", "config.json")  # what a run writes beside checkpoints/


class RunLock:
    """Exclusive ownership of a run directory for the life of a `with` block."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.fd: int | None = None
        self.created_dir = False

    def __enter__(self) -> RunLock:
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AdambaError(f"cannot create the run directory {self.run_dir}: {e.strerror}") from e
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read_holder(fd))
                os.close(fd)
                raise AdambaError(
                    f"{self.run_dir} is in use by another run ({holder}); wait for it to finish "
                    "or give this run another --out"
                ) from None
            try:  # the holder before us may have unlinked the file we opened: lock the live one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read_holder(fd)
        if stale:
            print(
                f"adamba: note: {self.run_dir} was locked by a run that ended without releasing it "
                f"({_describe(stale)}; killed?); taking it over",
                file=sys.stderr,
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: the next run finds no stale holder
        except FileNotFoundError:
            pass
        os.close(self.fd)  # releases the flock
        self.fd = None
        if self.created_dir and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()  # nothing was written: leave nothing behind


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe(h: dict) -> str:
    if not h or h.get("unreadable"):
        return "holder unknown"
    return f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}"


def existing_run(run_dir: Path) -> list[str]:
    """What an earlier run left in run_dir: its checkpoints and metrics (empty if nothing)."""
    found = []
    ckpts = run_dir / "checkpoints"
    steps = sorted(p.name for p in ckpts.glob("step_*") if p.is_dir()) if ckpts.is_dir() else []
    if steps:
        found.append(f"checkpoints up to {steps[-1]}")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:  # an empty one holds nothing to lose
        found.append("metrics.jsonl")
    return found


def prepare(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an earlier one unless asked to overwrite it; with
    overwrite, delete what a run writes (checkpoints/, metrics.jsonl, config.json) and nothing
    else of the folder."""
    if resume and overwrite:
        raise AdambaError("--resume continues a run and --overwrite deletes it: choose one")
    if resume:
        return
    found = existing_run(run_dir)
    if found and not overwrite:
        raise AdambaError(
            f"{run_dir} already holds a run ({', '.join(found)}); continue it with --resume, or "
            "start over with --overwrite (deletes it)"
        )
    if overwrite:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        for f in RUN_FILES:
            (run_dir / f).unlink(missing_ok=True)


class StepBoundaryStop:
    """SIGINT / SIGTERM during training set a flag instead of raising: the step in flight
    finishes, the trainer saves and stops at the boundary (an interrupt inside
    optimizer.step() would otherwise save half an update). A second SIGINT stops at once, with
    no save (the last checkpoint stays intact). Only the main thread can take signals; elsewhere
    this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_first=None):
        self.signum: int | None = None
        self.on_first = on_first
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.on_first is not None:
            self.on_first(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StepBoundaryStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous.clear()
