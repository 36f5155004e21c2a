"""File, directory, pipe and descriptor system calls, served by the host's own files."""
from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from emsan.os.linux import structs
from emsan.os.linux.syscalls import syscall

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW, AT_REMOVEDIR, AT_EMPTY_PATH = 0x100, 0x200, 0x1000
O_CLOEXEC = 0o2000000
TCGETS, TIOCGWINSZ, FIONBIO = 0x5401, 0x5413, 0x5421
F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC = 0, 1, 2, 3, 4, 1030
FD_CLOEXEC = 1


def s32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


# --- read / write ------------------------------------------------------------------------------
@syscall("read")
def sys_read(p, fd, buf, count, *_):
    host = p.fd(fd).host
    if not p.wait_readable(host):
        return -errno.EINTR     # --timeout ended the run while the read waited
    data = os.read(host, min(count, 1 << 24))
    p.machine.write(buf, data)
    return len(data)


@syscall("pread64")
def sys_pread(p, fd, buf, count, off, *_):
    data = os.pread(p.fd(fd).host, min(count, 1 << 24), off)
    p.machine.write(buf, data)
    return len(data)


@syscall("write")
def sys_write(p, fd, buf, count, *_):
    return os.write(p.fd(fd).host, p.machine.read(buf, count)) if count else 0


@syscall("pwrite64")
def sys_pwrite(p, fd, buf, count, off, *_):
    return os.pwrite(p.fd(fd).host, p.machine.read(buf, count), off)


def _iovecs(p, iov, cnt):
    raw = p.machine.read(iov, 16 * cnt) if cnt else b""
    return [struct.unpack_from("<QQ", raw, 16 * i) for i in range(cnt)]


@syscall("readv", "preadv")
def sys_readv(p, fd, iov, cnt, off=None, *_):
    host = p.fd(fd).host
    if not p.wait_readable(host):
        return -errno.EINTR
    total = 0
    for base, length in _iovecs(p, iov, cnt):
        if not length:
            continue
        data = os.read(host, length) if off is None or p.current_syscall == "readv" else os.pread(host, length, off + total)
        p.machine.write(base, data)
        total += len(data)
        if len(data) < length:
            break
    return total


@syscall("writev", "pwritev")
def sys_writev(p, fd, iov, cnt, off=None, *_):
    data = b"".join(p.machine.read(b, n) for b, n in _iovecs(p, iov, cnt) if n)
    host = p.fd(fd).host
    if p.current_syscall == "pwritev":
        return os.pwrite(host, data, off)
    return os.write(host, data) if data else 0


@syscall("sendfile")
def sys_sendfile(p, out_fd, in_fd, off_ptr, count, *_):
    src = p.fd(in_fd).host
    if off_ptr:
        off = struct.unpack("<q", p.machine.read(off_ptr, 8))[0]
        data = os.pread(src, min(count, 1 << 24), off)
        p.machine.write(off_ptr, struct.pack("<q", off + len(data)))
    else:
        data = os.read(src, min(count, 1 << 24))
    return os.write(p.fd(out_fd).host, data) if data else 0


@syscall("copy_file_range")
def sys_copy_file_range(p, *_):
    return -errno.EXDEV     # callers fall back to read/write


@syscall("lseek")
def sys_lseek(p, fd, off, whence, *_):
    f = p.fd(fd)
    if f.dir_entries is not None:
        if whence == 0 and off == 0:                           # rewinddir: read the directory afresh
            f.dir_entries = None
            return 0
        if whence == 0 and 0 < off <= len(f.dir_entries):      # d_off values are positions (seekdir)
            f.dir_pos = off
            return off
        if whence == 1 and off == 0:                           # telldir
            return f.dir_pos
        return -errno.EINVAL
    return os.lseek(f.host, struct.unpack("<q", struct.pack("<Q", off))[0], whence)


# --- open / close / dup ---------------------------------------------------------------------------
@syscall("open")
def sys_open(p, path, flags, mode, *_):
    return _openat(p, AT_FDCWD, path, flags, mode)


