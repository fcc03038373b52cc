"""The python tool's sandbox, attacked: each escape attempt must end in a clear tool error while
this (host) test process keeps running, and leave nothing behind on the host.

The tests run in whatever mode this machine gets (as root, CI's case: namespaces + a throwaway
uid); `test_user_namespace_mode` also drives the mode a non-root user gets.
"""

import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from adamba.tools import SandboxLimits, SandboxUnavailable, default_registry, run_python
from adamba.tools.sandbox import THROWAWAY_UID
from tests.tools import no_namespaces

FAST = SandboxLimits(cpu_s=1, wall_s=3)


@pytest.fixture(scope="module", autouse=True)
def sandbox_works():
    try:
        res = run_python("print('ok')")
    except SandboxUnavailable as e:
        if not no_namespaces(e):  # a sandbox bug, not a machine without namespaces: fail loudly
            raise
        pytest.skip(f"no sandbox on this machine: {e}")
    assert res.output == "ok\n" and res.ok


def sandbox_processes() -> list[int]:
    """Host PIDs of processes still running under a sandbox's throwaway uid."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                uid = int((d / "status").read_text().split("\nUid:")[1].split()[0])
            except (OSError, IndexError):
                continue
            if THROWAWAY_UID <= uid < THROWAWAY_UID + (1 << 24):
                pids.append(int(d.name))
    return pids


def sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("adamba-sandbox-*")}


def assert_host_clean(dirs_before: set[str]) -> None:
    deadline = time.monotonic() + 2
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []
    assert sandbox_dirs() <= dirs_before  # the throwaway directory is gone


def test_a_normal_program():
    code = (
        "import numpy as np, os\n"
        "open('notes.txt', 'w').write('kept for this run')\n"
        "open('/tmp/t', 'w').write('x')\n"
        "print(np.arange(5).sum(), open('notes.txt').read(), os.getcwd())\n"
    )
    res = run_python(code)
    assert res.ok and res.error() is None
    assert res.output == "10 kept for this run /sandbox\n"
    assert run_python("import os; print(os.listdir('.'))").output == "['main.py']\n"  # nothing kept


def test_what_the_code_sees():
    code = (
        "import os\n"
        "print(os.getpid(), os.getuid())\n"
        "status = open('/proc/self/status').read()\n"
        "print([l.split()[1] for l in status.splitlines() if l.startswith(('CapEff', 'CapBnd', 'NoNewPrivs'))])\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n"
        "print(sorted(os.listdir('/dev')))\n"
        "print([p for p in ('/home', '/run', '/var', '/sys', '/tmp/.X11-unix', '/etc/shadow') if os.path.exists(p)])\n"
    )
    res = run_python(code)
    assert res.ok, res.output
    pid_uid, caps, procs, dev, visible = res.output.splitlines()
    assert pid_uid.split()[0] == "2"  # PID 1 is the jail: a PID namespace of its own
    if os.geteuid() == 0:
        assert int(pid_uid.split()[1]) >= THROWAWAY_UID
    assert caps == "['0000000000000000', '0000000000000000', '1']"
    assert procs == "['1', '2']"  # no host process is visible
    assert dev == "['fd', 'full', 'null', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'urandom', 'zero']"
    assert visible == "[]"


@pytest.mark.parametrize("where", ["test_dir", "venv", "/usr", "/etc", "/"])
def test_write_outside_the_directory(tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = {
        "test_dir": outside,
        "venv": Path(sys.prefix),
        "/usr": Path("/usr/lib"),
        "/etc": Path("/etc"),
    }.get(where, Path("/")) / f"adamba-pwned-{os.getpid()}"
    before = sandbox_dirs()
    res = run_python(f"open({str(target)!r}, 'w').write('pwned')\nprint('WROTE')")
    assert not res.ok and "WROTE" not in res.output
    assert any(
        e in res.error() for e in ("Read-only file system", "No such file or directory", "Permission denied")
    ), res.error()
    assert not target.exists()
    assert_host_clean(before)


def test_connect_to_the_hosts_loopback(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "daemon.sock"))
    unix.listen()
    abstract = socket.socket(socket.AF_UNIX)  # abstract unix sockets belong to a network namespace
    abstract.bind(f"\0adamba-test-{os.getpid()}")
    abstract.listen()
    try:
        for addr, family in (
            (("127.0.0.1", port), "socket.AF_INET"),
            (str(tmp_path / "daemon.sock"), "socket.AF_UNIX"),
            (f"\0adamba-test-{os.getpid()}", "socket.AF_UNIX"),
        ):
            code = f"import socket\ns = socket.socket({family})\ns.settimeout(2)\ns.connect({addr!r})\nprint('CONNECTED')"
            res = run_python(code)
            assert not res.ok and "CONNECTED" not in res.output
            assert any(
                e in res.error() for e in ("Network is unreachable", "No such file", "Connection refused")
            ), res.error()
        res = run_python("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)")
        assert "Network is unreachable" in res.error()
        for s in (server, unix, abstract):  # nothing is waiting to be accepted
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        server.close()
        unix.close()
        abstract.close()


def test_an_infinite_loop_hits_the_cpu_limit():
    t = time.monotonic()
    res = run_python("print('spinning', flush=True)\nwhile True:\n    pass", FAST)
    assert res.signal == signal.SIGXCPU and "CPU time limit of 1 s exceeded" in res.error()
    assert res.output == "spinning\n" and time.monotonic() - t < 3


def test_sleeping_code_hits_the_wall_clock():
    before = sandbox_dirs()
    res = run_python(
        "import subprocess, time\nsubprocess.Popen(['sleep', '60'])\nprint('start', flush=True)\ntime.sleep(60)",
        SandboxLimits(wall_s=1.5),
    )
    assert res.stopped == "wall" and res.error() == "stopped: wall-clock limit of 1.5 s exceeded"
    assert res.output == "start\n" and res.seconds < 3
    assert_host_clean(before)  # the background sleep died with the namespace


def test_a_4gib_allocation():
    res = run_python("x = bytearray(4 << 30)\nprint('GOT', len(x))")
    assert "GOT" not in res.output
    assert res.error().startswith("memory limit of 1024 MiB exceeded (MemoryError)")
    res = run_python(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))", SandboxLimits(memory_mb=256)
    )
    assert "memory limit of 256 MiB" in res.error()


def test_300_subprocesses():
    before = sandbox_dirs()
    code = "import subprocess\nps = [subprocess.Popen(['sleep', '30']) for _ in range(300)]\nprint('STARTED', len(ps))"
    res = run_python(code, FAST)
    assert "STARTED" not in res.output
    assert res.error().startswith("process limit of 16 reached"), res.error()
    assert res.seconds < 3
    assert_host_clean(before)


def test_a_fork_bomb_stays_in_its_pid_namespace():
    before = sandbox_dirs()
    bomb = (
        "import os\n"
        "if os.getpid() != 2:  # PID 1 is the jail: anywhere else, refuse to go off\n"
        "    raise SystemExit('not in a PID namespace of its own')\n"
        "os.system('bomb() { bomb | bomb & }; bomb')\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    t = time.monotonic()
    res = run_python(bomb, SandboxLimits(cpu_s=2, wall_s=3, output_bytes=1 << 20))
    assert "not in a PID namespace" not in res.output
    assert res.error() in (
        "stopped: wall-clock limit of 3 s exceeded",
        "stopped: output over the 1048576 byte limit",
    )
    assert time.monotonic() - t < 6
    assert_host_clean(before)
    assert run_python("print('still fine')").output == "still fine\n"


def test_huge_output_is_cut():
    for code in ("while True:\n    print('spam' * 100)", "print('x' * 10**8)"):
        res = run_python(code, FAST)
        assert res.truncated and res.stopped == "output"
        assert res.error() == "stopped: output over the 16384 byte limit"
        assert len(res.output) < 16384 + 100 and res.output.endswith("[output truncated at 16384 bytes]")


def test_file_size_and_scratch_space():
    res = run_python("open('big', 'wb').write(b'x' * (32 << 20))")
    assert "File too large" in res.error()
    res = run_python("for i in range(20):\n    open(f'f{i}', 'wb').write(b'x' * (8 << 20))")
    assert "No space left on device" in res.error()


def test_user_namespace_mode():
    """The isolation a non-root user gets (here driven as root, so its uid 0 is the host's)."""
    code = (
        "import os, socket\n"
        "print(os.getpid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "for p in ('/usr/pwned', '/pwned', '/proc/sys/kernel/hostname'):\n"
        "    try:\n"
        "        open(p, 'w')\n"
        "        print('WROTE', p)\n"
        "    except OSError as e:\n"
        "        print(e.strerror)\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 22), timeout=1)\n"
        "except OSError as e:\n"
        "    print(e.strerror)\n"
        "print(os.system('unshare -r true 2>/dev/null') != 0)\n"
    )
    res = run_python(code, mode="userns")
    assert res.ok, res.output
    assert res.output.splitlines() == [
        "2 0000000000000000",
        "Read-only file system",
        "Read-only file system",
        "Read-only file system",
        "Network is unreachable",
        "True",  # no nested user namespaces
    ]
    assert not Path("/usr/pwned").exists()


def test_fails_closed_without_unshare(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="needs util-linux `unshare`"):
        run_python("print(1)")


def fake_unshare(tmp_path: Path, body: str) -> None:
    exe = tmp_path / "unshare"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)


