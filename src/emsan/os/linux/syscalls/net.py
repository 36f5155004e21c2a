"""Socket system calls, served by host sockets.

Socket addresses and option values have the same layout on x86-64 and arm64, so they pass
through to the host's libc as raw bytes; only AF_UNIX paths are translated, like every other
guest path (sysroot first; relative to the guest's working directory). Ancillary data
(sendmsg/recvmsg control messages, which could carry descriptors) is not passed: the guest
sees none.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

from emsan.os.linux.syscalls import syscall
from emsan.os.linux.syscalls.fs import s32
from emsan.os.linux.uaccess import MAX_RW_COUNT

AF_UNIX = 1
MSG_DONTWAIT = 0x40
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000
SEND_MAX = 1 << 22          # the most one send or receive moves through emsan's memory
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


# host AF_UNIX address -> the guest's spelling of it, to give back what the guest bound or connected to
_unix_names: dict[bytes, bytes] = {}


def _guest_sockaddr(p, addr: int, length: int) -> bytes:
    """The host address for a guest sockaddr: AF_UNIX paths are resolved like any guest path
    (a relative one against the guest's working directory, not emsan's)."""
    if length > 128:
        raise OSError(errno.EINVAL, "address too long")        # sizeof(struct sockaddr_storage)
    raw = p.user.read(addr, length) if addr and length else b""
    if len(raw) > 2 and struct.unpack_from("<H", raw)[0] == AF_UNIX and raw[2:3] not in (b"\0", b""):
        path = raw[2:].split(b"\0", 1)[0].decode(errors="surrogateescape")
        if path.startswith("/"):
            host = os.fsencode(p.path_at(-100, path)[1])
        else:
            host = os.fsencode(f"/proc/self/fd/{p.cwd_fd}/{path}")
        if host != raw[2:].split(b"\0", 1)[0]:
            host_raw = raw[:2] + host + b"\0"
            _unix_names[host_raw.rstrip(b"\0")] = raw[:2] + os.fsencode(path) + b"\0"
            return host_raw
    return raw


def _put_sockaddr(p, addr: int, len_ptr: int, raw: bytes) -> None:
    """Copy a returned address out, truncated to the guest's buffer, and store its full length."""
    if not addr or not len_ptr:
        return
    raw = _unix_names.get(raw.rstrip(b"\0"), raw)
    room = s32(p.user.u32(len_ptr))
    if room < 0:
        raise OSError(errno.EINVAL, "negative address length")
    p.user.write(addr, raw[:room])
    p.user.put_u32(len_ptr, len(raw))


def _new_fd(p, host: int, type_: int) -> int:
    return p.alloc_fd(host, "socket:", bool(type_ & SOCK_CLOEXEC))


@syscall("socket")
def sys_socket(p, family, type_, proto, *_):
    family, type_, proto = s32(family), s32(type_), s32(proto)
    host = _check(_libc.socket(family, (type_ & ~SOCK_CLOEXEC) | SOCK_CLOEXEC, proto))
    return _new_fd(p, host, type_)


@syscall("socketpair")
def sys_socketpair(p, family, type_, proto, sv, *_):
    family, type_, proto = s32(family), s32(type_), s32(proto)
    pair = (ctypes.c_int * 2)()
    _check(_libc.socketpair(family, (type_ & ~SOCK_CLOEXEC) | SOCK_CLOEXEC, proto, pair))
    if p.user.writable(sv, 8) < 8:
        os.close(pair[0])
        os.close(pair[1])
        return -errno.EFAULT
    fds = [_new_fd(p, pair[0], type_), _new_fd(p, pair[1], type_)]
    p.user.pack(sv, "<ii", *fds)
    return 0


@syscall("connect", "bind")
def sys_connect(p, fd, addr, length, *_):
    length &= 0xFFFFFFFF
    raw = _guest_sockaddr(p, addr, length)
    fn = _libc.connect if p.current_syscall == "connect" else _libc.bind
    return _check(fn(p.fd(fd).host, raw, len(raw)))