@syscall("openat")
def sys_openat(p, dirfd, path, flags, mode, *_):
    return _openat(p, s32(dirfd), path, flags, mode)


@syscall("creat")
def sys_creat(p, path, mode, *_):
    return _openat(p, AT_FDCWD, path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)


def _openat(p, dirfd, path_ptr, flags, mode):
    gpath = p.machine.read_cstr(path_ptr).decode(errors="surrogateescape")
    special = p.special_file(gpath)
    if special is not None:
        return p.alloc_fd(special, gpath, bool(flags & O_CLOEXEC))
    dfd, hpath = p.path_at(dirfd, gpath)
    hflags = structs.open_flags_to_host(p.arch.name, flags) | os.O_CLOEXEC
    host = os.open(hpath, hflags, mode & 0o7777, dir_fd=dfd)
    # Remember a host path that names the same file (for module symbols and /proc/self/maps).
    return p.alloc_fd(host, hpath if hpath.startswith("/") else os.path.join(p.cwd, hpath), bool(flags & O_CLOEXEC))


@syscall("close")
def sys_close(p, fd, *_):
    p.close_fd(fd)
    return 0


@syscall("close_range")
def sys_close_range(p, first, last, flags, *_):
    for fd in [f for f in p.fds if first <= f <= last]:
        p.close_fd(fd)
    return 0


@syscall("dup")
def sys_dup(p, fd, *_):
    f = p.fd(fd)
    return p.alloc_fd(os.dup(f.host), f.path, False)


@syscall("dup2")
def sys_dup2(p, old, new, *_):
    if old == new:
        p.fd(old)
        return new
    return sys_dup3(p, old, new, 0)


@syscall("dup3")
def sys_dup3(p, old, new, flags, *_):
    f = p.fd(old)
    if old == new:
        return -errno.EINVAL
    if new in p.fds:
        p.close_fd(new)
    return p.alloc_fd(os.dup(f.host), f.path, bool(flags & O_CLOEXEC), at=new)


@syscall("fcntl")
def sys_fcntl(p, fd, cmd, arg, *_):
    f = p.fd(fd)
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        return p.alloc_fd(os.dup(f.host), f.path, cmd == F_DUPFD_CLOEXEC, lowest=arg)
    if cmd == F_GETFD:
        return FD_CLOEXEC if f.cloexec else 0
    if cmd == F_SETFD:
        f.cloexec = bool(arg & FD_CLOEXEC)
        return 0
    if cmd == F_GETFL:
        return structs.open_flags_from_host(p.arch.name, fcntl.fcntl(f.host, F_GETFL) & ~O_CLOEXEC)
    if cmd == F_SETFL:
        return fcntl.fcntl(f.host, F_SETFL, structs.open_flags_to_host(p.arch.name, arg))
    if cmd in (5, 6, 7, 36, 37, 38):    # record locks: a single process never conflicts with itself
        return 0
    return -errno.EINVAL


@syscall("ioctl")
def sys_ioctl(p, fd, req, arg, *_):
    f = p.fd(fd)
    req &= 0xFFFFFFFF
    if req in (TCGETS, TIOCGWINSZ):
        size = 36 if req == TCGETS else 8
        try:
            out = fcntl.ioctl(f.host, req, bytes(size))
        except OSError as e:
            return -e.errno
        p.machine.write(arg, out)
        return 0
    if req == FIONBIO:
        flags = fcntl.fcntl(f.host, F_GETFL)
        on = struct.unpack("<i", p.machine.read(arg, 4))[0]
        fcntl.fcntl(f.host, F_SETFL, flags | os.O_NONBLOCK if on else flags & ~os.O_NONBLOCK)
        return 0
    return -errno.ENOTTY


@syscall("pipe")
def sys_pipe(p, fds, *_):
    return sys_pipe2(p, fds, 0)


@syscall("pipe2")
def sys_pipe2(p, fds, flags, *_):
    r, w = os.pipe2(os.O_CLOEXEC | (flags & os.O_NONBLOCK))
    gr = p.alloc_fd(r, "pipe:", bool(flags & O_CLOEXEC))
    gw = p.alloc_fd(w, "pipe:", bool(flags & O_CLOEXEC))
    p.machine.write(fds, struct.pack("<ii", gr, gw))
    return 0


