"""Memory system calls: brk, mmap, munmap, mprotect, mremap, madvise, mincore, msync.

Arguments are checked as mm/mmap.c, mm/mprotect.c and mm/mremap.c check them. emsan's own
regions (its heap, the KFENCE pool, the shadow and the MMIO view, all in EMSAN_BAND) are as
out of reach as kernel addresses: the guest cannot map over, unmap, move or re-protect them."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from emsan.os.linux.memory import MAX_MAP_COUNT, MMAP_MIN_ADDR, PAGE, page_up
from emsan.os.linux.syscalls import syscall
from emsan.os.linux.syscalls.fs import O_ACCMODE

MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE, MAP_FIXED, MAP_ANONYMOUS = 0x1, 0x2, 0x3, 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
PROT_GROWSDOWN, PROT_GROWSUP, PROT_SEM = 0x01000000, 0x02000000, 0x8
ARM64_PROT_BTI, ARM64_PROT_MTE = 0x10, 0x20
MADVICES = set(range(0, 4)) | {4} | set(range(8, 26)) | {100, 101}
FILE_CHUNK = 1 << 24


def _prot_ok(p, prot: int) -> bool:
    allowed = 7 | PROT_SEM | PROT_GROWSDOWN | PROT_GROWSUP
    if p.arch.name == "arm64":
        allowed |= ARM64_PROT_BTI | ARM64_PROT_MTE
    return not prot & ~allowed and (prot & (PROT_GROWSDOWN | PROT_GROWSUP)) != (PROT_GROWSDOWN | PROT_GROWSUP)


def _room(p, extra: int = 1) -> bool:
    """vm.max_map_count: a change that could add `extra` mappings still fits."""
    return p.mem.count() + extra <= MAX_MAP_COUNT


@syscall("brk")
def sys_brk(p, addr, *_):
    mem = p.mem
    if addr < mem.brk_start:
        return mem.brk_end
    new_end, old_end = page_up(addr), page_up(mem.brk_end)
    if new_end > old_end:
        if mem.usable(old_end, new_end) or not mem.is_free(old_end, new_end) or not _room(p):
            return mem.brk_end
        mem.guest_map(old_end, new_end, 3, "[heap]")
    elif new_end < old_end:
        mem.guest_unmap(new_end, old_end)
    mem.brk_end = addr
    return addr


def _file_contents(p, fd: int, offset: int, length: int, prot: int, flags: int):
    """(name, host fd or None for zeros) of a file mapping, or an errno as Linux checks it."""
    f = p.fd(fd & 0xFFFFFFFF)
    if f.mem is not None or (f.node is not None and f.node.is_dir):
        return -errno.ENODEV
    st = os.fstat(f.host)
    if stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 5):
        return "/dev/zero (deleted)" if flags & MAP_SHARED else "[anon]", None   # /dev/zero: anonymous memory
    if not stat.S_ISREG(st.st_mode):
        return -errno.ENODEV
    mode = fcntl.fcntl(f.host, fcntl.F_GETFL) & O_ACCMODE
    if mode == os.O_WRONLY:
        return -errno.EACCES
    if flags & 3 != MAP_PRIVATE and prot & 2 and mode != os.O_RDWR:
        return -errno.EACCES
    return f.path or "[file]", f.host


def _fill_from_file(p, host: int, start: int, length: int, offset: int) -> None:
    """Read the file's bytes straight into the guest's new pages (no copy of the whole mapping
    in emsan's memory); pages past the end of the file stay zero."""
    done = 0
    while done < length:
        n = min(FILE_CHUNK, length - done)
        view = (ctypes.c_char * n).from_address(p.mem.space.host(start + done))
        got = os.preadv(host, [memoryview(view).cast("B")], offset + done)
        if got <= 0:
            break
        done += got


@syscall("mmap")
def sys_mmap(p, addr, length, prot, flags, fd, offset, *_):
    mem = p.mem
    flags &= 0xFFFFFFFF
    prot &= 0xFFFFFFFF
    if not length or offset % PAGE or flags & 3 == 0 or not _prot_ok(p, prot):
        return -errno.EINVAL
    size = page_up(length)
    if size >> 64 or size > mem.task_size:
        return -errno.ENOMEM
    if (offset >> 12) + (size >> 12) >= 1 << 52:
        return -errno.EOVERFLOW
    name, src = "[anon]", None
    if not flags & MAP_ANONYMOUS:
        got = _file_contents(p, fd, offset, length, prot, flags)
        if isinstance(got, int):
            return got
        name, src = got
    if not _room(p, 2):
        return -errno.ENOMEM
    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE):
        if addr % PAGE:
            return -errno.EINVAL
        err = mem.usable(addr, addr + size)
        if err:
            return -err
        if flags & MAP_FIXED_NOREPLACE and not mem.is_free(addr, addr + size):
            return -errno.EEXIST
        start = addr
    else:
        hint = page_up(addr) if addr else 0
        if hint and hint >= MMAP_MIN_ADDR and not mem.usable(hint, hint + size) and mem.is_free(hint, hint + size):
            start = hint
        else:
            try:
                start = mem.find_free(size)
            except MemoryError:
                return -errno.ENOMEM
    # Writes through MAP_SHARED file mappings are not written back: a private copy is all a
    # single process can observe anyway, except through the file itself.
    mem.guest_map(start, start + size, prot & 7, name, offset if src is not None else 0)
    if src is not None:
        _fill_from_file(p, src, start, length, offset)
        if offset == 0 and p.machine.read(start, 4) == b"\x7fELF":
            mem.add_module(name, start, start + size)   # ld.so maps a library's whole span first
    return start


