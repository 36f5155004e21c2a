"""Child processes: a guest's fork is a fork of emsan itself, its exec a re-exec of emsan.

A forked child is a real host process that continues the same emulation from the same
instruction, with everything inherited as the kernel's fork gives it: guest memory, registers,
descriptors (host dups, so offsets and pipes are shared) and the sanitizer's state (shadow,
quarantine, depot; all of it in private host memory, copied on write). Its pid is its host pid, so
wait4, kill and process groups are the host's own calls, with the host kernel's statuses.

What emsan itself holds that does not survive a fork as it must is rebuilt in the child: the
waker thread (host threads do not survive fork) and emsan's own read-only files (pyelftools reads
with seek+read; an open file description shared with the parent would interleave their offsets).
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
import sys
import threading

CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_PIDFD, CLONE_PTRACE, CLONE_VFORK, CLONE_PARENT, CLONE_THREAD = 0x1000, 0x2000, 0x4000, 0x8000, 0x10000
CLONE_SETTLS, CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID = 0x80000, 0x100000, 0x200000
CLONE_CHILD_SETTID, CLONE_NEWNS_ALL = 0x1000000, 0x7E020000      # the CLONE_NEW* namespaces
SIGCHLD = 17
WNOHANG, WUNTRACED, WEXITED, WCONTINUED, WNOWAIT = 1, 2, 4, 8, 0x01000000
WAIT_EXTRA = 0x20000000 | 0x40000000 | 0x80000000        # __WNOTHREAD, __WALL, __WCLONE

# Signals another process may send that reach the guest's own handler (the rest are emsan's:
# faults, the timers emsan emulates, SIGPIPE that emsan raises itself on EPIPE, SIGCHLD below).
FORWARDED = set(range(1, 32)) - {9, 19, 4, 5, 7, 8, 11, 31, 13, 14, 26, 27, 17}


class ChildEvents:
    """Signals from the host (SIGCHLD; those the guest has handlers for), turned into a wake-up a
    blocking call can poll, and into the guest's own signals at its next system call."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.seen = False
        self.forwarded: list[int] = []
        signal.signal(signal.SIGCHLD, self.on_signal)
        self._wake_on_signal()

    def _wake_on_signal(self) -> None:
        # Python runs a handler only between bytecodes: a signal that lands just before a poll()
        # would wait for the next one. The C-level handler's write to the wake-up fd cannot be missed.
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)

    def on_signal(self, signum, frame) -> None:
        if signum == signal.SIGCHLD:
            self.seen = True
        else:
            self.forwarded.append(signum)
        try:
            os.write(self.write_fd, b"c")
        except OSError:
            pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 256):
                pass
        except OSError:
            pass

    def renew(self) -> None:
        """In a forked child: a wake-up pipe of its own, and nothing of the parent's pending."""
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.seen = False
        self.forwarded = []
        self._wake_on_signal()


def events(p) -> ChildEvents:
    if p.child_events is None:
        p.child_events = ChildEvents()
    return p.child_events


def pass_host_signals(p) -> None:
    """At the end of each system call: a child changed state, or another process signalled."""
    ev = p.child_events
    if ev is None:
        return
    if ev.seen:
        ev.seen = False
        if p.signals.actions.get(SIGCHLD, (0,))[0] > 1:        # a handler (not SIG_DFL, SIG_IGN)
            p.signals.raise_signal(SIGCHLD, code=1)        # CLD_EXITED
    while ev.forwarded:
        p.signals.raise_signal(ev.forwarded.pop(0), code=0)    # SI_USER


def mirror(p, sig: int) -> None:
    """The host's disposition of `sig` follows the guest's: ignored, default, or caught and
    passed to the guest's handler (kill from another process then does what it does natively)."""
    from emsan.os.linux.signals import SIG_DFL, SIG_IGN
    if sig not in FORWARDED:
        return
    handler = p.signals.actions.get(sig, (SIG_DFL,))[0]
    host = signal.SIG_IGN if handler == SIG_IGN else signal.SIG_DFL if handler == SIG_DFL else events(p).on_signal
    try:
        signal.signal(sig, host)
    except (OSError, ValueError):
        pass