@syscall("listen")
def sys_listen(p, fd, backlog, *_):
    backlog = s32(backlog)
    return _check(_libc.listen(p.fd(fd).host, backlog))


@syscall("accept", "accept4")
def sys_accept(p, fd, addr, len_ptr, flags=0, *_):
    flags = s32(flags) if p.current_syscall == "accept4" else 0
    if not p.wait_readable(p.fd(fd).host):
        return -errno.EINTR           # --timeout ended the run while accept waited
    buf = ctypes.create_string_buffer(128)
    size = ctypes.c_uint(128)
    host = _check(_libc.accept4(p.fd(fd).host, buf, ctypes.byref(size), (flags & SOCK_NONBLOCK) | SOCK_CLOEXEC))
    _put_sockaddr(p, addr, len_ptr, buf.raw[:size.value])
    return _new_fd(p, host, flags)


@syscall("getsockname", "getpeername")
def sys_getsockname(p, fd, addr, len_ptr, *_):
    buf = ctypes.create_string_buffer(128)
    size = ctypes.c_uint(128)
    fn = _libc.getsockname if p.current_syscall == "getsockname" else _libc.getpeername
    _check(fn(p.fd(fd).host, buf, ctypes.byref(size)))
    _put_sockaddr(p, addr, len_ptr, buf.raw[:size.value])
    return 0


@syscall("shutdown")
def sys_shutdown(p, fd, how, *_):
    how = s32(how)
    return _check(_libc.shutdown(p.fd(fd).host, how))


@syscall("setsockopt")
def sys_setsockopt(p, fd, level, name, val, length, *_):
    level, name, length = s32(level), s32(name), s32(length)
    if length < 0:
        return -errno.EINVAL
    raw = p.user.read(val, min(length, 1 << 16)) if val and length else b""
    return _check(_libc.setsockopt(p.fd(fd).host, level, name, raw or None, len(raw)))


@syscall("getsockopt")
def sys_getsockopt(p, fd, level, name, val, len_ptr, *_):
    level, name = s32(level), s32(name)
    room = s32(p.user.u32(len_ptr))
    if room < 0:
        return -errno.EINVAL
    room = min(room, 1 << 16)
    buf = ctypes.create_string_buffer(max(room, 1))
    size = ctypes.c_uint(room)
    _check(_libc.getsockopt(p.fd(fd).host, level, name, buf, ctypes.byref(size)))
    p.user.write(val, buf.raw[:min(size.value, room)])
    p.user.put_u32(len_ptr, size.value)
    return 0


@syscall("sendto")
def sys_sendto(p, fd, buf, length, flags, addr, addrlen, *_):
    flags, addrlen = s32(flags), addrlen & 0xFFFFFFFF
    sock = p.fd(fd).host
    length = min(length, MAX_RW_COUNT)
    if length and not p.user.access_ok(buf, length):
        return -errno.EFAULT
    raw = _guest_sockaddr(p, addr, addrlen)
    return _send(p, sock, buf, length, flags, raw)


def _stream(host: int) -> bool:
    SOL_SOCKET, SO_TYPE, SOCK_STREAM = 1, 3, 1
    kind = ctypes.c_int(0)
    size = ctypes.c_uint(4)
    _libc.getsockopt(host, SOL_SOCKET, SO_TYPE, ctypes.byref(kind), ctypes.byref(size))
    return kind.value == SOCK_STREAM


def _send(p, sock: int, buf: int, length: int, flags: int, raw: bytes) -> int:
    """A stream takes what the guest's buffer holds up to its first inaccessible byte; a datagram
    is all or nothing (EMSGSIZE above any socket's buffer, EFAULT for a hole in it)."""
    n = p.user.readable(buf, min(length, SEND_MAX)) if length else 0
    if not _stream(sock):
        if length > SEND_MAX:
            return -errno.EMSGSIZE
        if n < length:
            return -errno.EFAULT
    if length and not n:
        return -errno.EFAULT
    data = p.user.read(buf, n)
    return _sendto(p, sock, data, flags, raw)