# --- metadata ----------------------------------------------------------------------------------
def _stat_at(p, dirfd, path_ptr, flags):
    gpath = p.machine.read_cstr(path_ptr).decode(errors="surrogateescape") if path_ptr else ""
    follow = not flags & AT_SYMLINK_NOFOLLOW
    if gpath == "" and (flags & AT_EMPTY_PATH or not path_ptr):
        return os.stat(p.fd(dirfd).host)
    special = p.special_stat(gpath)
    if special is not None:
        return special
    dfd, hpath = p.path_at(dirfd, gpath)
    return os.stat(hpath, dir_fd=dfd, follow_symlinks=follow)


@syscall("stat")
def sys_stat(p, path, buf, *_):
    p.machine.write(buf, structs.pack_stat(p.arch.name, _stat_at(p, AT_FDCWD, path, 0)))
    return 0


@syscall("lstat")
def sys_lstat(p, path, buf, *_):
    p.machine.write(buf, structs.pack_stat(p.arch.name, _stat_at(p, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW)))
    return 0


@syscall("fstat")
def sys_fstat(p, fd, buf, *_):
    p.machine.write(buf, structs.pack_stat(p.arch.name, os.stat(p.fd(fd).host)))
    return 0


@syscall("newfstatat", "fstatat64")
def sys_newfstatat(p, dirfd, path, buf, flags, *_):
    p.machine.write(buf, structs.pack_stat(p.arch.name, _stat_at(p, s32(dirfd), path, flags)))
    return 0


@syscall("statx")
def sys_statx(p, dirfd, path, flags, mask, buf, *_):
    p.machine.write(buf, structs.pack_statx(_stat_at(p, s32(dirfd), path, flags)))
    return 0


@syscall("statfs", "fstatfs")
def sys_statfs(p, target, buf, *_):
    if p.current_syscall == "fstatfs":
        sv = os.fstatvfs(p.fd(target).host)
    else:
        sv = os.statvfs(p.path_at(AT_FDCWD, p.machine.read_cstr(target).decode(errors="surrogateescape"))[1])
    # struct statfs (64-bit): type, bsize, blocks, bfree, bavail, files, ffree, fsid[2], namelen, frsize, flags, spare[4]
    data = struct.pack("<qqQQQQQiiqqq4q", 0xEF53, sv.f_bsize, sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files,
                       sv.f_ffree, 0, 0, sv.f_namemax, sv.f_frsize, sv.f_flag, 0, 0, 0, 0)
    p.machine.write(buf, data)
    return 0


@syscall("access")
def sys_access(p, path, mode, *_):
    return sys_faccessat(p, AT_FDCWD, path, mode, 0)


@syscall("faccessat", "faccessat2")
def sys_faccessat(p, dirfd, path, mode, flags=0, *_):
    gpath = p.machine.read_cstr(path).decode(errors="surrogateescape")
    if p.special_stat(gpath) is not None:
        return 0
    dfd, hpath = p.path_at(s32(dirfd), gpath)
    return 0 if os.access(hpath, mode, dir_fd=dfd) else -errno.EACCES if os.path.lexists(hpath) else -errno.ENOENT


@syscall("readlink")
def sys_readlink(p, path, buf, size, *_):
    return sys_readlinkat(p, AT_FDCWD, path, buf, size)


@syscall("readlinkat")
def sys_readlinkat(p, dirfd, path, buf, size, *_):
    gpath = p.machine.read_cstr(path).decode(errors="surrogateescape")
    if gpath in ("/proc/self/exe", f"/proc/{os.getpid()}/exe"):
        target = os.fsencode(os.path.realpath(p.exe_path))     # the kernel resolves symlinks
    else:
        dfd, hpath = p.path_at(s32(dirfd), gpath)
        target = os.fsencode(os.readlink(hpath, dir_fd=dfd))
    target = target[:size]
    p.machine.write(buf, target)
    return len(target)