def test_fails_closed_when_unshare_is_refused(tmp_path, monkeypatch):
    fake_unshare(tmp_path, "echo 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SandboxUnavailable, match="Operation not permitted.*never runs code unsandboxed"):
        run_python("print(1)")


def test_fails_closed_when_unshare_isolates_nothing(tmp_path, monkeypatch):
    """An `unshare` that runs its command without new namespaces: the jail notices and refuses,
    before any mount, and the code never runs."""
    fake_unshare(tmp_path, 'while [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    marker = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable, match="not in a new PID namespace"):
        run_python(f"open({str(marker)!r}, 'w').write('ran')")
    assert not marker.exists()


def test_the_python_tool():
    tools = default_registry(FAST)
    assert tools.dispatch({"name": "python", "arguments": {"code": "print(6 * 7)"}}).text() == "42\n"
    res = tools.call("python", {"code": "print('before')\n1/0"})
    assert res.error == "python: exit status 1: ZeroDivisionError: division by zero"
    assert res.text().startswith("before\nTraceback") and res.text().endswith(f"error: {res.error}")
    res = tools.call("python", {"code": "x = 1\n" * 20_000})
    assert "over the 100000 byte limit" in res.error
    assert shutil.which("unshare")  # sanity: the tests above ran isolated, not skipped
