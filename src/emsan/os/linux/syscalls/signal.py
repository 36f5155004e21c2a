"""Signal system calls; delivery itself lives in emsan.os.linux.signals."""
from __future__ import annotations

import errno
import os
import struct

from emsan.os.linux.signals import SI_TKILL, SI_USER
from emsan.os.linux.syscalls import NO_RETURN, syscall
from emsan.os.linux.syscalls.events import wait_limit

SIGKILL, SIGSTOP = 9, 19
ITIMER_REAL = 0


@syscall("rt_sigaction")
def sys_rt_sigaction(p, sig, act, oldact, sigsetsize, *_):
    if sigsetsize != 8 or not 1 <= sig <= 64 or (act and sig in (SIGKILL, SIGSTOP)):
        return -errno.EINVAL
    old = p.signals.actions.get(sig, (0, 0, 0, 0))
    new = p.user.unpack("<QQQQ", act) if act else None
    if oldact:
        p.user.pack(oldact, "<QQQQ", *old)
    if new is not None:
        p.signals.actions[sig] = new
        from emsan.os.linux.children import mirror
        mirror(p, sig)             # a signal from another process reaches this handler (os/linux/children.py)
    return 0


@syscall("rt_sigprocmask")
def sys_rt_sigprocmask(p, how, set_, oldset, sigsetsize=8, *_):
    if sigsetsize != 8 or (set_ and how & 0xFFFFFFFF > 2):
        return -errno.EINVAL
    old = p.signals.mask
    if set_:
        s = p.user.u64(set_)
        if how == 0:
            p.signals.mask |= s
        elif how == 1:
            p.signals.mask &= ~s
        elif how == 2:
            p.signals.mask = s
        else:
            return -errno.EINVAL
        p.signals.mask &= ~((1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1)))
    if oldset:
        p.user.put_u64(oldset, old)
    return 0


@syscall("rt_sigpending")
def sys_rt_sigpending(p, set_, sigsetsize=8, *_):
    if sigsetsize > 8:
        return -errno.EINVAL
    p.user.write(set_, struct.pack("<Q", p.signals.pending_mask())[:sigsetsize])
    return 0


@syscall("rt_sigreturn")
def sys_rt_sigreturn(p, *_):
    p.signals.sigreturn()
    return NO_RETURN


@syscall("sigaltstack")
def sys_sigaltstack(p, ss, old, *_):
    SS_ONSTACK, SS_DISABLE, SS_AUTODISARM = 1, 2, 1 << 31
    cur = p.signals.altstack
    on_it = not cur[1] & SS_DISABLE and cur[0] <= p.machine.sp < cur[0] + cur[3]
    new = p.user.unpack("<QiiQ", ss) if ss else None
    if new is not None:
        sp, flags, _pad, size = new
        if on_it:
            return -errno.EPERM
        mode = flags & ~SS_AUTODISARM & 0xFFFFFFFF
        if mode not in (0, SS_ONSTACK, SS_DISABLE):
            return -errno.EINVAL
        if mode != SS_DISABLE and size < p.signals.min_altstack():
            return -errno.ENOMEM
    if old:
        p.user.pack(old, "<QiiQ", cur[0], cur[1] | (SS_ONSTACK if on_it else 0), 0, cur[3])
    if new is not None:
        p.signals.altstack = (0, SS_DISABLE, 0, 0) if mode == SS_DISABLE else (sp, 0, 0, size)
    return 0


@syscall("kill", "tkill", "tgkill")
def sys_kill(p, *a):
    if p.current_syscall == "tgkill":
        target, sig = a[1], a[2]
    else:
        target, sig = a[0], a[1]
    target = struct.unpack("<i", struct.pack("<I", target & 0xFFFFFFFF))[0]
    if not 0 <= sig <= 64:
        return -errno.EINVAL
    th = p.threads
    if th is not None and p.current_syscall != "kill" and target > 0 and target != th.tid:
        t = th.find(target)                      # another thread of this process
        if t is not None:
            if p.current_syscall == "tgkill" and struct.unpack("<i", struct.pack("<I", a[0] & 0xFFFFFFFF))[0] != p.pid:
                return -errno.ESRCH
            if sig:
                th.signal_thread(t, sig, SI_TKILL)
            return 0
    if th is not None and p.current_syscall != "kill" and target == th.tid:
        target = p.pid                           # the calling thread itself
    if target not in (p.pid, -1) and (p.current_syscall == "kill" or target > 0):
        from emsan.os.linux.children import send_signal
        return send_signal(p, target, sig)       # another process, or a process group (the host's)
    if target not in (p.pid, -1):
        return -errno.EINVAL if target <= 0 else -errno.ESRCH
    if sig == 0:
        return 0
    p.signals.raise_signal(sig, code=SI_USER if p.current_syscall == "kill" else SI_TKILL)
    return 0


