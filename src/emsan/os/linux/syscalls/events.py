"""Waiting for descriptors: poll, select, epoll, and eventfd.

In a single-threaded process only alarm(2) can interrupt a wait (with EINTR, after which the
SIGALRM handler runs); emsan's --timeout ends it too. Every wait goes through wait_limit().
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import time

from emsan.os.linux.syscalls import syscall
from emsan.os.linux.syscalls.fs import O_CLOEXEC, s32

POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
SELECT_IN, SELECT_OUT, SELECT_EX = POLLIN | POLLHUP | POLLERR, POLLOUT | POLLERR, POLLPRI
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
EFD_SEMAPHORE, EFD_NONBLOCK = 1, 0o4000
_libc = ctypes.CDLL(None, use_errno=True)


def wait_limit(p, ms: int | None) -> tuple[int | None, str]:
    """How long a wait of `ms` (None: forever) may really last, and what would cut it short."""
    limit, cut_by = ms, ""
    if p.signals.alarm_at:
        until_alarm = max(0, int((p.signals.alarm_at - time.monotonic()) * 1000) + 1)
        if limit is None or until_alarm < limit:
            limit, cut_by = until_alarm, "alarm"
    if p.deadline is not None:
        until_deadline = max(0, int((p.deadline - time.monotonic()) * 1000))
        if limit is None or until_deadline < limit:
            limit, cut_by = until_deadline, "timeout"
    return limit, cut_by


def interrupted(p, cut_by: str) -> int:
    """-EINTR for a wait the alarm (its handler runs next) or --timeout (the run ends) cut short."""
    if cut_by == "alarm":
        p.signals.check_alarm()
    else:
        p.machine.stop("timeout")
    return -errno.EINTR


def forever_alone(p, ms: int | None, watched: bool) -> bool:
    """A wait nothing could ever end: say so once and fail it instead of hanging."""
    if ms is None and not watched and not p.signals.alarm_at:
        p.warn_once("pause", f"{p.current_syscall} waits forever: nothing could ever wake it")
        return True
    return False


def _timespec_ms(p, ptr: int) -> int | None:
    if not ptr:
        return None
    sec, nsec = p.user.unpack("<qq", ptr)
    if sec < 0 or not 0 <= nsec < 10**9:
        raise OSError(errno.EINVAL, "bad timespec")
    return min(sec * 1000 + (nsec + 999_999) // 10**6, 2**31 - 1)


def poll_host(p, wanted: dict[int, int], ms: int | None) -> dict[int, int] | int:
    """Poll guest fds for events; their revents, or -EINTR when the wait was cut short."""
    from emsan.os.linux.threads import would_block
    ms = would_block(p, p.current_syscall, {p.fds[fd].host: ev for fd, ev in wanted.items()}, ms)
    if forever_alone(p, ms, bool(wanted)):
        return -errno.EINTR
    poller = select.poll()
    for fd, events in wanted.items():
        poller.register(p.fds[fd].host, events)
    limit, cut_by = wait_limit(p, ms)
    ready = dict(poller.poll(limit))
    if not ready and cut_by:
        return interrupted(p, cut_by)
    return {fd: ready.get(p.fds[fd].host, 0) for fd in wanted}


# --- poll ------------------------------------------------------------------------------------------
@syscall("poll", "ppoll")
def sys_poll(p, fds, nfds, timeout, *_):
    nfds &= 0xFFFFFFFF                     # unsigned int
    if nfds > p.fd_limit():
        return -errno.EINVAL
    raw = p.user.read(fds, 8 * nfds) if nfds else b""
    entries = [struct.unpack_from("<ihh", raw, 8 * i) for i in range(nfds)]
    wanted: dict[int, int] = {}
    for fd, events, _r in entries:
        if fd >= 0 and fd in p.fds:
            wanted[fd] = wanted.get(fd, 0) | (events & 0xFFFF)
    if p.current_syscall == "ppoll":
        ms = _timespec_ms(p, timeout)
    else:
        ms = None if s32(timeout) < 0 else s32(timeout)
    host = {fd: ev for fd, ev in wanted.items() if p.fds[fd].node is None and p.fds[fd].mem is None}
    ready = poll_host(p, host, 0 if len(host) < len(wanted) else ms)   # /proc files: ready at once
    if isinstance(ready, int):
        return ready
    out, n = bytearray(), 0
    for fd, events, _r in entries:
        if fd in p.fds and fd not in ready:          # the guest's /proc files are always ready
            ready[fd] = POLLIN | POLLOUT
        rev = (ready[fd] & (events | POLLERR | POLLHUP | POLLNVAL)) if fd in p.fds else (POLLNVAL if fd >= 0 else 0)
        n += bool(rev)
        out += struct.pack("<ihh", fd, events, rev)
    if out:
        p.user.write(fds, bytes(out))
    return n


# --- select ----------------------------------------------------------------------------------------
def _fdset(p, ptr: int, nfds: int) -> set[int]:
    if not ptr:
        return set()
    raw = int.from_bytes(p.user.read(ptr, 8 * ((nfds + 63) // 64)), "little")
    return {fd for fd in range(nfds) if raw >> fd & 1}


def _put_fdset(p, ptr: int, nfds: int, fds: set[int]) -> None:
    if ptr:
        bits = sum(1 << fd for fd in fds)
        p.user.write(ptr, bits.to_bytes(8 * ((nfds + 63) // 64), "little"))


@syscall("select", "pselect6")
def sys_select(p, nfds, rptr, wptr, eptr, timeout, *_):
    nfds = s32(nfds)
    if nfds < 0:
        return -errno.EINVAL
    # The kernel looks no further than its descriptor table: 64 entries, doubled as needed.
    nfds = min(nfds, max(64, 1 << max(p.fds, default=0).bit_length()))
    sets = [_fdset(p, ptr, nfds) for ptr in (rptr, wptr, eptr)]
    wanted: dict[int, int] = {}
    always = False
    for fds, events in zip(sets, (SELECT_IN, SELECT_OUT, SELECT_EX)):
        for fd in fds:
            if fd not in p.fds:
                return -errno.EBADF
            if p.fds[fd].node is None and p.fds[fd].mem is None:
                wanted[fd] = wanted.get(fd, 0) | events
            else:
                always = True
    if p.current_syscall == "pselect6":
        ms = _timespec_ms(p, timeout)
    elif timeout:
        sec, usec = p.user.unpack("<qq", timeout)
        if sec < 0 or not 0 <= usec < 10**6:
            return -errno.EINVAL
        ms = min(sec * 1000 + (usec + 999) // 1000, 2**31 - 1)
    else:
        ms = None
    ready = poll_host(p, wanted, 0 if always else ms)
    if isinstance(ready, int):
        return ready
    found = [{fd for fd in fds if ready.get(fd, POLLIN | POLLOUT) & events}
             for fds, events in zip(sets, (SELECT_IN, SELECT_OUT, SELECT_EX))]
    for ptr, fds in zip((rptr, wptr, eptr), found):
        _put_fdset(p, ptr, nfds, fds)
    if timeout and p.current_syscall == "select" and not any(found):
        p.user.write(timeout, bytes(16))        # Linux reports the time left: none
    return sum(len(f) for f in found)


# --- epoll: a host epoll instance watching the host side of each guest descriptor ------------------
def _epoll_event_size(p) -> int:
    return 12 if p.arch.name == "x86_64" else 16     # packed on x86-64, naturally aligned elsewhere


def _check(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


@syscall("epoll_create", "epoll_create1")
def sys_epoll_create(p, arg, *_):
    flags = s32(arg) if p.current_syscall == "epoll_create1" else 0
    if p.current_syscall == "epoll_create" and s32(arg) <= 0:
        return -errno.EINVAL
    host = _check(_libc.epoll_create1(O_CLOEXEC))
    return p.alloc_fd(host, "anon_inode:[eventpoll]", bool(flags & O_CLOEXEC))


@syscall("epoll_ctl")
def sys_epoll_ctl(p, epfd, op, fd, event, *_):
    ep, target = p.fd(epfd), p.fd(fd)
    if target.node is not None or target.mem is not None:
        return -errno.EPERM                     # like regular files: not pollable
    events = data = 0
    if op != EPOLL_CTL_DEL:
        raw = p.user.read(event, _epoll_event_size(p))
        events = struct.unpack_from("<I", raw)[0]
        data = struct.unpack_from("<Q", raw, 4 if len(raw) == 12 else 8)[0]
    host_event = struct.pack("<IQ", events, data)     # the host is x86-64: packed; data passes through
    return _check(_libc.epoll_ctl(ep.host, s32(op), target.host, host_event))


@syscall("epoll_wait", "epoll_pwait", "epoll_pwait2")
def sys_epoll_wait(p, epfd, events, maxevents, timeout, *_):
    ep = p.fd(epfd)
    maxevents = s32(maxevents)
    if not 0 < maxevents <= 1 << 16:
        return -errno.EINVAL
    if not p.user.access_ok(events, maxevents * _epoll_event_size(p)):
        return -errno.EFAULT
    if p.current_syscall == "epoll_pwait2":
        ms = _timespec_ms(p, timeout)
    else:
        ms = None if s32(timeout) < 0 else s32(timeout)
    from emsan.os.linux.threads import would_block
    ms = would_block(p, p.current_syscall, {ep.host: select.POLLIN}, ms)
    limit, cut_by = wait_limit(p, ms)
    buf = ctypes.create_string_buffer(12 * maxevents)
    n = _check(_libc.epoll_wait(ep.host, buf, maxevents, -1 if limit is None else limit))
    if n == 0 and cut_by:
        return interrupted(p, cut_by)
    size = _epoll_event_size(p)
    out = bytearray()
    for i in range(n):
        ev, data = struct.unpack_from("<IQ", buf.raw, 12 * i)
        out += struct.pack("<IQ", ev, data) if size == 12 else struct.pack("<I4xQ", ev, data)
    if out:
        p.user.write(events, bytes(out))
    return n


# --- eventfd ---------------------------------------------------------------------------------------
@syscall("eventfd", "eventfd2")
def sys_eventfd(p, initval, flags=0, *_):
    flags = s32(flags) if p.current_syscall == "eventfd2" else 0
    if flags & ~(EFD_SEMAPHORE | EFD_NONBLOCK | O_CLOEXEC):
        return -errno.EINVAL
    host = os.eventfd(initval & 0xFFFFFFFF, (flags & (EFD_SEMAPHORE | EFD_NONBLOCK)) | os.EFD_CLOEXEC)
    return p.alloc_fd(host, "anon_inode:[eventfd]", bool(flags & O_CLOEXEC))
