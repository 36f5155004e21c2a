"""What a session does when its guest forks or execs.

Fork: the child is emsan's forked host process; its reports say its own pid, and with --json they
go to FILE.PID (written only if the child reports; the first process keeps FILE), as Valgrind's
--log-file=%p does. Exec: the host process is replaced, keeping its pid, by `python -m emsan run`
with the same options and the new image (Valgrind's --trace-children=yes), or with
--no-follow-exec by the image itself, run natively (fast, but nothing is checked in it or in
anything it starts).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from emsan.os.linux import execve

HOST_MACHINE = os.uname().machine


def attach(session) -> None:
    p = session.process
    p.exec_image = lambda path, argv, envp: exec_image(session, path, argv, envp)
    p.after_fork.append(lambda: forked(session))
    p.is_child = session.opts.is_child
    opts = session.opts
    if opts.json_append and opts.json_path:
        opts.json_lazy = not os.path.exists(opts.json_path)


def forked(session) -> None:
    """In a new child: its own JSON file and reports."""
    opts = session.opts
    if opts.json_path:
        opts.json_base = opts.json_base or opts.json_path
        opts.json_path = f"{opts.json_base}.{os.getpid()}"
        opts.json_append = True
    if opts.sarif_path:
        opts.sarif_path = f"{opts.sarif_path}.{os.getpid()}"
    opts.json_lazy = True
    san = session.sanitizer
    if san is not None and hasattr(san, "reports"):
        san.reports = []
        san.seen = set()
        if getattr(san, "leaks", None) is not None:
            san.leaks = None      # no leak scan at a forked child's end (LeakSanitizer's at _exit)


def load_reports(path: str) -> tuple[list[dict], bool]:
    """The reports a JSON file already holds (the image before exec wrote them), and whether
    the file exists."""
    try:
        with open(path) as f:
            return list(json.load(f).get("reports", [])), True
    except FileNotFoundError:
        return [], False
    except (OSError, ValueError, AttributeError):
        return [], True


def exec_image(session, path: str, argv: list[str], envp: list[str]) -> None:
    """Replace this host process with the new image; returns only when it cannot start (before
    the point of no return, with the guest's state intact)."""
    p, opts = session.process, session.opts
    if not opts.follow_exec and HOST_MACHINE not in ({"x86_64"} if p.arch.name == "x86_64" else {"aarch64", "arm64"}):
        raise OSError(8, "exec format error")       # ENOEXEC: a native run of a foreign image
    if p.cwd_node is not None:
        raise OSError(13, "working directory in the guest's /proc")
    sys.stdout.flush()
    sys.stderr.flush()
    if opts.json_path or opts.sarif_path:    # the reports so far (no leak scan: exec is not an exit)
        from emsan.session.outputs import write_outputs
        write_outputs(opts, session.reports, warn=p.warn_once, extra=session.json_extra)
    os.fchdir(p.cwd_fd)
    if not opts.follow_exec:
        env = dict(e.encode(errors="surrogateescape").split(b"=", 1) for e in envp if "=" in e)
        execve.hand_over_fds(p, [])
        execve.host_signal_state(p)
        _exec(lambda: os.execve(path, argv or [path], env))
    env_fd = execve.env_memfd(envp)
    try:
        log_fd = sys.stderr.fileno()
    except (OSError, ValueError, AttributeError):
        log_fd = 2
    guest_fds = sorted(n for n, f in p.fds.items() if not f.cloexec)
    env_fd, log_fd = execve.hand_over_fds(p, [env_fd, log_fd])
    timeout = None if p.deadline is None else max(0.001, p.deadline - time.monotonic())
    cmd = [sys.executable, "-m", "emsan", "run", *opts.to_argv(timeout), "--argv0", argv[0] if argv else path,
           "--env-fd", str(env_fd), "--guest-fds", ",".join(map(str, guest_fds)), "--log-fd", str(log_fd),
           "--signals", f"{execve.ignored_mask(p)}:{p.signals.mask}", *(["--child"] if p.is_child else []),
           "--", path, *argv[1:]]
    _exec(lambda: os.execv(sys.executable, cmd))


def _exec(call) -> None:
    """Past the point of no return: a failure is the end of the process, as the kernel's
    SIGKILL after a failed exec is."""
    try:
        call()
    except (OSError, ValueError, TypeError) as e:
        os.write(2, f"emsan: exec failed after the point of no return: {e}\n".encode())
    os._exit(127)


def adopt_signals(p, ignored: int, mask: int) -> None:
    """Dispositions and mask a new image inherits: ignored stays ignored, handled becomes default."""
    from emsan.os.linux.signals import SIG_IGN
    for sig in range(1, 65):
        if ignored >> (sig - 1) & 1:
            p.signals.actions[sig] = (SIG_IGN, 0, 0, 0)
    p.signals.mask = mask


def die_like(sig: int) -> None:
    """A child killed by a signal: emsan dies of the same signal, so its parent's wait4 sees what
    it would see natively (no core file of emsan itself)."""
    import resource
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    except (OSError, ValueError):
        pass


def leave(status: int) -> None:
    """A child's end: its output flushed, then out without the interpreter's finalization (a
    tenth of a second of tearing down modules and the engine that the process's exit does anyway)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(status & 0xFF)