def _guest_range(p, addr: int, length: int) -> tuple[int, int] | int:
    """[addr, end) of munmap/mprotect-like calls, or -errno (unaligned, empty handled by callers)."""
    if addr % PAGE:
        return -errno.EINVAL
    end = addr + page_up(length)
    if end <= addr or end > p.mem.task_size:
        return -errno.EINVAL if p.current_syscall == "munmap" else -errno.ENOMEM
    return addr, end


@syscall("munmap")
def sys_munmap(p, addr, length, *_):
    if not length:
        return -errno.EINVAL
    r = _guest_range(p, addr, length)
    if isinstance(r, int):
        return r
    start, end = r
    if not p.mem.owned_by_guest(start, end):
        return -errno.EINVAL                  # as for an address outside user space
    if not _room(p):
        return -errno.ENOMEM                  # unmapping the middle splits a mapping in two
    p.mem.guest_unmap(start, end)
    p.mem.drop_modules(start, end)
    return 0


@syscall("mprotect", "pkey_mprotect")
def sys_mprotect(p, addr, length, prot, *_):
    prot &= 0xFFFFFFFF
    if not _prot_ok(p, prot) or addr % PAGE:
        return -errno.EINVAL
    if not length:
        return 0
    r = _guest_range(p, addr, length)
    if isinstance(r, int):
        return r
    start, end = r
    if not p.mem.owned_by_guest(start, end) and not p.mem.protectable(start, end):
        return -errno.ENOMEM
    if not _room(p, 2):
        return -errno.ENOMEM
    return 0 if p.mem.guest_protect(start, end, prot & 7) else -errno.ENOMEM


