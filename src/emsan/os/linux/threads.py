"""Threads: clone(CLONE_THREAD) runs in the same engine, scheduled by emsan.

All threads of the guest share one Unicorn engine, one address space and one sanitizer; each has
its registers (an engine context: thread pointer included, x86-64 FS base or arm64 TPIDR_EL0), its
signal mask, pending signals, alternate stack and handler frames, its shadow call stack, and the
kernel's per-thread words (clear_child_tid, the robust list). The scheduler is a deterministic
round-robin: a thread runs until it has used its slice of translated blocks (counted in native
code, native/sched.c) or until it blocks; the next runnable thread in creation order goes next.
A run with --seed therefore interleaves the same way every time its inputs are the same.

A system call that would block the host (a futex wait, a read on an empty pipe, poll, nanosleep,
wait4...) parks the thread instead (Park): futex waits and sleeps carry their result, the
others are restarted from their instruction when what they wait for is ready (as the kernel
restarts a call after -ERESTARTSYS). Only when every thread is parked does emsan block in the
host: one poll on every descriptor a thread waits for, until the earliest timeout, timer or
--timeout. When nothing at all could wake any thread, the run ends as a deadlock.
"""
from __future__ import annotations

import errno
import select
from contextlib import contextmanager
import time
from dataclasses import field

from emsan.lazyclass import dataclass

DEFAULT_SLICE = 20_000          # blocks per slice (~100-200k instructions, a millisecond or so)
FUTEX_BITSET_ANY = 0xFFFFFFFF
ROBUST_LIST_LIMIT = 2048        # the kernel's ROBUST_LIST_LIMIT: entries walked at thread exit
MAX_THREADS = 1024              # live threads; clone fails with EAGAIN past it, as at the kernel's threads-max


class Park(BaseException):
    """Raised by a system call that must wait while other threads could run (not an Exception:
    the handlers' own error guards let it through)."""

    def __init__(self, wait: "Wait"):
        super().__init__(wait.what)
        self.wait = wait


@dataclass
class Wait:
    what: str                                 # for the deadlock message: "futex", "read", "poll"...
    until: float | None = None                # time.monotonic() when the wait times out
    restart: bool = False                     # run the system call again when woken
    fds: dict[int, int] = field(default_factory=dict)    # host fd -> poll events (restart waits)
    addr: int = 0                             # futex word
    bitset: int = FUTEX_BITSET_ANY
    timeout_ret: int = -errno.ETIMEDOUT       # the call's value when `until` passes (not restarts)
    sigset: int = 0                           # rt_sigtimedwait: signals (blocked ones too) that end it


@dataclass
class Thread:
    tid: int
    comm: str = ""                            # its name (prctl PR_SET_NAME, pthread_setname_np)
    stack: tuple[int, int] = (0, 0)           # the mapping its stack pointer started in
    ctx: object = None                        # engine context (its registers while it does not run)
    sig: tuple | None = None                  # its part of the signal state (Signals) while it does not run
    clear_child_tid: int = 0
    robust_list: int = 0
    wait: Wait | None = None
    ret: int | None = None                    # the return register's value when it runs next
    restart: bool = False                     # ... or: run its system call again
    expired: bool = False                     # a restarted call's timeout passed: do not wait again
    scs: object = None                        # its shadow call stack while it does not run
    exited: bool = False
    wait_seq: int = 0                         # when it began to wait (futex queues are FIFO)


SIG_FIELDS = ("mask", "pending", "pending_code", "saved", "altstack", "suspended_mask")


