"""Memory system calls: brk, mmap, munmap, mprotect, mremap, madvise."""
from __future__ import annotations

import errno
import os

from emsan.os.linux.memory import MMAP_TOP, PAGE, page_up
from emsan.os.linux.syscalls import syscall

MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x1, 0x2, 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2


@syscall("brk")
def sys_brk(p, addr, *_):
    mem = p.mem
    if addr == 0 or addr < mem.brk_start:
        return mem.brk_end
    new_end, old_end = page_up(addr), page_up(mem.brk_end)
    if new_end > old_end:
        if not mem.is_free(old_end, new_end):
            return mem.brk_end
        mem.map(old_end, new_end, 3, "[heap]")
    elif new_end < old_end:
        mem.unmap(new_end, old_end)
    mem.brk_end = addr
    return addr


@syscall("mmap")
def sys_mmap(p, addr, length, prot, flags, fd, offset, *_):
    if length == 0 or offset % PAGE:
        return -errno.EINVAL
    size = page_up(length)
    if size < length:
        return -errno.ENOMEM
    prot &= 7
    if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE):
        if addr % PAGE:
            return -errno.EINVAL
        if flags & MAP_FIXED_NOREPLACE and not p.mem.is_free(addr, addr + size):
            return -errno.EEXIST
        start = addr
    elif addr and addr % PAGE == 0 and p.mem.is_free(addr, addr + size) and addr + size <= MMAP_TOP:
        start = addr
    else:
        try:
            start = p.mem.find_free(size)
        except MemoryError:
            return -errno.ENOMEM
    data = b""
    name = "[anon]"
    if not flags & MAP_ANONYMOUS:
        f = p.fd(fd & 0xFFFFFFFF)
        data = os.pread(f.host, length, offset)
        name = f.path or "[file]"
    # Writes through MAP_SHARED file mappings are not written back: a private copy is all a
    # single process can observe anyway, except through the file itself.
    p.mem.map(start, start + size, prot, name)
    if data:
        p.machine.write(start, data)
        if offset == 0 and data[:4] == b"\x7fELF":
            p.mem.add_module(name, start, start + size)   # ld.so maps a library's whole span first
    return start


@syscall("munmap")
def sys_munmap(p, addr, length, *_):
    if addr % PAGE or length == 0:
        return -errno.EINVAL
    p.mem.unmap(addr, addr + page_up(length))
    p.mem.drop_modules(addr, addr + page_up(length))
    return 0


@syscall("mprotect", "pkey_mprotect")
def sys_mprotect(p, addr, length, prot, *_):
    if addr % PAGE:
        return -errno.EINVAL
    if length == 0:
        return 0
    return 0 if p.mem.protect(addr, addr + page_up(length), prot & 7) else -errno.ENOMEM


@syscall("mremap")
def sys_mremap(p, old, old_size, new_size, flags, new_addr, *_):
    if old % PAGE or new_size == 0:
        return -errno.EINVAL
    old_size, new_size = page_up(old_size), page_up(new_size)
    m = p.mem.find(old)
    if m is None:
        return -errno.EFAULT
    if new_size <= old_size and not flags & MREMAP_FIXED:
        if new_size < old_size:
            p.mem.unmap(old + new_size, old + old_size)
        return old
    if not flags & MREMAP_FIXED and p.mem.is_free(old + old_size, old + new_size):
        p.mem.map(old + old_size, old + new_size, m.prot, m.name)
        return old
    if not flags & (MREMAP_MAYMOVE | MREMAP_FIXED):
        return -errno.ENOMEM
    data = p.machine.read(old, old_size)
    dest = new_addr if flags & MREMAP_FIXED else p.mem.find_free(new_size)
    p.mem.map(dest, dest + new_size, m.prot, m.name)
    p.machine.write(dest, data[:min(old_size, new_size)])
    p.mem.unmap(old, old + old_size)
    return dest


@syscall("madvise")
def sys_madvise(p, addr, length, advice, *_):
    MADV_DONTNEED = 4
    if advice == MADV_DONTNEED and length:
        # Linux zero-fills private anonymous pages after MADV_DONTNEED; programs rely on it.
        start, end = addr, addr + page_up(length)
        for m in list(p.mem.mappings):
            lo, hi = max(m.start, start), min(m.end, end)
            if lo < hi and m.prot & 2:
                p.machine.write(lo, bytes(hi - lo))
    return 0


@syscall("mlock", "munlock", "mlockall", "munlockall", "msync", "mincore")
def sys_mem_ignore(p, *_):
    return 0