def host_signal_interrupts(p, drain: bool = True) -> bool:
    """Pass the host's signals to the guest (after the wake-up pipe woke a blocking call, which
    drains it; a wait loop drains it itself, before it looks for a child); True if one of them
    ends the call (-EINTR: a handler without SA_RESTART; with it, the call goes on and the handler
    runs when it returns, as a restarted call would look)."""
    from emsan.os.linux.signals import SA_RESTART
    if drain:
        p.child_events.drain()
    pass_host_signals(p)
    sigs = p.signals
    return any(not sigs.mask >> (s - 1) & 1 and sigs.would_interrupt(s)
               and not sigs.actions.get(s, (0, 0))[1] & SA_RESTART for s in sigs.pending)


def wait_for_signal(p) -> bool:
    """pause/sigsuspend when no timer of the guest's can end it: a process that has children or
    catches signals from others waits for them (False: nothing could ever come)."""
    if p.child_events is None and not p.is_child:
        return False
    ev = events(p)
    while True:
        ev.drain()
        if host_signal_interrupts(p, drain=False) or p.signals.deliverable() or _block(p, ev) is not None:
            return True


def wake_fd(p) -> int | None:
    """The descriptor a blocking call also polls: readable when a host signal came."""
    return None if p.child_events is None else p.child_events.read_fd


# --- fork ------------------------------------------------------------------------------------------
def fork(p, flags: int, stack: int = 0, parent_tid: int = 0, child_tid: int = 0, tls: int = 0) -> int:
    """clone without CLONE_THREAD: the child's pid in the parent, 0 in the child."""
    if flags & CLONE_THREAD or flags & CLONE_SIGHAND and not flags & CLONE_VM:
        return -errno.EINVAL
    if flags & (CLONE_NEWNS_ALL | CLONE_PIDFD | CLONE_PTRACE):
        return -errno.EPERM if flags & CLONE_NEWNS_ALL else -errno.EINVAL
    events(p)
    sys.stdout.flush()
    sys.stderr.flush()
    # CLONE_VFORK: the parent waits until the child execs or exits; a close-on-exec pipe tells.
    vfork_r, vfork_w = os.pipe2(os.O_CLOEXEC) if flags & CLONE_VFORK else (-1, -1)
    try:
        pid = os.fork()
    except OSError as e:
        for fd in (vfork_r, vfork_w):
            if fd >= 0:
                os.close(fd)
        return -(e.errno or errno.EAGAIN)
    if pid == 0:
        if vfork_r >= 0:
            os.close(vfork_r)
        _in_child(p, flags, stack, child_tid, tls, vfork_w)
        return 0
    if flags & CLONE_PARENT_SETTID and parent_tid:
        p.user.put_u32(parent_tid, pid)
    if vfork_r >= 0:
        os.close(vfork_w)
        while True:
            try:
                if not os.read(vfork_r, 1):
                    break
            except InterruptedError:
                continue
        os.close(vfork_r)
    return pid


def _in_child(p, flags: int, stack: int, child_tid: int, tls: int, vfork_w: int) -> None:
    p.pid = os.getpid()
    p.is_child = True
    if p.vfork_fd >= 0:                       # a vfork child's own children do not hold its parent
        os.close(p.vfork_fd)
    p.vfork_fd = vfork_w
    if p.child_events is not None:     # the parent's children and signals are not the child's
        p.child_events.renew()
    _restart_waker(p.machine)
    sigs = p.signals                   # no pending signals and no timers are inherited (fork(2))
    sigs.pending.clear()
    sigs.pending_code.clear()
    sigs.alarm_at = sigs.alarm_interval = 0.0
    _reopen_own_files({f.host for f in p.fds.values()} | {p.cwd_fd, vfork_w})
    m = p.machine
    if stack:
        m.sp = stack
    if flags & CLONE_SETTLS:
        m.set_reg("fs_base" if p.arch.name == "x86_64" else "tpidr_el0", tls)
    if flags & CLONE_CHILD_SETTID and child_tid:
        p.user.put_u32(child_tid, p.pid)
    if flags & CLONE_CHILD_CLEARTID:
        p.clear_child_tid = child_tid
    for fn in p.after_fork:
        fn()


def _restart_waker(machine) -> None:
    """The parent's waker thread is gone; its lock may have been held when the fork came."""
    w = machine.waker
    w.cond = threading.Condition()
    w.thread = None
    w.tick_at = w.stop_at = None