class Threads:
    """The guest's threads and their scheduler (Process.threads, created at the first thread)."""

    def __init__(self, p, slice_blocks: int | None = None):
        self.p = p
        self.slice = slice_blocks or DEFAULT_SLICE
        main = Thread(p.pid, p.comm, p.mem.stack, clear_child_tid=p.clear_child_tid)
        self.all: list[Thread] = [main]
        self.current = main
        self.next_tid = p.pid + 1
        self.switches = 0
        self.deadlock: list[tuple[int, int, str]] = []     # (tid, pc, what) of each thread, at a deadlock
        self.on_switch: list = []            # fn(thread) after every switch to it (the sanitizer's)
        self.scs_swap = None                 # fn(handle) swapping a shadow call stack in (session)
        self.scs_new = None                  # fn() -> a new thread's empty shadow call stack
        self.scs_free = None                 # fn(handle): an exited thread's
        self._seq = 0

    # --- bookkeeping -------------------------------------------------------------------------------
    @property
    def tid(self) -> int:
        return self.current.tid

    def find(self, tid: int) -> Thread | None:
        return next((t for t in self.all if t.tid == tid), None)

    def crowded(self) -> bool:
        """More than one thread: a blocking call must park instead of blocking the host."""
        return len(self.all) > 1

    # --- clone and exit ----------------------------------------------------------------------------
    def create(self, stack: int, tls: int | None, ctid_clear: int) -> Thread:
        """A new thread running the clone's continuation with return value 0, on `stack`."""
        p, m = self.p, self.p.machine
        around = p.mem.find(stack - 1) if stack else None
        t = Thread(self.next_tid, self.current.comm, (around.start, around.end) if around else self.current.stack,
                   clear_child_tid=ctid_clear)
        self.next_tid += 1
        here = m.save_context()
        resume = m.pc + m.syscall_pc_bias          # inside the x86 hook the PC is still at `syscall`
        if stack:
            m.sp = stack
        if tls is not None:
            m.set_reg("fs_base" if p.arch.name == "x86_64" else "tpidr_el0", tls)
        m.set_reg(p.arch.syscall_ret, 0)
        m.set_reg_id(m.pc_id, resume)              # not m.pc: that one pre-compensates the hook's bias
        t.ctx = m.save_context()
        m.restore_context(here)
        s = p.signals
        t.sig = (s.mask, [], {}, [], (0, 2, 0, 0), None)   # the mask is inherited; no altstack (clone(2))
        if self.scs_new is not None:
            t.scs = self.scs_new()
        self.all.append(t)
        if m.slice is None:
            m.stop("clone")                  # the slice hook goes in between two runs (Process.run)
        return t

    def exit_thread(self, status: int) -> bool:
        """exit(2) of the current thread; False when it is the last one (the process exits)."""
        cur = self.current
        if len(self.all) == 1:
            return False
        self._robust_exit(cur)
        self._clear_tid(cur)
        cur.exited = True
        self.all.remove(cur)
        self.p.machine.stop("switch")
        return True

    def _robust_exit(self, t: Thread) -> None:
        """The kernel's exit_robust_list(): every robust mutex the exiting thread still holds is
        marked FUTEX_OWNER_DIED and one waiter woken (pthread_mutex_lock then returns EOWNERDEAD)."""
        user = self.p.user
        if not t.robust_list:
            return
        try:
            first, offset, pending = user.unpack("<QqQ", t.robust_list)
            entries, entry = [], first
            while entry != t.robust_list and entry and len(entries) < ROBUST_LIST_LIMIT:
                entries.append(entry)
                entry = user.u64(entry & ~1)
            for e in entries + ([pending] if pending else []):
                self._futex_death((e & ~1) + offset, t.tid)
        except OSError:
            return                                   # a list in unmapped memory: the kernel stops too

    def _futex_death(self, uaddr: int, tid: int) -> None:
        FUTEX_WAITERS, FUTEX_OWNER_DIED, FUTEX_TID_MASK = 0x80000000, 0x40000000, 0x3FFFFFFF
        val = self.p.user.u32(uaddr)
        if val & FUTEX_TID_MASK != tid:
            return
        self.p.user.put_u32(uaddr, (val & FUTEX_WAITERS) | FUTEX_OWNER_DIED)
        if val & FUTEX_WAITERS:
            self.futex_wake(uaddr, 1)

    def _clear_tid(self, t: Thread) -> None:
        """CLONE_CHILD_CLEARTID / set_tid_address: 0 in the word and a wake-up of one waiter
        (what pthread_join waits on)."""
        if t.clear_child_tid:
            try:
                self.p.user.put_u32(t.clear_child_tid, 0)
            except OSError:
                return
            self.futex_wake(t.clear_child_tid, 1)

    def after_fork(self) -> None:
        """In a forked child only the thread that forked exists, with the child's pid as its tid."""
        self.all = [self.current]
        self.current.tid = self.p.pid
        self.next_tid = self.p.pid + 1

    # --- futexes -----------------------------------------------------------------------------------
    def futex_wait(self, addr: int, until: float | None, bitset: int) -> None:
        raise Park(Wait("futex", until, False, addr=addr, bitset=bitset))

    def waiters(self, addr: int, bitset: int = FUTEX_BITSET_ANY) -> list[Thread]:
        """Threads parked on the futex word at `addr`, in the order they began to wait."""
        found = [t for t in self.all if t.wait is not None and t.wait.what == "futex"
                 and t.wait.addr == addr and t.wait.bitset & bitset]
        return sorted(found, key=lambda t: t.wait_seq)

    def futex_wake(self, addr: int, n: int, bitset: int = FUTEX_BITSET_ANY) -> int:
        woken = self.waiters(addr, bitset)[:max(n, 0)]
        for t in woken:
            self._wake(t, 0)
        return len(woken)

    def futex_requeue(self, addr: int, n_wake: int, n_move: int, addr2: int) -> int:
        queue = self.waiters(addr)
        for t in queue[:n_wake]:
            self._wake(t, 0)
        moved = queue[n_wake:n_wake + max(n_move, 0)]
        for t in moved:
            t.wait.addr = addr2
        return min(len(queue), n_wake) + len(moved)

    # --- parking and waking --------------------------------------------------------------------------
    def park(self, wait: Wait) -> None:
        """From the system call hook: the current thread waits; another runs after this stop."""
        cur = self.current
        cur.wait = wait
        self._seq += 1
        cur.wait_seq = self._seq
        self.p.machine.stop("switch")

    def _wake(self, t: Thread, ret: int | None, restart: bool = False) -> None:
        t.wait = None
        t.ret, t.restart = ret, restart

    def _wake_expired(self, t: Thread) -> None:
        if t.wait.restart:
            self._wake(t, None, restart=True)
            t.expired = True
        else:
            self._wake(t, t.wait.timeout_ret)

    def _sigstate(self, t: Thread) -> tuple:
        """(mask, pending list, si_codes) of a thread: the live ones of the running thread."""
        if t is self.current:
            s = self.p.signals
            return s.mask, s.pending, s.pending_code
        return t.sig[0], t.sig[1], t.sig[2]

    def signal_thread(self, t: Thread, sig: int, code: int) -> None:
        """tgkill/tkill to a thread that is not the current one."""
        mask, pending, pending_code = self._sigstate(t)
        if sig < 32 and sig in pending:
            return
        pending.append(sig)
        pending_code[sig] = code
        self._interrupt(t, sig)

    def _interrupt(self, t: Thread, sig: int) -> None:
        """A deliverable signal ends a parked thread's wait: -EINTR, or with SA_RESTART a
        restartable call runs again after the handler."""
        from emsan.os.linux.signals import SA_RESTART
        w = t.wait
        if w is not None and w.sigset >> (sig - 1) & 1:
            self._wake(t, None, restart=True)       # rt_sigtimedwait takes it
            return
        if w is None or not _interrupts(self.p.signals, sig, self._sigstate(t)[0]):
            return
        if w.restart and self.p.signals.actions.get(sig, (0, 0))[1] & SA_RESTART:
            self._wake(t, None, restart=True)
        else:
            self._wake(t, -errno.EINTR)

    def route_signals(self) -> None:
        """Process-directed signals the current thread blocks go to a thread that does not (the
        kernel's complete_signal()); a parked thread that can take one of its own is woken."""
        from emsan.os.linux.signals import SI_TKILL
        if not self.p.signals.pending and not any(t.sig[1] for t in self.all if t is not self.current):
            return                              # nothing pending anywhere (every switch asks)
        for holder in self.all:
            mask, pending, codes = self._sigstate(holder)
            for sig in list(pending):
                bit = 1 << (sig - 1)
                if codes.get(sig) == SI_TKILL or not mask & bit or \
                        (holder.wait is not None and holder.wait.sigset & bit):
                    continue            # thread-directed, or the holder takes it itself
                others = [t for t in self.all if t is not holder]
                other = next((t for t in others if t.wait is not None and t.wait.sigset & bit), None) or \
                    next((t for t in others if not self._sigstate(t)[0] & bit), None)
                if other is not None:
                    pending.remove(sig)
                    self.signal_thread(other, sig, codes.pop(sig, 0))
        for t in self.all:
            if t.wait is not None:
                mask, pending, _codes = self._sigstate(t)
                for sig in pending:
                    if not mask >> (sig - 1) & 1 or t.wait.sigset >> (sig - 1) & 1:
                        self._interrupt(t, sig)
                        break

    # --- the scheduler -------------------------------------------------------------------------------
    def schedule(self, reason: str) -> int | None:
        """After the engine stopped for a switch ("switch": the current thread parked, exited or
        made a thread; "slice": its slice ran out): the PC to run next, with that thread's state
        in place; None when the run ends (deadlock, --timeout: the process's exit_info says)."""
        p, m = self.p, self.p.machine
        cur = self.current
        self.switches += 1
        if not cur.exited:
            self._save(cur)
        self.route_signals()
        if any(t.wait is not None and t.wait.fds for t in self.all):
            self._wake_ready(self._poll_fds({}, 0))     # a reader must not wait for computing threads to block
        nxt = self._pick(cur)
        while nxt is None:
            if not self._idle():
                if cur.exited:
                    self._load(self.all[0])     # the run ends: the registers are a live thread's
                return None
            nxt = self._pick(cur)
        if nxt is not cur or cur.exited:
            self._load(nxt)
        self._resume(nxt)
        if len(self.all) == 1 and reason == "slice":
            # One thread left, and it ran a whole slice alone: no more slices (create() puts the
            # hook back). Not at once when the others end: a program that makes threads one
            # after the other would retranslate its code for each.
            m.drop_time_slice()
        elif m.slice is not None:
            m.slice[0], m.slice[1] = self.slice, 0
        return m.pc

    def _pick(self, cur: Thread) -> Thread | None:
        """Round-robin: the first runnable thread after the current one, itself last."""
        self._expire(time.monotonic())
        order = self.all
        start = order.index(cur) + 1 if cur in order else 0
        for t in order[start:] + order[:start]:
            if t.wait is None:
                return t
        return None

    def _expire(self, now: float) -> None:
        for t in self.all:
            if t.wait is not None and t.wait.until is not None and now >= t.wait.until:
                self._wake_expired(t)

    def _save(self, t: Thread) -> None:
        s = self.p.signals
        t.sig = (s.mask, s.pending, s.pending_code, s.saved, s.altstack, s.suspended_mask)    # SIG_FIELDS
        t.ctx = self.p.machine.save_context(t.ctx)

    def _load(self, t: Thread) -> None:
        p = self.p
        old = self.current
        p.machine.restore_context(t.ctx)          # kept: the next save reuses it
        for f, v in zip(SIG_FIELDS, t.sig):
            setattr(p.signals, f, v)
        t.sig = None
        if self.scs_swap is not None and t.scs is not None:
            handle, t.scs = t.scs, None
            self.scs_swap(handle)               # t's stack in, the old thread's into the handle
            if old.exited:
                self.scs_free(handle)
            else:
                old.scs = handle
        self.current = t
        p.clear_child_tid = t.clear_child_tid
        for fn in self.on_switch:
            fn(t)

    def _resume(self, t: Thread) -> None:
        """Finish the thread's system call: its value, or the call again."""
        p, m = self.p, self.p.machine
        if t.restart:
            m.pc = m.pc - (2 if p.arch.name == "x86_64" else 4)    # syscall / svc #0
            t.restart = False
        elif t.ret is not None:
            m.set_reg(p.arch.syscall_ret, t.ret)
            t.ret = None
            p.signals.after_syscall()
            return
        if p.signals.pending and p.signals.deliverable():
            p.signals.deliver_pending()

    # --- when every thread waits ---------------------------------------------------------------------
    def _idle(self) -> bool:
        """Block in the host until a parked thread can go on; False when the run must end."""
        from emsan.os.linux import children
        p = self.p
        sigs = p.signals
        self.route_signals()                   # a pending signal a parked thread waits for
        if any(t.wait is None for t in self.all):
            return True
        now = time.monotonic()
        moments = [t.wait.until for t in self.all if t.wait.until is not None]
        if sigs.alarm_at:
            moments.append(sigs.timer_due_at() or sigs.alarm_at)
        wake = children.wake_fd(p)
        if not moments and wake is None and not any(t.wait.fds for t in self.all):
            self.deadlock = self.describe()
            return False
        if p.deadline is not None:
            moments.append(p.deadline)
        limit = None if not moments else min(max(0, int((min(moments) - now) * 1000) + 1), 2**31 - 1)
        ready = self._poll_fds({wake: select.POLLIN} if wake is not None else {}, limit)
        if p.deadline is not None and time.monotonic() >= p.deadline:
            p.machine.stop_reason = None
            from emsan.errors import EXIT_TIMEOUT
            from emsan.os.linux.process import ExitInfo
            p.exit_info = ExitInfo("timeout", EXIT_TIMEOUT)
            return False
        if wake is not None and wake in ready:
            p.child_events.drain()
            children.pass_host_signals(p)
            ready.discard(wake)
            for t in self.all:                 # a child changed state: waits on it look again
                if t.wait.what in ("wait4", "pause"):
                    self._wake(t, None if t.wait.restart else -errno.EINTR, restart=t.wait.restart)
        self._wake_ready(ready)
        sigs.check_alarm()
        self.route_signals()
        return True

    def _poll_fds(self, extra: dict[int, int], limit: int | None) -> set[int]:
        """Poll every descriptor a parked thread waits for (and `extra`) for up to `limit` ms."""
        fds = dict(extra)
        for t in self.all:
            if t.wait is not None:
                for fd, ev in t.wait.fds.items():
                    fds[fd] = fds.get(fd, 0) | ev
        poller = select.poll()
        for fd, ev in fds.items():
            poller.register(fd, ev)
        return {fd for fd, _ in poller.poll(limit)}

    def _wake_ready(self, ready: set[int]) -> None:
        for t in self.all:
            if t.wait is not None and t.wait.fds and any(fd in ready for fd in t.wait.fds):
                self._wake(t, None, restart=True)

    def describe(self) -> list[tuple[int, int, str]]:
        """Every thread's PC and what it waits for (the deadlock message)."""
        p = self.p
        lines = []
        for t in self.all:
            pc = p.machine.pc if t is self.current else _ctx_pc(p, t.ctx)
            w = t.wait
            what = f"futex wait on {w.addr:#x}" if w.what == "futex" else w.what
            lines.append((t.tid, pc, what))
        return lines


