"""File, directory, pipe and descriptor system calls, served by the host's own files.

Guest memory goes through the uaccess layer (p.user); paths through the guest's view of the
file system (p.lookup), which serves the guest's own /proc (emsan.os.linux.procfs)."""
from __future__ import annotations

import errno
import fcntl
import functools
import operator
import os
import stat as st_mod
import struct
import time

from emsan.os.linux import procfs, structs
from emsan.os.linux.syscalls import syscall
from emsan.os.linux.uaccess import CHUNK, MAX_RW_COUNT

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_NO_AUTOMOUNT, AT_EMPTY_PATH = 0x100, 0x200, 0x400, 0x800, 0x1000
AT_EACCESS = 0x200
O_CLOEXEC = 0o2000000
O_ACCMODE = 3
TCGETS, TIOCGWINSZ, FIONBIO = 0x5401, 0x5413, 0x5421
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC = 0, 1, 2, 3, 4, 1030
FD_CLOEXEC = 1
PIPE_BUF = 4096
SEEK_SET, SEEK_CUR, SEEK_END, SEEK_DATA, SEEK_HOLE = 0, 1, 2, 3, 4


def s32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def s64(x: int) -> int:
    x &= 0xFFFF_FFFF_FFFF_FFFF
    return x - (1 << 64) if x >> 63 else x


def check_offset(off: int, count: int = 0) -> int:
    """A file position argument (loff_t): negative ones are EINVAL, as rw_verify_area says."""
    off = s64(off)
    if off < 0 or off + count > (1 << 63) - 1:
        raise OSError(errno.EINVAL, "bad file offset")
    return off


def _is_stream(host: int) -> bool:
    mode = os.fstat(host).st_mode
    return not (st_mod.S_ISREG(mode) or st_mod.S_ISBLK(mode))


# --- read / write: guest memory in bounded chunks, checked before anything is read --------------
def read_into(p, f, buf: int, count: int, off: int | None = None) -> int:
    """The kernel's read path: at most MAX_RW_COUNT bytes into the guest's buffer, no more than it
    can take (EFAULT if it can take none, before anything is consumed)."""
    if not p.user.access_ok(buf, count):
        return -errno.EFAULT
    count = min(count, MAX_RW_COUNT)
    if f.mem is not None:
        return f.mem.read_into(buf, count, off)
    if f.node is not None and f.node.is_dir:
        return -errno.EISDIR
    if not count:
        return 0
    room = p.user.writable(buf, count)
    if not room:
        return -errno.EFAULT
    host = f.host
    stream = _is_stream(host)
    if stream and off is not None:
        return -errno.ESPIPE
    if stream and not p.wait_readable(host):
        return -errno.EINTR     # --timeout ended the run while the read waited
    total = 0
    while total < room:
        want = min(CHUNK, room - total)
        data = os.read(host, want) if off is None else os.pread(host, want, off + total)
        if data:
            p.user.write(buf + total, data)
        total += len(data)
        if len(data) < want or stream:
            break
    return total


def write_from(p, f, buf: int, count: int, off: int | None = None) -> int:
    """The kernel's write path: EFAULT for a range outside user memory, then at most MAX_RW_COUNT
    bytes taken from the guest a chunk at a time, stopping at the first unreadable byte."""
    if not p.user.access_ok(buf, count):
        return -errno.EFAULT
    count = min(count, MAX_RW_COUNT)
    if f.mem is not None:
        return f.mem.write_from(buf, count, off)
    if f.node is not None:
        return f.node.write(p, p.user.read(buf, min(count, 4096))) if count else 0
    if not count:
        return 0
    host = f.host
    careful = (p.deadline is not None or p.signals.alarm_at) and _is_stream(host)
    if careful and off is not None:
        return -errno.ESPIPE
    total = 0
    for chunk in p.user.chunks(buf, count):
        pos = 0
        while pos < len(chunk):
            if careful:                    # a pipe nobody drains must not outlive --timeout
                if not p.wait_writable(host, partial=total > 0):
                    return total or -errno.EINTR
                piece = chunk[pos:pos + PIPE_BUF]
            else:
                piece = chunk[pos:] if pos else chunk
            n = os.write(host, piece) if off is None else os.pwrite(host, piece, off + total)
            pos += n
            total += n
            if n < len(piece) and not careful:
                return total
    return total