def _sendto(p, sock: int, data: bytes, flags: int, raw: bytes) -> int:
    """sendto(2) on the host; a send that could block waits the way reads do (a timer's signal or
    --timeout ends the wait), then sends what fits."""
    if (p.deadline is not None or p.signals.alarm_at) and not flags & MSG_DONTWAIT and os.get_blocking(sock):
        while True:
            if not p.wait_writable(sock):
                return -errno.EINTR
            n = _libc.sendto(sock, data, len(data), flags | MSG_DONTWAIT, raw or None, len(raw))
            if n >= 0 or ctypes.get_errno() not in (errno.EAGAIN, errno.EWOULDBLOCK):
                return _check(n)
    return _check(_libc.sendto(sock, data, len(data), flags, raw or None, len(raw)))


@syscall("recvfrom")
def sys_recvfrom(p, fd, buf, length, flags, addr, len_ptr, *_):
    flags = s32(flags)
    if not flags & MSG_DONTWAIT and not p.wait_readable(p.fd(fd).host):
        return -errno.EINTR
    length = min(length, MAX_RW_COUNT)
    if length and not p.user.access_ok(buf, length):
        return -errno.EFAULT
    room = p.user.writable(buf, min(length, SEND_MAX)) if length else 0
    if length and not room:
        return -errno.EFAULT
    out = ctypes.create_string_buffer(max(room, 1))
    abuf = ctypes.create_string_buffer(128)
    asize = ctypes.c_uint(128)
    n = _check(_libc.recvfrom(p.fd(fd).host, out, room, flags, abuf, ctypes.byref(asize)))
    p.user.write(buf, out.raw[:n])
    _put_sockaddr(p, addr, len_ptr, abuf.raw[:asize.value])
    return n


def _msghdr(p, msg: int) -> tuple[int, int, list[tuple[int, int]]]:
    name, namelen, iov, iovlen = p.user.unpack("<QI4xQQ", msg)
    if iovlen > 1024:
        raise OSError(errno.EMSGSIZE, "too many iovecs")       # UIO_MAXIOV, as copy_msghdr_from_user says
    return name, namelen, p.user.iovecs(iov, iovlen)


@syscall("sendmsg")
def sys_sendmsg(p, fd, msg, flags, *_):
    flags = s32(flags)
    name, namelen, iovs = _msghdr(p, msg)
    data = bytearray()
    for b, n in iovs:
        if len(data) >= SEND_MAX:
            break
        data += p.user.read(b, min(n, SEND_MAX - len(data))) if n else b""
    data = bytes(data)
    raw = _guest_sockaddr(p, name, namelen)
    return _sendto(p, p.fd(fd).host, data, flags, raw)


@syscall("recvmsg")
def sys_recvmsg(p, fd, msg, flags, *_):
    flags = s32(flags)
    if not flags & MSG_DONTWAIT and not p.wait_readable(p.fd(fd).host):
        return -errno.EINTR
    name, namelen, iovs = _msghdr(p, msg)
    namelen = s32(namelen)
    if namelen < 0:
        return -errno.EINVAL
    for b, n in iovs:
        if n and not p.user.writable(b, 1):
            return -errno.EFAULT
    total = min(sum(n for _b, n in iovs), SEND_MAX)
    out = ctypes.create_string_buffer(max(total, 1))
    abuf = ctypes.create_string_buffer(128)
    asize = ctypes.c_uint(128)
    n = _check(_libc.recvfrom(p.fd(fd).host, out, total, flags, abuf, ctypes.byref(asize)))
    pos = 0
    for base, length in iovs:
        chunk = out.raw[pos:min(n, pos + length)]
        if chunk:
            p.user.write(base, chunk)
        pos += len(chunk)
    peer = _unix_names.get(abuf.raw[:asize.value].rstrip(b"\0"), abuf.raw[:asize.value])
    if name:
        p.user.write(name, peer[:namelen])
    # msg_namelen, then msg_controllen = 0 and msg_flags = 0: no ancillary data
    p.user.put_u32(msg + 8, len(peer) if name else 0)
    p.user.put_u64(msg + 40, 0)
    p.user.pack(msg + 48, "<i", 0)
    return n
