"""The inside half of the python tool's sandbox: runs as PID 1 of fresh namespaces, builds a
private root filesystem, drops every privilege, runs the code and reports how it ended.

`sandbox.py` starts this file as `unshare --mount --net --pid --ipc --uts --fork --kill-child
[--user --map-root-user] python -I -S jail.py CONFIG STATUS_FD`, with the code on stdin. It uses
the standard library only (it runs with -I -S: no site-packages, no environment, and no import of
adamba) and talks back through STATUS_FD: one JSON line per event, {"error": ...} when isolation
could not be set up (the code never ran), else {"ready": true} and then {"exit": n} or
{"signal": n} with the CPU seconds the code used.

Why each step is here (the process may be real root: CI runs as root):

- The namespace check comes first. If `unshare` did not in fact give us new mount, network, PID,
  IPC and UTS namespaces (a broken or substituted binary), every mount below would hit the host;
  the jail refuses and the code never runs (fail closed).
- The root is a fresh tmpfs with only what Python needs bound in **read-only** (/usr and the
  /bin, /lib* links, a few /etc files, the interpreter's prefix and venv); read-only is per mount,
  so it holds even against uid 0 and against file owners. /home, /root, /tmp, /run (unix
  sockets of host daemons), /sys and the rest of /dev and /etc are simply absent. The host's own
  root is detached after `pivot_root`, so there is no path back to it.
- Writable space is one size-capped tmpfs (the working directory /sandbox, /tmp, /dev/shm share
  it); it lives in memory of this mount namespace and vanishes with it, so nothing written
  reaches the host disk.
- /proc is this PID namespace's own, mounted read-only: the code sees only its own processes and
  cannot write /proc/sys or /proc/sysrq-trigger even as uid 0.
- /dev holds null, zero, full, random and urandom only: no disks, no terminals.
- The code runs in a child with rlimits (CPU seconds, address space, processes, file size, open
  files, no core dumps), no_new_privs, an empty capability bounding set and, when the host runs
  as root, a throwaway uid/gid that owns nothing on the host, so RLIMIT_NPROC binds (the kernel
  exempts uid 0 from it) and file permissions apply. Under a user namespace (non-root hosts) it
  stays the namespace's uid 0, which is the user's own uid outside, without capabilities, and
  nested user namespaces are switched off. It gets a new session and an empty session keyring
  (the kernel keys of the host process are not inherited).
- When the code's main process ends this init exits, and the kernel kills everything left in
  the PID namespace: background processes and fork bombs die with it.
"""

import ctypes
import errno
import json
import os
import re
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = (
    1024,
    2048,
    4096,
    16384,
    1 << 18,
    1 << 21,
)
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
# syscall numbers libc has no wrapper for: (pivot_root, keyctl) by machine
SYSCALLS = {
    "x86_64": (155, 250),
    "aarch64": (41, 219),
    "riscv64": (41, 219),
    "ppc64le": (203, 355),
    "s390x": (217, 280),
}
KEYCTL_JOIN_SESSION_KEYRING = 1
# statvfs flags a bind remount must carry over (the kernel refuses to clear locked ones)
ST_TO_MS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}
DEVICES = ("null", "zero", "full", "random", "urandom")
NAMESPACES = ("mnt", "net", "ipc", "uts")

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class JailError(Exception):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise JailError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(src, target, fstype, flags, data=None) -> None:
    _check(libc.mount(_b(src), _b(target), _b(fstype), flags, _b(data)), f"mount {fstype or src} on {target}")


