"""execve: which image a guest path names (fs/exec.c and fs/binfmt_script.c's checks, with their
errnos), and the hand-over of the guest's descriptors when emsan's host process is replaced by
the new image's (emsan again, or the program itself with --no-follow-exec)."""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import struct

from emsan.os.linux import procfs

BINPRM_BUF_SIZE = 256          # the bytes of a file the kernel reads to choose its format
MAX_INTERP_DEPTH = 4           # binfmt_script's limit on #! interpreters that are scripts (ELOOP beyond)
MAX_ARG_STRINGS = 0x7FFFFFFF
ARG_MAX = 2 << 20              # the guest's argv + envp (a quarter of the 8 MiB stack, as Linux allows)
ELF_MACHINES = {"x86_64": 62, "arm64": 183}


def string_array(p, addr: int, budget: list[int]) -> list[str]:
    """A NULL-terminated array of guest strings (argv, envp); E2BIG past ARG_MAX in all."""
    out: list[str] = []
    if not addr:
        return out
    while True:
        ptr = p.user.u64(addr + 8 * len(out))
        if not ptr:
            return out
        s = p.user.cstr(ptr, ARG_MAX, errno.E2BIG)
        budget[0] -= len(s) + 1 + 8
        if budget[0] < 0 or len(out) >= MAX_ARG_STRINGS:
            raise OSError(errno.E2BIG, "argument list too long")
        out.append(s.decode(errors="surrogateescape"))


def host_path(p, dirfd: int, gpath: str, follow: bool = True) -> str:
    """The absolute host path of an executable the guest names."""
    found = p.lookup(dirfd, gpath, follow)
    if isinstance(found, procfs.Node):
        raise OSError(errno.EACCES, "not an executable")
    if isinstance(found, tuple) and found and found[0] == "fd":
        return os.readlink(f"/proc/self/fd/{found[1].host}")
    dfd, path = found
    if dfd is not None and not path.startswith("/"):
        path = os.path.join(os.readlink(f"/proc/self/fd/{dfd}"), path)
    return os.path.abspath(path)


def resolve(p, guest: str, path: str, argv: list[str], depth: int = 0) -> tuple[str, list[str]]:
    """(host path of the ELF image to run, its argv) for a guest execve of `guest` (host file `path`),
    following #! lines; OSError with the errno Linux gives otherwise."""
    st = os.stat(path)                        # ENOENT, ENOTDIR, ELOOP, EACCES on the way
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise OSError(errno.EACCES, "not an executable file")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, BINPRM_BUF_SIZE, 0)
    finally:
        os.close(fd)
    if head.startswith(b"#!"):
        if depth >= MAX_INTERP_DEPTH:
            raise OSError(errno.ELOOP, "too many levels of interpreters")
        line = head[2:].split(b"\n", 1)[0] if b"\n" in head else head[2:]
        line = line.replace(b"\t", b" ").strip(b" ")
        if not line:
            raise OSError(errno.ENOEXEC, "empty #! line")
        interp, _, arg = line.partition(b" ")
        arg = arg.strip(b" ")
        interp_s = interp.decode(errors="surrogateescape")
        new_argv = [interp_s, *([arg.decode(errors="surrogateescape")] if arg else []), guest,
                    *argv[1:]]
        return resolve(p, interp_s, host_path(p, -100, interp_s), new_argv, depth + 1)
    if head[:4] != b"\x7fELF":
        raise OSError(errno.ENOEXEC, "not an executable format")
    if len(head) < 20 or head[4] != 2 or struct.unpack_from("<H", head, 18)[0] != ELF_MACHINES[p.arch.name] \
            or struct.unpack_from("<H", head, 16)[0] not in (2, 3):
        raise OSError(errno.ENOEXEC, "an ELF file of another architecture or class")
    return path, argv


def hand_over_fds(p, keep_open: list[int]) -> list[int]:
    """Put each guest descriptor that survives exec (not close-on-exec) at its own number in the
    host process, inheritable; `keep_open` (emsan's descriptors the next image needs) are moved
    above them and returned at their new numbers. The point of no return: the guest's
    descriptor table is the host's from here on."""
    keep = {n: f for n, f in p.fds.items() if not f.cloexec}
    base = max([*keep, 2]) + 1
    tmp = {n: fcntl.fcntl(f.host, fcntl.F_DUPFD_CLOEXEC, base) for n, f in keep.items()}
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base) for fd in keep_open]
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for n in (0, 1, 2):             # the host's standard descriptors are the guest's, or /dev/null
        if n not in keep:
            os.dup2(null, n, inheritable=True)
    os.close(null)
    for n, t in tmp.items():
        os.dup2(t, n, inheritable=True)
        os.close(t)
    for fd in moved:
        os.set_inheritable(fd, True)
    return moved


def host_signal_state(p) -> None:
    """The dispositions and mask a native image inherits: ignored signals stay ignored, the
    rest default, and the guest's mask (Python's own SIG_IGN for SIGPIPE must not leak)."""
    from emsan.os.linux.signals import SIG_IGN
    for sig in range(1, 32):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        ignored = p.signals.actions.get(sig, (0,))[0] == SIG_IGN
        try:
            signal.signal(sig, signal.SIG_IGN if ignored else signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, {s for s in range(1, 65) if p.signals.mask >> (s - 1) & 1
                                                and s not in (signal.SIGKILL, signal.SIGSTOP)})


def ignored_mask(p) -> int:
    from emsan.os.linux.signals import SIG_IGN
    return sum(1 << (s - 1) for s, act in p.signals.actions.items() if act[0] == SIG_IGN)


def env_memfd(envp: list[str]) -> int:
    """The new image's environment, NUL-separated in a memfd (never in emsan's own environment:
    a guest's LD_PRELOAD or PYTHONPATH is none of the host Python's business)."""
    fd = os.memfd_create("emsan-env", os.MFD_CLOEXEC)
    os.write(fd, b"".join(e.encode(errors="surrogateescape") + b"\0" for e in envp))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_env(fd: int) -> list[str]:
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    return [e.decode(errors="surrogateescape") for e in data.split(b"\0") if e]