@syscall("mremap")
def sys_mremap(p, old, old_size, new_size, flags, new_addr, *_):
    mem = p.mem
    flags &= 0xFFFFFFFF
    if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP):
        return -errno.EINVAL
    if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) and not flags & MREMAP_MAYMOVE:
        return -errno.EINVAL
    if flags & MREMAP_DONTUNMAP and old_size != new_size:
        return -errno.EINVAL
    if old % PAGE:
        return -errno.EINVAL
    old_size, new_size = page_up(old_size), page_up(new_size)
    if not new_size or new_size > mem.task_size or old_size > mem.task_size:
        return -errno.EINVAL
    if flags & MREMAP_FIXED:
        if new_addr % PAGE or new_addr > mem.task_size - new_size:
            return -errno.EINVAL
        if new_addr < old + old_size and old < new_addr + new_size:
            return -errno.EINVAL
    m = mem.find(old)
    if m is None or not m.guest:
        return -errno.EFAULT
    if not old_size:
        return -errno.EINVAL                  # duplicating a private mapping
    if old + old_size > m.end:
        return -errno.EFAULT                  # the range must lie in one mapping
    if not _room(p, 2):
        return -errno.ENOMEM
    if not flags & MREMAP_FIXED:
        if new_size <= old_size:
            if new_size < old_size:
                mem.guest_unmap(old + new_size, old + old_size)
            return old
        grow = (old + old_size, old + new_size)
        if not mem.usable(*grow) and mem.is_free(*grow):
            mem.guest_map(grow[0], grow[1], m.prot, m.name, m.offset + (grow[0] - m.start) if m.is_file else 0)
            return old
        if not flags & MREMAP_MAYMOVE:
            return -errno.ENOMEM
        try:
            dest = mem.find_free(new_size)
        except MemoryError:
            return -errno.ENOMEM
    else:
        dest = new_addr
        err = mem.usable(dest, dest + new_size)
        if err:
            return -errno.EINVAL if err == errno.EPERM else -err
    prot, name = m.prot, m.name
    mem.guest_move(old, old_size, dest, new_size)
    if flags & MREMAP_DONTUNMAP:
        mem.guest_map(old, old + old_size, prot, name)      # left in place, empty
    mem.drop_modules(old, old + old_size)
    return dest


@syscall("madvise")
def sys_madvise(p, addr, length, advice, *_):
    MADV_DONTNEED, MADV_FREE, MADV_REMOVE = 4, 8, 9
    advice = advice & 0xFFFFFFFF
    if addr % PAGE or advice not in MADVICES:
        return -errno.EINVAL
    end = addr + page_up(length)
    if length and end == addr or end < addr or end >> 64:
        return -errno.EINVAL
    if end == addr:
        return 0
    if advice in (MADV_DONTNEED, MADV_FREE, MADV_REMOVE):
        # Linux zero-fills private anonymous pages after MADV_DONTNEED; programs rely on it.
        p.mem.discard(addr, end)
    return 0 if p.mem.accessible(addr, end - addr, 0) == end - addr else -errno.ENOMEM


@syscall("mincore")
def sys_mincore(p, addr, length, vec, *_):
    if addr % PAGE:
        return -errno.EINVAL
    end = addr + page_up(length)
    if end > p.mem.task_size or end < addr:
        return -errno.ENOMEM
    pages = (end - addr) // PAGE
    if not p.user.access_ok(vec, pages):
        return -errno.EFAULT
    if p.mem.accessible(addr, end - addr, 0) != end - addr:
        return -errno.ENOMEM
    for first in range(0, pages, 1 << 20):
        p.user.write(vec + first, b"\1" * min(1 << 20, pages - first))    # everything is resident
    return 0


@syscall("msync")
def sys_msync(p, addr, length, flags, *_):
    MS_ASYNC, MS_INVALIDATE, MS_SYNC = 1, 2, 4
    if addr % PAGE or flags & ~(MS_ASYNC | MS_INVALIDATE | MS_SYNC) or flags & MS_ASYNC and flags & MS_SYNC:
        return -errno.EINVAL
    end = addr + page_up(length)
    if end < addr:
        return -errno.ENOMEM
    return 0 if p.mem.accessible(addr, end - addr, 0) == end - addr else -errno.ENOMEM


@syscall("mlock", "munlock", "mlock2")
def sys_mlock(p, addr, length, *_):
    end = page_up(addr + length)
    if end < addr or end >> 64:
        return -errno.EINVAL
    start = addr & ~(PAGE - 1)
    return 0 if p.mem.accessible(start, end - start, 0) == end - start else -errno.ENOMEM


@syscall("mlockall", "munlockall")
def sys_mem_ignore(p, flags=0, *_):
    if p.current_syscall == "mlockall" and (not flags or flags & ~7):
        return -errno.EINVAL
    return 0