def remount_ro(target: str) -> None:
    """Make the mount at `target` read-only (and nosuid, nodev), keeping the flags it had."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    have = os.statvfs(target).f_flag
    flags |= sum(ms for st, ms in ST_TO_MS.items() if have & st)
    mount(None, target, None, flags)


def submounts(target: str) -> list[str]:
    """Mount points at or below `target` (this mount namespace's view)."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), line.split()[4])
            point = os.fsdecode(raw)
            if point == target or point.startswith(target.rstrip("/") + "/"):
                out.append(point)
    return out


def bind_ro(src: str, dst: str) -> None:
    """Bind `src` (a file or a directory tree) at `dst`, read-only all the way down."""
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    for point in submounts(dst):
        remount_ro(point)


class Placer:
    """Makes host paths visible at the same place under `root`: symlinks as symlinks (with their
    targets placed too), everything else as a read-only bind; a path under one already bound is
    left alone."""

    def __init__(self, root: str):
        self.root, self.bound = root, []

    def covered(self, path: str) -> bool:
        return any(path == b or path.startswith(b.rstrip("/") + "/") for b in self.bound)

    def place(self, path: str) -> None:
        inside = self.root + path
        if self.covered(path) or os.path.lexists(inside) and not os.path.isdir(inside):
            return
        if os.path.islink(path):
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            link = os.readlink(path)
            os.symlink(link, inside)
            self.place(os.path.normpath(os.path.join(os.path.dirname(path), link)))
        elif os.path.exists(path):
            bind_ro(path, inside)
            self.bound.append(path)


def check_isolated(cfg: dict) -> None:
    """Refuse unless we really are in new namespaces: otherwise the mounts below would hit the host."""
    if os.getpid() != 1:
        raise JailError("not in a new PID namespace")
    for ns in NAMESPACES + (("user",) if cfg["userns"] else ()):
        if os.stat(f"/proc/self/ns/{ns}").st_ino == cfg["host_ns"][ns]:
            raise JailError(f"not in a new {ns} namespace")


def build_root(cfg: dict, code: bytes) -> None:
    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    # one size-capped tmpfs for everything writable, mounted in three places; first, so that the
    # read-only paths below stay visible when they live under /tmp (a checkout in /tmp/...)
    scratch = root + "/.scratch"
    os.makedirs(scratch)
    mount(
        "tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['scratch_bytes']},nr_inodes=16k,mode=755"
    )
    uid, gid = cfg["uid"], cfg["gid"]
    for sub, mode, inside in (
        ("work", 0o700, "/sandbox"),
        ("tmp", 0o1777, "/tmp"),
        ("shm", 0o1777, "/dev/shm"),
    ):
        os.mkdir(f"{scratch}/{sub}")
        os.chmod(f"{scratch}/{sub}", mode)
        os.chown(f"{scratch}/{sub}", uid, gid)
        os.makedirs(root + inside, exist_ok=True)
        mount(f"{scratch}/{sub}", root + inside, None, MS_BIND)
    with open(f"{root}/sandbox/main.py", "wb") as f:
        f.write(code)
    os.chown(f"{root}/sandbox/main.py", uid, gid)
    _check(libc.umount2(_b(scratch), MNT_DETACH), "umount scratch")
    os.rmdir(scratch)
    placer = Placer(root)
    paths = cfg["ro"] + ["/etc/" + name for name in cfg["etc"]]
    for path in sorted(paths, key=os.path.islink):  # real directories first, then links into them
        placer.place(path)
    os.makedirs(root + "/etc", exist_ok=True)
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    for name in DEVICES:
        open(f"{dev}/{name}", "w").close()
        mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "fd/0"), ("stdout", "fd/1"), ("stderr", "fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)

    remount_ro(root)

    os.chdir(root)
    _check(libc.syscall(syscall_number(0), b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detach the host root")
    os.chdir("/")
    for probe in ("/usr/.adamba-probe", "/.adamba-probe"):  # the host's files must not be writable
        try:
            open(probe, "w").close()
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
        else:
            os.unlink(probe)
            raise JailError(f"{probe} is writable after setup")


def syscall_number(i: int) -> int:
    machine = os.uname().machine
    if machine not in SYSCALLS:
        raise JailError(f"unknown machine {machine!r}: no pivot_root number")
    return SYSCALLS[machine][i]


def disable_user_namespaces() -> None:
    """Under our own user namespace its limits are ours to set: no nested ones for the code."""
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def run_child(cfg: dict, status: int) -> None:
    """In the forked child: limits, privileges dropped, exec the code. Never returns."""
    try:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.closerange(3, status)
        os.closerange(status + 1, 1 << 16)
        os.chdir("/sandbox")
        lim = cfg["limits"]
        for name, soft, hard in (
            ("RLIMIT_CPU", lim["cpu_s"], lim["cpu_s"] + 1),
            ("RLIMIT_AS", lim["memory_bytes"], lim["memory_bytes"]),
            ("RLIMIT_NPROC", lim["processes"], lim["processes"]),
            ("RLIMIT_FSIZE", lim["file_bytes"], lim["file_bytes"]),
            ("RLIMIT_NOFILE", lim["open_files"], lim["open_files"]),
            ("RLIMIT_CORE", 0, 0),
        ):
            resource.setrlimit(getattr(resource, name), (soft, hard))
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
        uid, gid = cfg["uid"], cfg["gid"]
        if not cfg["userns"]:  # a user namespace has no supplementary groups to drop (setgroups is denied)
            os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        os.setsid()  # its own session and process group, apart from the jail
        # a new anonymous session keyring: the host's (inherited) keys are not the code's to read
        if (
            libc.syscall(syscall_number(1), KEYCTL_JOIN_SESSION_KEYRING, None) < 0
            and ctypes.get_errno() != errno.ENOSYS
        ):
            raise JailError(f"new session keyring: {os.strerror(ctypes.get_errno())}")
        os.execve(cfg["python"], [cfg["python"], "-E", "-s", "-u", "-B", "main.py"], cfg["env"])
    except BaseException as e:  # noqa: BLE001 - report anything, run nothing
        os.write(status, (json.dumps({"error": f"start the code: {e}"}) + "\n").encode())
    finally:
        os._exit(127)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    status = int(sys.argv[2])
    os.set_inheritable(status, False)  # the code never gets it

    def report(**kw) -> None:
        os.write(status, (json.dumps(kw) + "\n").encode())

    try:
        code = sys.stdin.buffer.read()
        check_isolated(cfg)
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")  # if memory runs out, the sandbox goes first
        if cfg["userns"]:
            disable_user_namespaces()
        build_root(cfg, code)
    except (OSError, JailError, ValueError) as e:
        report(error=str(e))
        sys.exit(1)
    report(ready=True)  # isolation is in place; from here on a failure is the code's
    child = os.fork()
    if child == 0:
        run_child(cfg, status)
    while True:  # PID 1 reaps every orphan until the code's main process ends
        try:
            pid, st, usage = os.wait4(-1, 0)
        except InterruptedError:
            continue
        if pid == child:
            break
    cpu = round(usage.ru_utime + usage.ru_stime, 3)
    if os.WIFSIGNALED(st):
        report(signal=os.WTERMSIG(st), cpu_s=cpu)
    else:
        report(exit=os.WEXITSTATUS(st), cpu_s=cpu)
    # exiting as PID 1 makes the kernel kill whatever the code left running


if __name__ == "__main__":
    main()