DTYPE = {0o040000: 4, 0o100000: 8, 0o120000: 10, 0o020000: 2, 0o060000: 6, 0o010000: 1, 0o140000: 12}


@syscall("getdents64", "getdents")
def sys_getdents64(p, fd, buf, count, *_):
    f = p.fd(fd)
    if f.dir_entries is None:
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
    p.machine.write(buf, bytes(out))
    return len(out)


@syscall("getcwd")
def sys_getcwd(p, buf, size, *_):
    cwd = os.fsencode(p.cwd) + b"\0"
    if len(cwd) > size:
        return -errno.ERANGE
    p.machine.write(buf, cwd)
    return len(cwd)


@syscall("chdir")
def sys_chdir(p, path, *_):
    gpath = p.machine.read_cstr(path).decode(errors="surrogateescape")
    dfd, hpath = p.path_at(AT_FDCWD, gpath)
    p.set_cwd(os.open(hpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd))
    return 0


@syscall("fchdir")
def sys_fchdir(p, fd, *_):
    p.set_cwd(os.dup(p.fd(fd).host))
    return 0


# --- changing the file system ------------------------------------------------------------------------
def _path(p, dirfd, ptr):
    return p.path_at(s32(dirfd), p.machine.read_cstr(ptr).decode(errors="surrogateescape"))


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
    odfd, opath = _path(p, a[0], a[1])
    ndfd, npath = _path(p, a[2], a[3])
    os.link(opath, npath, src_dir_fd=odfd, dst_dir_fd=ndfd, follow_symlinks=bool(a[4] & 0x400))
    return 0


@syscall("symlink", "symlinkat")
def sys_symlink(p, *a):
    if p.current_syscall == "symlink":
        a = (a[0], AT_FDCWD, a[1])
    target = p.machine.read_cstr(a[0]).decode(errors="surrogateescape")
    dfd, hpath = _path(p, a[1], a[2])
    os.symlink(target, hpath, dir_fd=dfd)
    return 0


@syscall("chmod", "fchmod", "fchmodat")
def sys_chmod(p, *a):
    name = p.current_syscall
    if name == "fchmod":
        os.chmod(p.fd(a[0]).host, a[1] & 0o7777)
        return 0
    if name == "chmod":
        a = (AT_FDCWD, a[0], a[1])
    dfd, hpath = _path(p, a[0], a[1])
    os.chmod(hpath, a[2] & 0o7777, dir_fd=dfd)
    return 0


@syscall("chown", "fchown", "lchown", "fchownat")
def sys_chown(p, *a):
    return 0 if os.geteuid() == 0 else -errno.EPERM


UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def _set_times(p, dirfd, path_ptr, times: list[tuple[int, int]] | None, flags: int) -> int:
    """utimensat's semantics: (sec, nsec) for atime and mtime, UTIME_NOW/UTIME_OMIT allowed."""
    follow = not flags & AT_SYMLINK_NOFOLLOW
    if path_ptr:
        dfd, hpath = _path(p, dirfd, path_ptr)
        target: dict = {"path": hpath, "dir_fd": dfd, "follow_symlinks": follow}
    else:
        target = {"path": p.fd(dirfd).host}
    if times is None or all(ns == UTIME_NOW for _s, ns in times):
        os.utime(**target)
        return 0
    if all(ns == UTIME_OMIT for _s, ns in times):
        return 0
    st = os.stat(**target)
    old = (st.st_atime_ns, st.st_mtime_ns)
    now = time.time_ns()
    ns = tuple(o if n == UTIME_OMIT else now if n == UTIME_NOW else sec * 10**9 + n
               for (sec, n), o in zip(times, old))
    os.utime(**target, ns=ns)
    return 0


@syscall("utimensat")
def sys_utimensat(p, dirfd, path, times, flags, *_):
    t = struct.unpack("<qqqq", p.machine.read(times, 32)) if times else None
    return _set_times(p, s32(dirfd), path, [(t[0], t[1]), (t[2], t[3])] if t else None, flags)