def _reopen_own_files(guest_hosts: set[int]) -> None:
    """emsan's own read-only regular files get an open file description of their own, at the
    same offset, under the same number (the guest's descriptors stay shared, as fork shares them)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in guest_hosts or fd < 3:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
                continue
            new = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            os.lseek(new, os.lseek(fd, 0, os.SEEK_CUR), os.SEEK_SET)
            os.dup2(new, fd, inheritable=os.get_inheritable(fd))
            os.close(new)
        except OSError:
            continue


# --- wait ------------------------------------------------------------------------------------------
def _block(p, ev: ChildEvents) -> str | None:
    """Wait for a child's state change: None, or why the wait ended first ("signal", "timeout")."""
    from emsan.os.linux.syscalls.events import wait_limit
    from emsan.os.linux.threads import would_block
    import time
    if would_block(p, "wait4", {ev.read_fd: select.POLLIN}, None) == 0:
        return None                    # among threads: parks, or looks again at once
    limit, cut_by = wait_limit(p, None)
    if cut_by == "alarm" and not p.signals.would_interrupt(14):
        limit, cut_by = (None, "") if p.deadline is None else \
            (max(0, int((p.deadline - time.monotonic()) * 1000)), "timeout")
    poller = select.poll()
    poller.register(ev.read_fd, select.POLLIN)
    if poller.poll(limit):
        return None                    # the caller looks again (a child, then the signals)
    if cut_by == "timeout":
        p.machine.stop("timeout")
        return "timeout"
    if cut_by == "alarm":
        p.signals.check_alarm()
        if p.signals.pending:
            return "signal"
    return None


def wait4(p, pid: int, options: int, rusage: int):
    """(pid, status) as the host's wait4 gives them, or -errno; blocking honours the guest's
    timers and --timeout."""
    if options & ~(WNOHANG | WUNTRACED | WCONTINUED | WAIT_EXTRA):
        return -errno.EINVAL
    ev = events(p)
    while True:
        ev.drain()
        try:
            cpid, status, ru = os.wait4(pid, options | WNOHANG)
        except ChildProcessError:
            return -errno.ECHILD
        except OSError as e:
            return -(e.errno or errno.EINVAL)
        if cpid or options & WNOHANG:
            if cpid and rusage:
                from emsan.os.linux.structs import pack_rusage
                p.user.write(rusage, pack_rusage(ru))
            return cpid, status
        if host_signal_interrupts(p, drain=False) or _block(p, ev) is not None:
            return -errno.EINTR


def waitid(p, idtype: int, ident: int, options: int):
    """os.waitid's result (None: WNOHANG and nothing yet), or -errno."""
    if options & ~(WNOHANG | WUNTRACED | WEXITED | WCONTINUED | WNOWAIT | WAIT_EXTRA) or \
            not options & (WUNTRACED | WEXITED | WCONTINUED) or idtype > 3:
        return -errno.EINVAL
    ev = events(p)
    while True:
        ev.drain()
        try:
            got = os.waitid(idtype, ident, options | WNOHANG)
        except ChildProcessError:
            return -errno.ECHILD
        except OSError as e:
            return -(e.errno or errno.EINVAL)
        if got is not None or options & WNOHANG:
            return got
        if host_signal_interrupts(p, drain=False) or _block(p, ev) is not None:
            return -errno.EINTR


# --- signals to other processes ----------------------------------------------------------------
def send_signal(p, target: int, sig: int) -> int:
    """kill(2) to another process or a process group: the host's kill. When the group holds the
    sender, the host signal is caught on its way (blocked, then taken) and raised in the guest."""
    if target == p.pid:
        raise AssertionError("the caller handles the process itself")
    if target > 0:
        os.kill(target, sig)
        return 0
    group = os.getpgid(0) if target == 0 else -target
    if group != os.getpgid(0) or sig == 0:
        os.killpg(group, sig)
        return 0
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        os.killpg(group, sig)           # the sender goes the same way
        return 0
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
    try:
        os.killpg(group, sig)
        signal.sigtimedwait({sig}, 0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    p.signals.raise_signal(sig, code=0)      # SI_USER
    return 0
