"""Signal system calls; delivery itself lives in emsan.os.linux.signals."""
from __future__ import annotations

import errno
import struct

from emsan.os.linux.syscalls import NO_RETURN, syscall

SIGKILL, SIGSTOP = 9, 19


@syscall("rt_sigaction")
def sys_rt_sigaction(p, sig, act, oldact, sigsetsize, *_):
    if not 1 <= sig <= 64 or (act and sig in (SIGKILL, SIGSTOP)):
        return -errno.EINVAL
    old = p.signals.actions.get(sig, (0, 0, 0, 0))
    if act:
        p.signals.actions[sig] = struct.unpack("<QQQQ", p.machine.read(act, 32))
    if oldact:
        p.machine.write(oldact, struct.pack("<QQQQ", *old))
    return 0


@syscall("rt_sigprocmask")
def sys_rt_sigprocmask(p, how, set_, oldset, *_):
    if oldset:
        p.machine.write(oldset, struct.pack("<Q", p.signals.mask))
    if set_:
        s = struct.unpack("<Q", p.machine.read(set_, 8))[0]
        if how == 0:
            p.signals.mask |= s
        elif how == 1:
            p.signals.mask &= ~s
        elif how == 2:
            p.signals.mask = s
        else:
            return -errno.EINVAL
        p.signals.mask &= ~((1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1)))
    return 0


@syscall("rt_sigpending")
def sys_rt_sigpending(p, set_, *_):
    p.machine.write(set_, struct.pack("<Q", p.signals.pending_mask()))
    return 0


@syscall("rt_sigreturn")
def sys_rt_sigreturn(p, *_):
    p.signals.sigreturn()
    return NO_RETURN


@syscall("sigaltstack")
def sys_sigaltstack(p, ss, old, *_):
    if old:
        p.machine.write(old, struct.pack("<QiiQ", *p.signals.altstack))
    if ss:
        sp, flags, _pad, size = struct.unpack("<QiiQ", p.machine.read(ss, 24))
        p.signals.altstack = (sp, flags, 0, size)
    return 0


@syscall("kill", "tkill", "tgkill")
def sys_kill(p, *a):
    if p.current_syscall == "tgkill":
        target, sig = a[1], a[2]
    else:
        target, sig = a[0], a[1]
    target = struct.unpack("<i", struct.pack("<I", target & 0xFFFFFFFF))[0]
    if target not in (p.pid, 0, -1, -p.pid):
        return -errno.ESRCH
    if sig == 0:
        return 0
    if not 1 <= sig <= 64:
        return -errno.EINVAL
    p.signals.raise_signal(sig)
    return 0


@syscall("alarm")
def sys_alarm(p, seconds, *_):
    return p.signals.set_alarm(seconds)


@syscall("setitimer")
def sys_setitimer(p, which, new, old, *_):
    ITIMER_REAL = 0
    if which != ITIMER_REAL:
        return -errno.EINVAL
    left = p.signals.set_alarm(0)
    if old:
        p.machine.write(old, struct.pack("<qqqq", 0, 0, left, 0))
    if new:
        _isec, _iusec, sec, usec = struct.unpack("<qqqq", p.machine.read(new, 32))
        p.signals.set_alarm(sec + usec / 1e6)
    return 0


@syscall("pause", "rt_sigsuspend")
def sys_pause(p, *_):
    if p.signals.wait_for_alarm():
        return -errno.EINTR
    p.warn_once("pause", f"{p.current_syscall} with no signal that could ever arrive")
    return -errno.EINTR
