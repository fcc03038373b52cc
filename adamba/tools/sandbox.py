"""Run untrusted Python (what a model writes) in a throwaway sandbox: `run_python(code)`.

rlimits alone are not a security boundary: most of them do not bind root (and CI runs as root),
none of them stops network access or writes to files the user may write. So the code runs behind
OS isolation, set up by `jail.py` inside fresh Linux namespaces made with util-linux `unshare`:

| layer                                  | what it stops                                           |
|----------------------------------------|---------------------------------------------------------|
| network namespace (only a down `lo`)   | any connection: the host's 127.0.0.1, the internet,     |
|                                        | abstract unix sockets of host processes                 |
| PID namespace, jail as its PID 1       | seeing or signalling host processes; when the code's    |
|                                        | main process ends, every process it left (a fork bomb,  |
|                                        | a daemon) is killed by the kernel                       |
| mount namespace, private tmpfs root,   | writing anything on the host (read-only holds even for  |
| read-only binds, host root detached    | uid 0); reading /home, /root, /tmp, /run (daemon        |
|                                        | sockets), disks in /dev; writable space is one tmpfs of |
|                                        | `scratch_mb` that dies with the namespace               |
| IPC and UTS namespaces                 | host System V shared memory / queues; hostname changes  |
| throwaway uid (host root) / user       | file permissions apply and RLIMIT_NPROC binds (the      |
| namespace (otherwise); no_new_privs,   | kernel exempts uid 0 from it); no capabilities (no      |
| empty capability bounding set          | mount, no chroot, no raw devices), no setuid escalation |
| a new session and session keyring      | the host terminal's job control; the host's kernel keys |
| rlimits on the code's processes        | CPU seconds (SIGXCPU), address space (MemoryError),     |
|                                        | process count (fork fails), file size, open files, no   |
|                                        | core dumps                                              |
| wall-clock timeout here                | sleeping or blocked code: the whole process group is    |
|                                        | killed, and with it the namespace                       |
| output cap here                        | flooding the caller: output past `output_bytes` is cut  |
|                                        | and the code stopped                                    |

Two ways to drop privileges (`mode`): "root" when this process runs as root (the namespaces
without a user namespace, then the code as a random uid of THROWAWAY_UID's range that owns
nothing), "userns" otherwise (a user namespace maps the user to its uid 0; the code keeps the
user's own uid on the host, without capabilities). Driven as root, "userns" leaves the code host
uid 0, which RLIMIT_NPROC does not bind: that is why root gets the throwaway uid.

The throwaway working directory: a temporary directory here is the mount point of the jail's
tmpfs root, inside its own mount namespace only; the host side stays empty and is removed after.

Where namespaces cannot be made (no `unshare`, not permitted, an `unshare` that isolates
nothing, an unknown machine) the run fails closed with SandboxUnavailable: code is never run
without isolation. Not isolated: memory is bounded per process (RLIMIT_AS), so several
processes together may use up to `processes` x `memory_mb` (no cgroup); CPU time is per process
too, and the wall clock bounds the rest; the code can read (not write) /usr and the Python
installation it runs on; the kernel itself is shared (no seccomp filter), as with any container.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from adamba.errors import AdambaError

JAIL = Path(__file__).with_name("jail.py")
RO_PATHS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
ETC = ["ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group", "nsswitch.conf"]
THROWAWAY_UID = 1_900_000_000  # + a random offset: a uid no file and no process on the host has
MIB = 1 << 20


class SandboxUnavailable(AdambaError):
    """Isolation could not be set up here; the code did not run."""


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: int = 5  # CPU seconds per process
    wall_s: float = 10.0  # wall clock for the whole run
    memory_mb: int = 1024  # address space per process
    processes: int = 16  # processes and threads of the code's uid
    file_mb: int = 16  # largest file the code may write
    scratch_mb: int = 64  # the writable tmpfs (/sandbox, /tmp, /dev/shm together)
    open_files: int = 64
    output_bytes: int = 16_384  # stdout and stderr together; the rest is cut and the code stopped
    code_bytes: int = 100_000

    def check(self) -> SandboxLimits:
        for k, v in asdict(self).items():
            if not v > 0:
                raise AdambaError(f"sandbox limit {k}={v} must be > 0")
        return self


@dataclass
class SandboxRun:
    """How a run ended: `output` (stdout and stderr interleaved, cut to the cap) and why it stopped."""

    output: str
    exit_code: int | None = None
    signal: int | None = None
    stopped: str | None = None  # "wall", "output" or "killed": ended from outside
    truncated: bool = False
    seconds: float = 0.0
    cpu_s: float | None = None
    limits: SandboxLimits = SandboxLimits()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.stopped is None

    def error(self) -> str | None:
        """One line saying why the run failed, or None if it succeeded."""
        lim = self.limits
        if self.stopped == "wall":
            return f"stopped: wall-clock limit of {lim.wall_s:g} s exceeded"
        if self.stopped == "output":
            return f"stopped: output over the {lim.output_bytes} byte limit"
        if self.stopped == "killed":
            return "the sandbox was killed from outside (out of memory?)"
        if self.signal is not None:
            name = _signame(self.signal)
            why = {
                signal.SIGXCPU: f"CPU time limit of {lim.cpu_s} s exceeded",
                signal.SIGXFSZ: f"file size limit of {lim.file_mb} MiB exceeded",
                signal.SIGKILL: f"killed: CPU hard limit of {lim.cpu_s + 1} s, or out of memory",
            }.get(self.signal, "crashed")
            return f"{why} ({name})"
        if self.exit_code:
            tail = self.output.rstrip().splitlines()[-1:] or [""]
            if "MemoryError" in tail[0]:
                return f"memory limit of {lim.memory_mb} MiB exceeded (MemoryError), exit status {self.exit_code}"
            if tail[0].startswith(("BlockingIOError", "OSError: [Errno 11]")):
                return f"process limit of {lim.processes} reached ({tail[0][:120]}), exit status {self.exit_code}"
            return f"exit status {self.exit_code}" + (f": {tail[0][:200]}" if tail[0] else "")
        return None


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _host_namespaces() -> dict[str, int]:
    return {ns: os.stat(f"/proc/self/ns/{ns}").st_ino for ns in ("mnt", "net", "ipc", "uts", "user")}


def _python_paths(python: str) -> list[str]:
    """What the interpreter needs to start: its prefix, the venv, where the executable really is."""
    paths = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(python))}
    if python != sys.executable:
        paths.add(os.path.dirname(os.path.dirname(python)))
    return sorted(paths)


def _mode(mode: str | None) -> str:
    if mode is None:
        return "root" if os.geteuid() == 0 else "userns"
    if mode not in ("root", "userns"):
        raise ValueError(f"sandbox mode {mode!r}: 'root' or 'userns'")
    return mode


def _command(unshare: str, mode: str, python: str, cfg: dict) -> list[str]:
    cmd = [unshare, "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]
    if mode == "userns":
        cmd += ["--user", "--map-root-user"]
    return cmd + [python, "-I", "-S", str(JAIL), json.dumps(cfg)]  # + the status fd


def run_python(
    code: str, limits: SandboxLimits | None = None, *, mode: str | None = None, python: str | None = None
) -> SandboxRun:
    """Run `code` as a Python program in a fresh sandbox and collect what it printed.

    `mode` is how privileges are dropped: "root" (the host runs as root: namespaces, then a
    throwaway uid) or "userns" (a user namespace; the only way without root). Default: by euid.
    Raises SandboxUnavailable (the code did not run) where isolation cannot be set up."""
    limits = (limits or SandboxLimits()).check()
    data = code.encode("utf-8", "surrogatepass")
    if len(data) > limits.code_bytes:
        raise AdambaError(f"code of {len(data)} bytes is over the {limits.code_bytes} byte limit")
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(
            f"the python tool needs Linux namespaces (this is {sys.platform}); it never runs code unsandboxed"
        )
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SandboxUnavailable(
            "the python tool needs util-linux `unshare` on PATH to isolate the code; "
            "it never runs code unsandboxed"
        )
    mode = _mode(mode)
    python = python or sys.executable
    uid = gid = 0
    if mode == "root":
        uid = gid = THROWAWAY_UID + int.from_bytes(os.urandom(3), "little")
    with tempfile.TemporaryDirectory(prefix="adamba-sandbox-") as root:
        cfg = {
            "root": root,  # the jail mounts its private tmpfs root here, inside its own namespace
            "userns": mode == "userns",
            "host_ns": _host_namespaces(),
            "ro": RO_PATHS + _python_paths(python),
            "etc": ETC,
            "uid": uid,
            "gid": gid,
            "python": python,
            "scratch_bytes": limits.scratch_mb * MIB,
            "env": {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": "/sandbox",
                "TMPDIR": "/tmp",
                "LANG": "C.UTF-8",
                "OPENBLAS_NUM_THREADS": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            },
            "limits": {
                "cpu_s": limits.cpu_s,
                "memory_bytes": limits.memory_mb * MIB,
                "processes": limits.processes,
                "file_bytes": limits.file_mb * MIB,
                "open_files": limits.open_files,
            },
        }
        return _run(_command(unshare, mode, python, cfg), data, limits)


def _run(cmd: list[str], code: bytes, limits: SandboxLimits) -> SandboxRun:
    status_r, status_w = os.pipe()
    cmd = [*cmd, str(status_w)]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(status_w,),
            start_new_session=True,  # one process group to kill, whatever happens inside
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )
    except OSError as e:
        os.close(status_r)
        raise SandboxUnavailable(f"cannot start the sandbox: {e}") from e
    finally:
        os.close(status_w)
    out, stopped = bytearray(), None
    deadline = start + limits.wall_s
    try:
        try:
            proc.stdin.write(code)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        stopped = _collect(proc, out, deadline, limits.output_bytes)
        if stopped is None:  # output closed; the code may still be running (it closed stdout)
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stopped = "wall"
    finally:
        if proc.poll() is None:
            _kill(proc)
        proc.wait()
        proc.stdout.close()
        with os.fdopen(status_r, "rb") as f:
            events = [json.loads(ln) for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    seconds = time.monotonic() - start
    errors = [e["error"] for e in events if "error" in e]
    if errors or not any("ready" in e for e in events):
        why = (
            errors[0] if errors else (out.decode(errors="replace").strip().splitlines() or ["no report"])[-1]
        )
        raise SandboxUnavailable(
            f"cannot isolate the code ({why[:300]}); the python tool needs Linux namespaces "
            "(unshare: mount, net, pid) and never runs code unsandboxed"
        )
    end = next((e for e in events if "exit" in e or "signal" in e), {})
    if not end and stopped is None:
        stopped = "killed"  # the whole sandbox died from outside (the OOM killer, a signal)
    truncated = len(out) > limits.output_bytes
    text = bytes(out[: limits.output_bytes]).decode("utf-8", errors="replace")
    if truncated:
        text += f"\n[output truncated at {limits.output_bytes} bytes]"
    return SandboxRun(
        output=text,
        exit_code=end.get("exit"),
        signal=end.get("signal"),
        stopped=stopped,
        truncated=truncated,
        seconds=seconds,
        cpu_s=end.get("cpu_s"),
        limits=limits,
    )


def _collect(proc: subprocess.Popen, out: bytearray, deadline: float, cap: int) -> str | None:
    """Read the sandbox's output until it closes ("wall" or "output" if stopped first)."""
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "wall"
            if not sel.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # every process in the sandbox has closed its output
            out += chunk
            if len(out) > cap:
                return "output"


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's process group: unshare, the jail (PID 1 of the namespace, whose death
    takes every process inside with it) and the code."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