@syscall("alarm")
def sys_alarm(p, seconds, *_):
    left = p.signals.set_alarm(seconds & 0xFFFFFFFF)
    return int(left + 0.5) if left else 0       # a second that has begun counts, as on Linux


def _timeval(raw: bytes, at: int) -> float:
    sec, usec = struct.unpack_from("<qq", raw, at)
    return sec + usec / 1e6


def _pack_itimer(interval: float, value: float) -> bytes:
    def tv(t: float) -> tuple[int, int]:
        usec = int(round(t * 1e6))
        return usec // 10**6, usec % 10**6
    return struct.pack("<qqqq", *tv(interval), *tv(value))


def _check_timeval(raw: bytes, at: int) -> None:
    sec, usec = struct.unpack_from("<qq", raw, at)
    if sec < 0 or not 0 <= usec < 10**6:
        raise OSError(errno.EINVAL, "bad timeval")


@syscall("setitimer")
def sys_setitimer(p, which, new, old, *_):
    if which & 0xFFFFFFFF > 2:
        return -errno.EINVAL
    if which != ITIMER_REAL:
        return -errno.EINVAL          # ITIMER_VIRTUAL/PROF would need CPU-time accounting
    raw = p.user.read(new, 32) if new else bytes(32)
    _check_timeval(raw, 0)
    _check_timeval(raw, 16)
    interval = p.signals.alarm_interval
    if old:
        p.user.write(old, _pack_itimer(interval, p.signals.alarm_left()))
    p.signals.set_alarm(_timeval(raw, 16), _timeval(raw, 0))
    return 0


@syscall("getitimer")
def sys_getitimer(p, which, cur, *_):
    if which != ITIMER_REAL:
        return -errno.EINVAL
    p.user.write(cur, _pack_itimer(p.signals.alarm_interval, p.signals.alarm_left()))
    return 0


@syscall("pause", "rt_sigsuspend")
def sys_pause(p, mask_ptr=0, sigsetsize=8, *_):
    sigs = p.signals
    if p.current_syscall == "rt_sigsuspend":
        if sigsetsize != 8:
            return -errno.EINVAL
        sigs.suspend(p.user.u64(mask_ptr))
    # Returns -EINTR; the handler runs on the way back (Process.on_syscall).
    from emsan.os.linux.children import wait_for_signal
    from emsan.os.linux.threads import park_for
    if not sigs.deliverable():
        park_for(p, "pause", None, -errno.EINTR)      # among threads: until a signal comes
    if not sigs.deliverable() and not sigs.wait_for_alarm() and not wait_for_signal(p):
        p.warn_once("pause", f"{p.current_syscall} with no signal that could ever arrive")
    return -errno.EINTR


@syscall("rt_sigtimedwait")
def sys_rt_sigtimedwait(p, set_, info, timeout, sigsetsize=8, *_):
    if sigsetsize != 8:
        return -errno.EINVAL
    wanted = p.user.u64(set_)
    got = p.signals.take_pending(wanted)
    if got is None:
        ms = None
        if timeout:
            sec, nsec = p.user.unpack("<qq", timeout)
            if sec < 0 or not 0 <= nsec < 10**9:
                return -errno.EINVAL
            ms = min(sec * 1000 + (nsec + 999_999) // 10**6, 2**31 - 1)
        th = p.threads
        if th is not None and th.crowded():          # among threads: park until a wanted signal comes
            import time
            from emsan.os.linux.threads import Park, Wait
            if th.current.expired or ms == 0:
                th.current.expired = False
                return -errno.EAGAIN
            raise Park(Wait("rt_sigtimedwait", None if ms is None else time.monotonic() + ms / 1000, True,
                            sigset=wanted))
        limit, cut_by = wait_limit(p, ms)
        if limit is None:
            p.warn_once("pause", "rt_sigtimedwait with no signal that could ever arrive")
            return -errno.EINTR
        if not p.sleep(limit / 1000):
            return -errno.EINTR             # --timeout ended the run
        p.signals.check_alarm()
        got = p.signals.take_pending(wanted)
        if got is None:
            return -errno.EINTR if cut_by == "alarm" else -errno.EAGAIN
    sig, code = got
    if info:
        p.user.write(info, struct.pack("<iii4xiI", sig, 0, code, p.pid, os.getuid()).ljust(128, b"\0"))
    return sig