@syscall("utimes", "futimesat")
def sys_utimes(p, *a):
    dirfd, path, times = (AT_FDCWD, a[0], a[1]) if p.current_syscall == "utimes" else (s32(a[0]), a[1], a[2])
    t = struct.unpack("<qqqq", p.machine.read(times, 32)) if times else None     # two struct timeval
    return _set_times(p, dirfd, path, [(t[0], t[1] * 1000), (t[2], t[3] * 1000)] if t else None, 0)


@syscall("utime")
def sys_utime(p, path, times, *_):
    t = struct.unpack("<qq", p.machine.read(times, 16)) if times else None       # struct utimbuf
    return _set_times(p, AT_FDCWD, path, [(t[0], 0), (t[1], 0)] if t else None, 0)


@syscall("ftruncate")
def sys_ftruncate(p, fd, length, *_):
    os.ftruncate(p.fd(fd).host, length)
    return 0


@syscall("truncate")
def sys_truncate(p, path, length, *_):
    os.truncate(_path(p, AT_FDCWD, path)[1], length)
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
    label = p.machine.read_cstr(name, 250).decode(errors="replace")
    host = os.memfd_create(label, os.MFD_CLOEXEC | (flags & MFD_ALLOW_SEALING))
    return p.alloc_fd(host, f"/memfd:{label}", bool(flags & MFD_CLOEXEC))


@syscall("mknod", "mknodat")
def sys_mknodat(p, *a):
    dirfd, path, mode, dev = (AT_FDCWD, *a[:3]) if p.current_syscall == "mknod" else (s32(a[0]), *a[1:4])
    dfd, hpath = _path(p, dirfd, path)
    os.mknod(hpath, mode & 0o177777, dev, dir_fd=dfd)
    return 0


@syscall("umask")
def sys_umask(p, mask, *_):
    old = os.umask(mask & 0o777)
    return old


# --- extended attributes (ls -l asks for ACLs and security labels) ---------------------------------
@syscall("getxattr", "lgetxattr", "fgetxattr")
def sys_getxattr(p, target, name, value, size, *_):
    attr = p.machine.read_cstr(name).decode(errors="surrogateescape")
    if p.current_syscall == "fgetxattr":
        data = os.getxattr(p.fd(target).host, attr)
    else:
        hpath = _path(p, AT_FDCWD, target)[1]
        data = os.getxattr(hpath, attr, follow_symlinks=p.current_syscall == "getxattr")
    if size == 0:
        return len(data)
    if len(data) > size:
        return -errno.ERANGE
    p.machine.write(value, data)
    return len(data)


@syscall("setxattr", "lsetxattr", "fsetxattr")
def sys_setxattr(p, target, name, value, size, flags, *_):
    attr = p.machine.read_cstr(name).decode(errors="surrogateescape")
    data = p.machine.read(value, size) if size else b""
    if p.current_syscall == "fsetxattr":
        os.setxattr(p.fd(target).host, attr, data, flags)
    else:
        os.setxattr(_path(p, AT_FDCWD, target)[1], attr, data, flags,
                    follow_symlinks=p.current_syscall == "setxattr")
    return 0


@syscall("removexattr", "lremovexattr", "fremovexattr")
def sys_removexattr(p, target, name, *_):
    attr = p.machine.read_cstr(name).decode(errors="surrogateescape")
    if p.current_syscall == "fremovexattr":
        os.removexattr(p.fd(target).host, attr)
    else:
        os.removexattr(_path(p, AT_FDCWD, target)[1], attr, follow_symlinks=p.current_syscall == "removexattr")
    return 0


@syscall("listxattr", "llistxattr", "flistxattr")
def sys_listxattr(p, target, buf, size, *_):
    if p.current_syscall == "flistxattr":
        names = os.listxattr(p.fd(target).host)
    else:
        names = os.listxattr(_path(p, AT_FDCWD, target)[1], follow_symlinks=p.current_syscall == "listxattr")
    data = b"".join(os.fsencode(n) + b"\0" for n in names)
    if size == 0:
        return len(data)
    if len(data) > size:
        return -errno.ERANGE
    p.machine.write(buf, data)
    return len(data)
