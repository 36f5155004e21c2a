"""Guest pages in a few large engine regions, their protections in a page table.

Every guest mapping used to be its own Unicorn region: the engine rebuilds its memory map and
flushes page by page on each change (0.2 ms per mmap+munmap with 100 regions, 35 ms with 2,000)
and splits a region by copying all of it (0.7 s and +256 MiB for unmapping the first page of a
256 MiB mapping). Here the engine holds a few arenas (4 GiB of host address space each,
reserved without backing and mapped once), and a page table in C (native/vmem.c) that the
engine's virtual-TLB fill reads says which of their pages the guest may touch and how. A change
costs what it changes: table slots, a madvise() that gives unmapped pages back (zeroed), the
translated code of pages that were executable, and one TLB flush when permissions shrink.
"""
from __future__ import annotations

import ctypes
import errno
import mmap

from unicorn import unicorn_const as uconst

from emsan.machine import native

# 4 GiB: larger arenas made plain emulation slower (x1.12 CPU on compute with 64 GiB arenas, x1.03
# with 4 GiB, against one region per mapping: bench/timers.py "this/baseline plain"), smaller ones
# mean more engine regions for a guest that spreads its mappings.
ARENA_SHIFT = 32
ARENA = 1 << ARENA_SHIFT
PAGE = 0x1000
PRESENT = 8                      # EMSAN_VM_PRESENT: a mapping exists (PROT_NONE ones too)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
MAP_FAILED = ctypes.c_void_p(-1).value
MAP_NORESERVE, MAP_FIXED = 0x4000, 0x10   # (Python's mmap module does not export them)
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2