@syscall("read")
def sys_read(p, fd, buf, count, *_):
    return read_into(p, p.fd(fd), buf, count)


@syscall("pread64")
def sys_pread(p, fd, buf, count, off, *_):
    f = p.fd(fd)
    return read_into(p, f, buf, count, check_offset(off))


@syscall("write")
def sys_write(p, fd, buf, count, *_):
    return write_from(p, p.fd(fd), buf, count)


@syscall("pwrite64")
def sys_pwrite(p, fd, buf, count, off, *_):
    f = p.fd(fd)
    return write_from(p, f, buf, count, check_offset(off))


def _vector_position(p, off: int) -> int | None:
    """The file position of preadv/pwritev (always) and of their *2 forms (-1: the current one)."""
    if p.current_syscall in ("readv", "writev"):
        return None
    if p.current_syscall.endswith("2") and s64(off) == -1:
        return None
    return check_offset(off)


def _vector(p, fd, iov, cnt, off, transfer) -> int:
    """readv/writev and their positioned forms: segment after segment until one falls short."""
    f = p.fd(fd)
    pos = _vector_position(p, off)
    total = 0
    for base, length in p.user.iovecs(iov, cnt):
        if not length:
            continue
        n = transfer(p, f, base, length, None if pos is None else pos + total)
        if n < 0:
            return n if not total else total
        total += n
        if n < length:
            break
    return total


@syscall("readv", "preadv", "preadv2")
def sys_readv(p, fd, iov, cnt, off=0, *_):
    return _vector(p, fd, iov, cnt, off, read_into)


@syscall("writev", "pwritev", "pwritev2")
def sys_writev(p, fd, iov, cnt, off=0, *_):
    return _vector(p, fd, iov, cnt, off, write_from)


@syscall("sendfile")
def sys_sendfile(p, out_fd, in_fd, off_ptr, count, *_):
    src, dst = p.fd(in_fd), p.fd(out_fd)
    count = min(count, MAX_RW_COUNT, CHUNK * 16)
    if src.node is not None or src.mem is not None or dst.mem is not None:
        return -errno.EINVAL
    if off_ptr:
        off = check_offset(p.user.unpack("<q", off_ptr)[0])
        data = os.pread(src.host, count, off)
        p.user.pack(off_ptr, "<q", off + len(data))
    else:
        data = os.read(src.host, count)
    return os.write(dst.host, data) if data else 0


@syscall("copy_file_range")
def sys_copy_file_range(p, *_):
    return -errno.EXDEV     # callers fall back to read/write


@syscall("lseek")
def sys_lseek(p, fd, off, whence, *_):
    f = p.fd(fd)
    whence &= 0xFFFFFFFF
    if whence > SEEK_HOLE:
        return -errno.EINVAL
    if f.mem is not None:
        return f.mem.lseek(off, whence)
    if f.dir_entries is not None:
        if whence == SEEK_SET and off == 0:                    # rewinddir: read the directory afresh
            f.dir_entries = None
            f.dir_pos = 0
            return 0
        if whence == SEEK_SET and 0 < off <= len(f.dir_entries):   # d_off values are positions (seekdir)
            f.dir_pos = off
            return off
        if whence == SEEK_CUR and off == 0:                    # telldir
            return f.dir_pos
        return -errno.EINVAL
    return os.lseek(f.host, s64(off), whence)


# --- open / close / dup ---------------------------------------------------------------------------
@syscall("open")
def sys_open(p, path, flags, mode, *_):
    return _openat(p, AT_FDCWD, path, flags, mode)


@syscall("openat")
def sys_openat(p, dirfd, path, flags, mode, *_):
    return _openat(p, s32(dirfd), path, flags, mode)


@syscall("openat2")
def sys_openat2(p, dirfd, path, how, size, *_):
    if size < 24 or size > 4096:
        return -errno.EINVAL
    flags, mode, resolve = p.user.unpack("<QQQ", how)
    if resolve or flags >> 32:
        return -errno.EINVAL          # RESOLVE_* restrictions are not modelled: refuse, do not ignore
    return _openat(p, s32(dirfd), path, flags, mode)