def _interrupts(sigs, sig: int, mask: int) -> bool:
    """Would `sig` end a wait of a thread with `mask` (not blocked, not ignored)?"""
    from emsan.os.linux.signals import DEFAULT_IGNORE, SIG_DFL, SIG_IGN
    handler = sigs.actions.get(sig, (SIG_DFL,))[0]
    ignored = handler == SIG_IGN or (handler == SIG_DFL and sig in DEFAULT_IGNORE)
    return not mask >> (sig - 1) & 1 and not ignored


def _ctx_pc(p, ctx) -> int:
    """The PC a saved engine context resumes at."""
    with loaded(p.machine, ctx):
        return p.machine.pc


@contextmanager
def loaded(m, ctx):
    """The engine's registers are a parked thread's (its saved context) inside the block."""
    here = m.save_context()
    m.restore_context(ctx)
    try:
        yield
    finally:
        m.restore_context(here)


def would_block(p, what: str, fds: dict[int, int], ms: int | None) -> int | None:
    """Before a host wait on `fds` (host fd -> poll events) for up to `ms` (None: forever): the
    wait to use. Alone, the caller's own; among threads, 0 when something is ready already or the
    restarted call's time is up, else the thread parks (the call runs again once a descriptor
    is ready or its time has passed)."""
    th = p.threads
    if th is None or not th.crowded():
        return ms
    cur = th.current
    if cur.expired:
        cur.expired = False
        return 0
    if ms == 0:
        return 0
    if fds:
        poller = select.poll()
        for fd, ev in fds.items():
            poller.register(fd, ev)
        if poller.poll(0):
            return 0
    raise Park(Wait(what, None if ms is None else time.monotonic() + ms / 1000, True, fds=dict(fds)))


def park_for(p, what: str, seconds: float | None, ret_when_done: int) -> None:
    """A wait with a value of its own (nanosleep: 0 after its time; pause: -EINTR when a signal
    comes), when other threads could run meanwhile; returns at once when alone."""
    th = p.threads
    if th is None or not th.crowded():
        return
    raise Park(Wait(what, None if seconds is None else time.monotonic() + seconds, False,
                    timeout_ret=ret_when_done))