class GuestSpace:
    """The guest's address space below `task_size`, as the engine sees it."""

    def __init__(self, machine, task_size: int):
        self.machine = machine
        self.task_size = task_size
        ffi, lib = native.load()
        self.ffi, self.lib = ffi, lib
        vm = lib.emsan_vm_new(int(machine.arch == "arm64"), task_size)
        if vm == ffi.NULL:
            raise MemoryError("no host memory for the guest's page table")
        self.vm = ffi.gc(vm, lib.emsan_vm_free)
        self._fault_addr = ffi.new("uint64_t *")
        self._fault_type = ffi.new("int *")
        self.arenas: dict[int, int] = {}          # arena index -> host address of its memory
        machine.space = self
        machine.hook_native(uconst.UC_HOOK_TLB_FILL, ffi.addressof(lib, "emsan_vm_tlb_cb"), self.vm)
        machine.uc.ctl_set_tlb_mode(uconst.UC_TLB_VIRTUAL)

    # --- arenas -------------------------------------------------------------------------------
    def _arena(self, index: int) -> int:
        host = self.arenas.get(index)
        if host is None:
            host = _libc.mmap(None, ARENA, mmap.PROT_READ | mmap.PROT_WRITE,
                              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            if host in (None, MAP_FAILED):
                raise OSError(errno.ENOMEM, "no host address space for guest memory")
            self.machine.map_ptr(index << ARENA_SHIFT, ARENA, uconst.UC_PROT_ALL, host)
            self.arenas[index] = host
        return host

    def host(self, addr: int) -> int:
        """Host address of guest address `addr` (inside an arena)."""
        return self.arenas[addr >> ARENA_SHIFT] + (addr & (ARENA - 1))

    def _pieces(self, lo: int, hi: int):
        """(guest start, guest end, host start) of [lo, hi) cut at arena boundaries."""
        while lo < hi:
            end = min(hi, ((lo >> ARENA_SHIFT) + 1) << ARENA_SHIFT)
            yield lo, end, self._arena(lo >> ARENA_SHIFT) + (lo & (ARENA - 1))
            lo = end

    # --- the page table -----------------------------------------------------------------------
    def _set(self, lo: int, hi: int, value: int) -> None:
        if not 0 <= lo < hi <= self.task_size or (lo | hi) & (PAGE - 1):
            raise ValueError(f"[{lo:#x}, {hi:#x}) is no page range of the guest's address space")
        if self.lib.emsan_vm_set(self.vm, lo, hi, value):
            raise MemoryError("no host memory for the guest's page table")

    def prot_at(self, addr: int) -> int:
        return self.lib.emsan_vm_get(self.vm, addr)

    def map(self, lo: int, hi: int, prot: int) -> None:
        """Pages [lo, hi) exist with `prot` (UC_PROT_* bits); they read as zero until written."""
        for _piece in self._pieces(lo, hi):
            pass                                     # every arena the range needs exists now
        self._set(lo, hi, prot | PRESENT)

    def set_region(self, lo: int, hi: int, prot: int) -> None:
        """Pages [lo, hi) of an engine region of emsan's own (not in an arena) allow `prot`."""
        self._set(lo, hi, prot | PRESENT)

    def protect(self, lo: int, hi: int, prot: int, shrinks: bool, had_exec: bool) -> None:
        if had_exec and not prot & uconst.UC_PROT_EXEC:
            self.forget_code(lo, hi)
        self._set(lo, hi, prot | PRESENT)
        if shrinks:
            self.flush()

    def unmap(self, lo: int, hi: int, had_exec: bool) -> None:
        if had_exec:
            self.forget_code(lo, hi)
        self._set(lo, hi, 0)
        self.discard(lo, hi)
        self.flush()

    def discard(self, lo: int, hi: int) -> None:
        """Give the host memory behind [lo, hi) back: the pages read as zero again."""
        for a, b, h in self._pieces(lo, hi):
            _libc.madvise(h, b - a, mmap.MADV_DONTNEED)

    def move(self, old: int, new: int, size: int) -> None:
        """Move the contents of [old, old+size) to [new, new+size) (host page moves, no copy);
        the old range reads as zero afterwards. Both ranges lie inside arenas."""
        src = list(self._pieces(old, old + size))
        dst = list(self._pieces(new, new + size))
        if len(src) == len(dst) == 1:
            h_old, h_new = src[0][2], dst[0][2]
            got = _libc.mremap(h_old, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, h_new)
            if got not in (None, MAP_FAILED):
                # The arena must stay one mapping: new anonymous pages where the old ones were.
                back = _libc.mmap(h_old, size, mmap.PROT_READ | mmap.PROT_WRITE,
                                  mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)
                if back == h_old:
                    return
                raise OSError(errno.ENOMEM, "cannot refill guest memory after a move")
        step = 1 << 20                               # across arenas: copy in bounded chunks
        for off in range(0, size, step):
            n = min(step, size - off)
            ctypes.memmove(self.host(new + off), self.host(old + off), n)
        self.discard(old, old + size)

    # --- the engine's caches ---------------------------------------------------------------------
    def forget_code(self, lo: int, hi: int) -> None:
        """Drop the translated code of [lo, hi) (called while its pages are still executable: the
        engine finds the range's physical pages through the TLB)."""
        self.machine.uc.ctl_remove_cache(lo, hi)

    def flush(self) -> None:
        """Forget every TLB entry: permissions were taken away."""
        self.machine.uc.ctl(uconst.UC_CTL_TLB_FLUSH, uconst.UC_CTL_IO_WRITE)

    # --- faults --------------------------------------------------------------------------------
    def clear_fault(self) -> None:
        self.lib.emsan_vm_clear_fault(self.vm)

    def fault(self) -> tuple[int, int, bool] | None:
        """The access the page table refused last: (address, UC_MEM_* type, mapped), or None."""
        state = self.lib.emsan_vm_fault(self.vm, self._fault_addr, self._fault_type)
        if not state:
            return None
        return self._fault_addr[0], self._fault_type[0], state == 2

    def set_inner(self, fill_cfunc, user_data) -> None:
        """A sanitizer's TLB fill, consulted for pages the table allows."""
        self.lib.emsan_vm_set_inner(self.vm, self.ffi.cast("void *", fill_cfunc), user_data)