@syscall("creat")
def sys_creat(p, path, mode, *_):
    return _openat(p, AT_FDCWD, path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)


# The flags open(2) knows; it ignores the others (only openat2 refuses them).
VALID_OPEN = functools.reduce(operator.or_, (getattr(os, n, 0) for n in (
    "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DSYNC", "O_ASYNC", "O_DIRECT",
    "O_LARGEFILE", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_PATH", "O_TMPFILE", "O_SYNC")), 3)


def _openat(p, dirfd, path_ptr, flags, mode):
    flags &= 0xFFFFFFFF
    gpath = p.user.path(path_ptr)
    hflags = structs.open_flags_to_host(p.arch.name, flags) & VALID_OPEN
    target = p.lookup(dirfd, gpath, follow=not hflags & os.O_NOFOLLOW)
    if isinstance(target, procfs.Node):
        return procfs.open_node(p, target, hflags, bool(flags & O_CLOEXEC))
    dfd, hpath = target
    host = os.open(hpath, hflags | os.O_CLOEXEC, mode & 0o7777, dir_fd=dfd)
    if not hpath.startswith("/"):
        hpath = os.path.join(p.cwd if dfd is None else os.readlink(f"/proc/self/fd/{dfd}"), hpath)
    # Remember a host path that names the same file (for module symbols and the guest's /proc).
    return p.alloc_fd(host, os.path.normpath(hpath), bool(flags & O_CLOEXEC))


@syscall("close")
def sys_close(p, fd, *_):
    p.close_fd(fd)
    return 0


@syscall("close_range")
def sys_close_range(p, first, last, flags, *_):
    CLOSE_RANGE_UNSHARE, CLOSE_RANGE_CLOEXEC = 2, 4
    first, last = first & 0xFFFFFFFF, last & 0xFFFFFFFF
    if flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC) or first > last:
        return -errno.EINVAL
    for fd in [f for f in p.fds if first <= f <= last]:
        if flags & CLOSE_RANGE_CLOEXEC:
            p.fds[fd].cloexec = True
        else:
            p.close_fd(fd)
    return 0


@syscall("dup")
def sys_dup(p, fd, *_):
    return p.dup_fd(p.fd(fd), False)


@syscall("dup2")
def sys_dup2(p, old, new, *_):
    if old & 0xFFFFFFFF == new & 0xFFFFFFFF:
        p.fd(old)
        return new & 0xFFFFFFFF
    return sys_dup3(p, old, new, 0)


@syscall("dup3")
def sys_dup3(p, old, new, flags, *_):
    old, new = old & 0xFFFFFFFF, new & 0xFFFFFFFF
    if flags & ~O_CLOEXEC or old == new:
        return -errno.EINVAL
    f = p.fd(old)
    if new >= p.fd_limit():
        return -errno.EBADF
    if new in p.fds:
        p.close_fd(new)
    return p.dup_fd(f, bool(flags & O_CLOEXEC), at=new)


@syscall("fcntl")
def sys_fcntl(p, fd, cmd, arg, *_):
    f = p.fd(fd)
    cmd = s32(cmd)
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        arg &= 0xFFFFFFFF                    # f_dupfd() takes an unsigned int
        if arg >= p.fd_limit():
            return -errno.EINVAL
        return p.dup_fd(f, cmd == F_DUPFD_CLOEXEC, lowest=arg)
    if cmd == F_GETFD:
        return FD_CLOEXEC if f.cloexec else 0
    if cmd == F_SETFD:
        f.cloexec = bool(arg & FD_CLOEXEC)
        return 0
    if cmd == F_GETFL:
        return structs.open_flags_from_host(p.arch.name, fcntl.fcntl(f.host, F_GETFL) & ~os.O_CLOEXEC)
    if cmd == F_SETFL:
        settable = os.O_APPEND | os.O_NONBLOCK | os.O_ASYNC | os.O_DIRECT | os.O_NOATIME
        return fcntl.fcntl(f.host, F_SETFL, structs.open_flags_to_host(p.arch.name, arg & 0xFFFFFFFF) & settable)
    if cmd in (5, 6, 7, 36, 37, 38):    # record locks: a single process never conflicts with itself
        return 0
    if cmd in (1031, 1032):              # F_SETPIPE_SZ / F_GETPIPE_SZ
        return fcntl.fcntl(f.host, cmd, min(arg, 1 << 20)) if cmd == 1031 else fcntl.fcntl(f.host, cmd)
    return -errno.EINVAL


@syscall("ioctl")
def sys_ioctl(p, fd, req, arg, *_):
    f = p.fd(fd)
    req &= 0xFFFFFFFF
    if f.node is not None or f.mem is not None:
        return -errno.ENOTTY
    if req in (TCGETS, TIOCGWINSZ):
        size = 36 if req == TCGETS else 8
        try:
            out = fcntl.ioctl(f.host, req, bytes(size))
        except OSError as e:
            return -e.errno
        p.user.write(arg, out)
        return 0
    if req == FIONBIO:
        flags = fcntl.fcntl(f.host, F_GETFL)
        on = struct.unpack("<i", p.user.read(arg, 4))[0]
        fcntl.fcntl(f.host, F_SETFL, flags | os.O_NONBLOCK if on else flags & ~os.O_NONBLOCK)
        return 0
    return -errno.ENOTTY


@syscall("pipe")
def sys_pipe(p, fds, *_):
    return sys_pipe2(p, fds, 0)


@syscall("pipe2")
def sys_pipe2(p, fds, flags, *_):
    if flags & ~(O_CLOEXEC | os.O_NONBLOCK | os.O_DIRECT):
        return -errno.EINVAL
    if not p.user.writable(fds, 8) == 8:
        return -errno.EFAULT
    r, w = os.pipe2(os.O_CLOEXEC | (flags & (os.O_NONBLOCK | os.O_DIRECT)))
    gr = p.alloc_fd(r, "pipe:", bool(flags & O_CLOEXEC))
    gw = p.alloc_fd(w, "pipe:", bool(flags & O_CLOEXEC))
    p.user.pack(fds, "<ii", gr, gw)
    return 0


# --- metadata ----------------------------------------------------------------------------------
def stat_at(p, dirfd, path_ptr, flags):
    """stat() of a path (or of dirfd with AT_EMPTY_PATH), through the guest's view of the files."""
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_EMPTY_PATH | 0x6000):   # 0x6000: AT_STATX_SYNC_TYPE
        raise OSError(errno.EINVAL, "bad flags")
    gpath = p.user.path(path_ptr) if path_ptr or not flags & AT_EMPTY_PATH else ""
    if gpath == "":
        if not flags & AT_EMPTY_PATH:
            raise OSError(errno.ENOENT, "empty path")
        if dirfd == AT_FDCWD:
            return p.stat_cwd()
        return p.fstat(p.fd(dirfd))
    target = p.lookup(dirfd, gpath, follow=not flags & AT_SYMLINK_NOFOLLOW)
    if isinstance(target, procfs.Node):
        return target.stat(p)
    dfd, hpath = target
    return os.stat(hpath, dir_fd=dfd, follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW)


@syscall("stat")
def sys_stat(p, path, buf, *_):
    p.user.write(buf, structs.pack_stat(p.arch.name, stat_at(p, AT_FDCWD, path, 0)))
    return 0


@syscall("lstat")
def sys_lstat(p, path, buf, *_):
    p.user.write(buf, structs.pack_stat(p.arch.name, stat_at(p, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW)))
    return 0


@syscall("fstat")
def sys_fstat(p, fd, buf, *_):
    p.user.write(buf, structs.pack_stat(p.arch.name, p.fstat(p.fd(fd))))
    return 0


@syscall("newfstatat", "fstatat64")
def sys_newfstatat(p, dirfd, path, buf, flags, *_):
    p.user.write(buf, structs.pack_stat(p.arch.name, stat_at(p, s32(dirfd), path, flags & 0xFFFFFFFF)))
    return 0


@syscall("statx")
def sys_statx(p, dirfd, path, flags, mask, buf, *_):
    if mask & 0x8000_0000:                   # STATX__RESERVED
        return -errno.EINVAL
    p.user.write(buf, structs.pack_statx(stat_at(p, s32(dirfd), path, flags & 0xFFFFFFFF)))
    return 0


@syscall("statfs", "fstatfs")
def sys_statfs(p, target, buf, *_):
    if p.current_syscall == "fstatfs":
        f = p.fd(target)
        sv = os.statvfs("/proc") if f.node is not None or f.mem is not None else os.fstatvfs(f.host)
    else:
        found = p.lookup(AT_FDCWD, p.user.path(target))
        sv = os.statvfs("/proc") if isinstance(found, procfs.Node) else os.statvfs(
            found[1] if found[0] is None else os.path.join(f"/proc/self/fd/{found[0]}", found[1]))
    # struct statfs (64-bit): type, bsize, blocks, bfree, bavail, files, ffree, fsid[2], namelen, frsize, flags, spare[4]
    data = struct.pack("<qqQQQQQiiqqq4q", 0xEF53, sv.f_bsize, sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files,
                       sv.f_ffree, 0, 0, sv.f_namemax, sv.f_frsize, sv.f_flag, 0, 0, 0, 0)
    p.user.write(buf, data)
    return 0


@syscall("access")
def sys_access(p, path, mode, *_):
    return sys_faccessat(p, AT_FDCWD, path, mode, 0)


@syscall("faccessat", "faccessat2")
def sys_faccessat(p, dirfd, path, mode, flags=0, *_):
    if p.current_syscall != "faccessat2":
        flags = 0
    if mode & ~7 or flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        return -errno.EINVAL
    gpath = p.user.path(path)
    target = p.lookup(s32(dirfd), gpath, follow=not flags & AT_SYMLINK_NOFOLLOW)
    if isinstance(target, procfs.Node):
        return target.access(p, mode)
    dfd, hpath = target
    if os.access(hpath, mode, dir_fd=dfd, follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW):
        return 0
    os.stat(hpath, dir_fd=dfd, follow_symlinks=not flags & AT_SYMLINK_NOFOLLOW)     # ENOENT, ENOTDIR...
    return -errno.EACCES


@syscall("readlink")
def sys_readlink(p, path, buf, size, *_):
    return sys_readlinkat(p, AT_FDCWD, path, buf, size)


@syscall("readlinkat")
def sys_readlinkat(p, dirfd, path, buf, size, *_):
    size = s32(size)
    if size <= 0:
        return -errno.EINVAL
    gpath = p.user.path(path)
    target = p.lookup(s32(dirfd), gpath, follow=False)
    if isinstance(target, procfs.Node):
        link = os.fsencode(target.readlink(p))
    else:
        dfd, hpath = target
        link = os.fsencode(os.readlink(hpath, dir_fd=dfd))
    link = link[:size]
    p.user.write(buf, link)
    return len(link)


DTYPE = {0o040000: 4, 0o100000: 8, 0o120000: 10, 0o020000: 2, 0o060000: 6, 0o010000: 1, 0o140000: 12}


@syscall("getdents64", "getdents")
def sys_getdents64(p, fd, buf, count, *_):
    f = p.fd(fd)
    count = min(count & 0xFFFFFFFF, MAX_RW_COUNT)
    if f.dir_entries is None:
        if f.node is not None:
            if not f.node.is_dir:
                return -errno.ENOTDIR
            f.dir_entries, f.dir_pos = f.node.entries(p), 0
        else:
            if not st_mod.S_ISDIR(os.fstat(f.host).st_mode):
                return -errno.ENOTDIR
            ents = []
            for name in [".", "..", *os.listdir(f.host)]:
                try:
                    st = os.stat(name, dir_fd=f.host, follow_symlinks=False)
                except OSError:
                    continue            # removed since the listing
                ents.append((st.st_ino, DTYPE.get(st.st_mode & 0o170000, 0), os.fsencode(name)))
            f.dir_entries, f.dir_pos = ents, 0
    legacy = p.current_syscall == "getdents"     # x86-64's old struct linux_dirent: d_type last
    out = bytearray()
    while f.dir_pos < len(f.dir_entries):
        ino, dtype, name = f.dir_entries[f.dir_pos]
        reclen = ((18 if legacy else 19) + len(name) + (2 if legacy else 1) + 7) & ~7
        if len(out) + reclen > count:
            break
        if legacy:
            rec = (struct.pack("<QqH", ino, f.dir_pos + 1, reclen) + name + b"\0").ljust(reclen - 1, b"\0")
            rec += bytes([dtype])
        else:
            rec = (struct.pack("<QqHB", ino, f.dir_pos + 1, reclen, dtype) + name + b"\0").ljust(reclen, b"\0")
        out += rec
        f.dir_pos += 1
    if not out and f.dir_pos < len(f.dir_entries):
        return -errno.EINVAL
    p.user.write(buf, bytes(out))
    return len(out)


@syscall("getcwd")
def sys_getcwd(p, buf, size, *_):
    cwd = os.fsencode(p.guest_cwd()) + b"\0"
    if len(cwd) > size:
        return -errno.ERANGE
    p.user.write(buf, cwd)
    return len(cwd)


@syscall("chdir")
def sys_chdir(p, path, *_):
    p.chdir(p.lookup(AT_FDCWD, p.user.path(path)))
    return 0


@syscall("fchdir")
def sys_fchdir(p, fd, *_):
    f = p.fd(fd)
    if f.node is not None:
        p.chdir(f.node)
    else:
        if not st_mod.S_ISDIR(os.fstat(f.host).st_mode):
            return -errno.ENOTDIR
        p.chdir((None, os.readlink(f"/proc/self/fd/{f.host}")))
    return 0


# --- changing the file system ------------------------------------------------------------------------
def _path(p, dirfd, ptr, follow: bool = False):
    """A host path for a call that changes the file system (the guest's /proc refuses those)."""
    return p.path_at(s32(dirfd), p.user.path(ptr), follow=follow)


@syscall("mkdir")
def sys_mkdir(p, path, mode, *_):
    return sys_mkdirat(p, AT_FDCWD, path, mode)


@syscall("mkdirat")
def sys_mkdirat(p, dirfd, path, mode, *_):
    dfd, hpath = _path(p, dirfd, path)
    os.mkdir(hpath, mode & 0o7777, dir_fd=dfd)
    return 0


@syscall("unlink", "rmdir")
def sys_unlink(p, path, *_):
    return sys_unlinkat(p, AT_FDCWD, path, AT_REMOVEDIR if p.current_syscall == "rmdir" else 0)


@syscall("unlinkat")
def sys_unlinkat(p, dirfd, path, flags, *_):
    if flags & ~AT_REMOVEDIR:
        return -errno.EINVAL
    dfd, hpath = _path(p, dirfd, path)
    (os.rmdir if flags & AT_REMOVEDIR else os.unlink)(hpath, dir_fd=dfd)
    return 0


@syscall("rename")
def sys_rename(p, old, new, *_):
    return sys_renameat2(p, AT_FDCWD, old, AT_FDCWD, new, 0)


@syscall("renameat", "renameat2")
def sys_renameat2(p, olddir, old, newdir, new, flags=0, *_):
    if p.current_syscall == "renameat":
        flags = 0
    if flags & ~1:
        return -errno.EINVAL
    odfd, opath = _path(p, olddir, old)
    ndfd, npath = _path(p, newdir, new)
    if flags & 1 and os.path.lexists(os.path.join(f"/proc/self/fd/{ndfd}", npath) if ndfd is not None else npath):
        return -errno.EEXIST      # RENAME_NOREPLACE
    os.rename(opath, npath, src_dir_fd=odfd, dst_dir_fd=ndfd)
    return 0


@syscall("link", "linkat")
def sys_link(p, *a):
    if p.current_syscall == "link":
        a = (AT_FDCWD, a[0], AT_FDCWD, a[1], 0)
    if a[4] & ~(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH):
        return -errno.EINVAL
    odfd, opath = _path(p, a[0], a[1])
    ndfd, npath = _path(p, a[2], a[3])
    os.link(opath, npath, src_dir_fd=odfd, dst_dir_fd=ndfd, follow_symlinks=bool(a[4] & AT_SYMLINK_FOLLOW))
    return 0


@syscall("symlink", "symlinkat")
def sys_symlink(p, *a):
    if p.current_syscall == "symlink":
        a = (a[0], AT_FDCWD, a[1])
    target = p.user.path(a[0])
    if not target:
        return -errno.ENOENT
    dfd, hpath = _path(p, a[1], a[2])
    os.symlink(target, hpath, dir_fd=dfd)
    return 0


@syscall("chmod", "fchmod", "fchmodat")
def sys_chmod(p, *a):
    name = p.current_syscall
    if name == "fchmod":
        f = p.fd(a[0])
        if f.node is not None or f.mem is not None:
            return -errno.EPERM
        os.chmod(f.host, a[1] & 0o7777)
        return 0
    if name == "chmod":
        a = (AT_FDCWD, a[0], a[1])
    dfd, hpath = _path(p, a[0], a[1], follow=True)
    os.chmod(hpath, a[2] & 0o7777, dir_fd=dfd)
    return 0


@syscall("chown", "fchown", "lchown", "fchownat")
def sys_chown(p, *a):
    return 0 if os.geteuid() == 0 else -errno.EPERM


UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def _set_times(p, dirfd, path_ptr, times: list[tuple[int, int]] | None, flags: int) -> int:
    """utimensat's semantics: (sec, nsec) for atime and mtime, UTIME_NOW/UTIME_OMIT allowed."""
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        return -errno.EINVAL
    if times is not None:
        for sec, ns in times:
            if ns not in (UTIME_NOW, UTIME_OMIT) and not 0 <= ns < 10**9:
                return -errno.EINVAL
    follow = not flags & AT_SYMLINK_NOFOLLOW
    if path_ptr:
        dfd, hpath = _path(p, dirfd, path_ptr, follow=follow)
        target: dict = {"path": hpath, "dir_fd": dfd, "follow_symlinks": follow}
    else:
        f = p.fd(dirfd)
        if f.node is not None or f.mem is not None:
            return -errno.EPERM
        target = {"path": f.host}
    if times is None or all(ns == UTIME_NOW for _s, ns in times):
        os.utime(**target)
        return 0
    if all(ns == UTIME_OMIT for _s, ns in times):
        return 0
    st = os.stat(**target)
    old = (st.st_atime_ns, st.st_mtime_ns)
    now = time.time_ns()
    ns = tuple(o if n == UTIME_OMIT else now if n == UTIME_NOW else max(-2**62, min(2**62, sec * 10**9 + n))
               for (sec, n), o in zip(times, old))
    os.utime(**target, ns=ns)
    return 0


@syscall("utimensat")
def sys_utimensat(p, dirfd, path, times, flags, *_):
    t = p.user.unpack("<qqqq", times) if times else None
    return _set_times(p, s32(dirfd), path, [(t[0], t[1]), (t[2], t[3])] if t else None, flags & 0xFFFFFFFF)


@syscall("utimes", "futimesat")
def sys_utimes(p, *a):
    dirfd, path, times = (AT_FDCWD, a[0], a[1]) if p.current_syscall == "utimes" else (s32(a[0]), a[1], a[2])
    t = p.user.unpack("<qqqq", times) if times else None     # two struct timeval
    if t and not all(0 <= us < 10**6 for us in (t[1], t[3])):
        return -errno.EINVAL
    return _set_times(p, dirfd, path, [(t[0], t[1] * 1000), (t[2], t[3] * 1000)] if t else None, 0)


@syscall("utime")
def sys_utime(p, path, times, *_):
    t = p.user.unpack("<qq", times) if times else None       # struct utimbuf
    return _set_times(p, AT_FDCWD, path, [(t[0], 0), (t[1], 0)] if t else None, 0)


@syscall("ftruncate")
def sys_ftruncate(p, fd, length, *_):
    f = p.fd(fd)
    if s64(length) < 0:
        return -errno.EINVAL
    if f.node is not None or f.mem is not None:
        return -errno.EINVAL
    os.ftruncate(f.host, s64(length))
    return 0


@syscall("truncate")
def sys_truncate(p, path, length, *_):
    if s64(length) < 0:
        return -errno.EINVAL
    dfd, hpath = _path(p, AT_FDCWD, path, follow=True)
    os.truncate(hpath if dfd is None else f"/proc/self/fd/{dfd}/{hpath}", s64(length))
    return 0


@syscall("fsync", "fdatasync", "syncfs")
def sys_fsync(p, fd, *_):
    p.fd(fd)
    return 0


@syscall("sync")
def sys_sync(p, *_):
    return 0


@syscall("fadvise64", "flock", "fallocate")
def sys_fadvise(p, fd, *_):
    p.fd(fd)
    return 0


@syscall("readahead", "sync_file_range")
def sys_readahead(p, fd, *_):
    p.fd(fd)
    return 0


@syscall("memfd_create")
def sys_memfd_create(p, name, flags, *_):
    MFD_CLOEXEC, MFD_ALLOW_SEALING = 1, 2
    if flags & ~(MFD_CLOEXEC | MFD_ALLOW_SEALING | 4 | 8 | 0x3F << 26):   # HUGETLB, NOEXEC_SEAL, huge sizes
        return -errno.EINVAL
    label = p.user.cstr(name, 250, errno.EINVAL).decode(errors="replace")
    host = os.memfd_create(label, os.MFD_CLOEXEC | (flags & MFD_ALLOW_SEALING))
    return p.alloc_fd(host, f"/memfd:{label}", bool(flags & MFD_CLOEXEC))


@syscall("mknod", "mknodat")
def sys_mknodat(p, *a):
    dirfd, path, mode, dev = (AT_FDCWD, *a[:3], 0) if p.current_syscall == "mknod" else (s32(a[0]), *a[1:4])
    if p.current_syscall == "mknod":
        dev = a[2]
    dfd, hpath = _path(p, dirfd, path)
    os.mknod(hpath, mode & 0o177777, dev & 0xFFFFFFFF, dir_fd=dfd)
    return 0


@syscall("umask")
def sys_umask(p, mask, *_):
    return os.umask(mask & 0o777)


# --- extended attributes (ls -l asks for ACLs and security labels) ---------------------------------
XATTR_NAME_MAX, XATTR_SIZE_MAX = 255, 65536


def _xattr_name(p, ptr) -> str:
    name = p.user.cstr(ptr, XATTR_NAME_MAX + 1, errno.ERANGE).decode(errors="surrogateescape")
    if not name:
        raise OSError(errno.ERANGE, "empty attribute name")
    return name


def _xattr_target(p, target):
    """The file a *xattr call names: a host fd or a host path (never one of the guest's /proc)."""
    if p.current_syscall.startswith("f"):
        f = p.fd(target)
        if f.node is not None or f.mem is not None:
            raise OSError(errno.EOPNOTSUPP, "no attributes")
        return f.host
    dfd, hpath = _path(p, AT_FDCWD, target, follow=not p.current_syscall.startswith("l"))
    return hpath if dfd is None else f"/proc/self/fd/{dfd}/{hpath}"


@syscall("getxattr", "lgetxattr", "fgetxattr")
def sys_getxattr(p, target, name, value, size, *_):
    attr = _xattr_name(p, name)
    where = _xattr_target(p, target)
    data = os.getxattr(where, attr, follow_symlinks=p.current_syscall != "lgetxattr")
    if size == 0:
        return len(data)
    if len(data) > size:
        return -errno.ERANGE
    p.user.write(value, data)
    return len(data)


@syscall("setxattr", "lsetxattr", "fsetxattr")
def sys_setxattr(p, target, name, value, size, flags, *_):
    if size > XATTR_SIZE_MAX:
        return -errno.E2BIG
    if flags & ~3:
        return -errno.EINVAL
    attr = _xattr_name(p, name)
    data = p.user.read(value, size) if size else b""
    os.setxattr(_xattr_target(p, target), attr, data, flags, follow_symlinks=p.current_syscall != "lsetxattr")
    return 0


@syscall("removexattr", "lremovexattr", "fremovexattr")
def sys_removexattr(p, target, name, *_):
    attr = _xattr_name(p, name)
    os.removexattr(_xattr_target(p, target), attr, follow_symlinks=p.current_syscall != "lremovexattr")
    return 0


@syscall("listxattr", "llistxattr", "flistxattr")
def sys_listxattr(p, target, buf, size, *_):
    names = os.listxattr(_xattr_target(p, target), follow_symlinks=p.current_syscall != "llistxattr")
    data = b"".join(os.fsencode(n) + b"\0" for n in names)
    if size == 0:
        return len(data)
    if len(data) > size:
        return -errno.ERANGE
    p.user.write(buf, data)
    return len(data)
