"""The guest's memory map (the kernel's mm): every mapping emsan or the guest made.

This is the one place that knows the guest address-space layout; the sanitizer asks it for
the ranges it needs (its own heap region, the mmap area, stacks, loaded modules).

Two kinds of mappings live here. The guest's own (program segments, stack, brk, mmap) sit in
the engine's large arenas with their protections in a page table (emsan.machine.vmem), so that
a change costs what it changes. emsan's (its heap, KFENCE pool, ...) are engine regions of their
own inside EMSAN_BAND; the guest can neither map over them nor unmap, protect or move them: it
gets the error Linux gives for addresses a process cannot use.
"""
from __future__ import annotations

import bisect
import errno
from dataclasses import field

from emsan.lazyclass import dataclass
from emsan.machine.vmem import GuestSpace

PAGE = 0x1000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4     # Linux and Unicorn use the same bits

# Layout, the same on both architectures. The guest's address space ends at 2**44 (TASK_SIZE):
# Unicorn's arm64 CPU has a 44-bit physical range, and compiler-assisted mode's shadow sits above
# it. Like a kernel configured for fewer virtual-address bits, emsan refuses guest mappings there.
TASK_SIZE = 1 << 44
MMAP_MIN_ADDR = 0x10000                     # vm.mmap_min_addr: nothing maps below
PIE_BASE = 0x0555_5555_0000
EMSAN_BAND = (0x0600_0000_0000, 0x0700_0000_0000)   # emsan's regions: heap, MMIO view, shadow pool, KFENCE
SANITIZER_HEAP_BASE = 0x0600_0000_0000      # emsan's allocator hands out objects from here
SANITIZER_HEAP_SIZE = 0x2_0000_0000         # 8 GiB, one lazily backed engine region
# The tag modes' 256 checking views of that heap (2 TiB, physical only) sit above every guest address.
TAG_VIEWS = 1 << 45
MMAP_BOTTOM = 0x0700_0000_0000
MMAP_TOP = 0x0FFF_0000_0000                 # mmap() grows down from here
STACK_TOP = 0x0FFF_FFFF_F000
STACK_SIZE = 8 << 20
MAX_MAP_COUNT = 65530                       # vm.max_map_count


def page_down(x: int) -> int:
    return x & ~(PAGE - 1)


def page_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


@dataclass
class Mapping:
    """One mapping of the guest's address space (a line of /proc/PID/maps)."""

    start: int
    end: int
    prot: int
    name: str = ""          # file path, "[heap]", "[stack]", "[anon]", "[emsan-heap]"...
    offset: int = 0         # file offset of `start` (file mappings)
    guest: bool = True      # made by the guest (or for it by the loader), not by emsan

    def piece(self, start: int, end: int, prot: int | None = None) -> "Mapping":
        return Mapping(start, end, self.prot if prot is None else prot, self.name,
                       self.offset + (start - self.start) if self.is_file else 0, self.guest)

    @property
    def is_file(self) -> bool:
        return not self.name.startswith("[")

    def joins(self, nxt: "Mapping") -> bool:
        """Can nxt (right after self) merge into one mapping, as the kernel merges VMAs?"""
        return (self.end == nxt.start and self.prot == nxt.prot and self.name == nxt.name and self.guest
                and nxt.guest and (not self.is_file or self.offset + (self.end - self.start) == nxt.offset))


@dataclass
class Module:
    """A loaded ELF file (program, interpreter or shared library) and where it sits."""

    path: str
    base: int               # load bias (0 for ET_EXEC)
    start: int
    end: int


def effective_prot(arch: str, prot: int) -> int:
    """What the MMU allows for a mapping's protection: writable (and, on x86-64, executable)
    pages are readable too."""
    if prot & PROT_WRITE or (arch == "x86_64" and prot & PROT_EXEC):
        prot |= PROT_READ
    return prot


@dataclass
class MemoryMap:
    """The guest's address space: its mappings, loaded modules, brk and stack."""

    machine: object
    mappings: list[Mapping] = field(default_factory=list)    # sorted, non-overlapping
    modules: list[Module] = field(default_factory=list)
    brk_start: int = 0
    brk_end: int = 0
    stack: tuple[int, int] = (0, 0)
    # Where the kernel's mm_struct keeps them: argv and environment strings on the initial stack
    # (/proc/PID/cmdline and environ read the guest's memory there), and the auxiliary vector.
    arg_range: tuple[int, int] = (0, 0)
    env_range: tuple[int, int] = (0, 0)
    auxv: bytes = b""
    module_listeners: list = field(default_factory=list)    # called with each Module as it loads
    change_listeners: list = field(default_factory=list)    # called (start, end, mapped) as mappings come and go
    task_size: int = TASK_SIZE

    def __post_init__(self) -> None:
        self._starts = [m.start for m in self.mappings]
        self.space = GuestSpace(self.machine, self.task_size)
        self.arch = self.machine.arch

    # --- queries -------------------------------------------------------------------------
    def find(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self.mappings[i].start <= addr < self.mappings[i].end:
            return self.mappings[i]
        return None

    def _span(self, start: int, end: int) -> tuple[int, int]:
        """Indexes [i, j) of the mappings overlapping [start, end)."""
        i = bisect.bisect_right(self._starts, start) - 1
        if i < 0 or self.mappings[i].end <= start:
            i += 1
        j = bisect.bisect_left(self._starts, end)
        return i, max(i, j)

    def overlapping(self, start: int, end: int) -> list[Mapping]:
        i, j = self._span(start, end)
        return self.mappings[i:j]

    def is_free(self, start: int, end: int) -> bool:
        return not self.overlapping(start, end)

    def accessible(self, addr: int, size: int, need: int, force: bool = False) -> int:
        """How many bytes from addr, up to size, the guest may access with `need` (PROT_* bits)
        without a gap: what the kernel's copy_{from,to}_user would get through. force: any
        protection will do (/proc/PID/mem), but not emsan's PROT_NONE regions."""
        done, end = 0, addr + size
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return 0
        while addr < end and i < len(self.mappings):
            m = self.mappings[i]
            if not m.start <= addr < m.end:
                break
            if (not (m.guest or m.prot)) if force else effective_prot(self.arch, m.prot) & need != need:
                break
            step = min(m.end, end) - addr
            done += step
            addr += step
            i += 1
        return done

    def usable(self, start: int, end: int) -> int:
        """0 if the guest may map [start, end), else the errno Linux gives for such a range."""
        if start < MMAP_MIN_ADDR:
            return errno.EPERM
        if end > self.task_size or end <= start:
            return errno.ENOMEM
        if start < EMSAN_BAND[1] and EMSAN_BAND[0] < end:
            return errno.ENOMEM             # emsan's regions: as unusable as kernel addresses
        if any(not m.guest for m in self.overlapping(start, end)):
            return errno.ENOMEM
        return 0

    def owned_by_guest(self, start: int, end: int) -> bool:
        """Does [start, end) avoid emsan's regions (what munmap/mprotect/mremap may touch)?"""
        if start < EMSAN_BAND[1] and EMSAN_BAND[0] < end:
            return False
        return all(m.guest for m in self.overlapping(start, end))

    def protectable(self, start: int, end: int) -> bool:
        """May mprotect change [start, end)? The guest's mappings, and emsan's heap-like regions
        where the guest's objects live (as mprotect on malloc'd memory works on Linux), never
        emsan's PROT_NONE ones (KFENCE's trap) nor what lies outside every mapping."""
        return all(m.guest or m.prot for m in self.overlapping(start, end))

    def module_at(self, addr: int) -> Module | None:
        for mod in self.modules:
            if mod.start <= addr < mod.end:
                return mod
        return None

    def find_free(self, size: int, top: int = MMAP_TOP, bottom: int = MMAP_BOTTOM) -> int:
        """Highest free range of `size` bytes below `top` (top-down, like Linux's mmap)."""
        if size <= 0 or size > top - bottom:
            raise MemoryError("guest address space exhausted")
        hi = top
        i = bisect.bisect_left(self._starts, top) - 1
        while i >= 0:
            m = self.mappings[i]
            if m.end <= hi - size and hi - size >= bottom:
                return hi - size
            hi = min(hi, m.start)
            if hi - size < bottom:
                break
            i -= 1
        if hi - size >= bottom:
            return hi - size
        raise MemoryError("guest address space exhausted")

    def add_module(self, path: str, start: int, end: int) -> None:
        """A shared object mapped by the guest's ld.so (its first PT_LOAD is at vaddr 0)."""
        self.drop_modules(start, end)
        self.register_module(Module(path, start, start, end))

    def register_module(self, mod: Module) -> None:
        self.modules.append(mod)
        for cb in self.module_listeners:
            cb(mod)

    def drop_modules(self, start: int, end: int) -> None:
        # A module goes when its first page (the ELF header, where ld.so maps it and unmaps it
        # from) goes: the holes between 64 KiB-aligned segments are free address space that
        # other mappings may use and unmap (as on Linux).
        self.modules = [mod for mod in self.modules if not start <= mod.start < end]

    # --- bookkeeping -----------------------------------------------------------------------
    def _carve(self, start: int, end: int) -> list[Mapping]:
        """Take [start, end) out of the list (splitting mappings at its edges); return the pieces
        that were inside it."""
        i, j = self._span(start, end)
        if i == j:
            return []
        inside, keep = [], []
        for m in self.mappings[i:j]:
            lo, hi = max(m.start, start), min(m.end, end)
            if m.start < lo:
                keep.append(m.piece(m.start, lo))
            inside.append(m.piece(lo, hi))
            if hi < m.end:
                keep.append(m.piece(hi, m.end))
        self.mappings[i:j] = keep
        self._starts[i:j] = [m.start for m in keep]
        return inside

    def _insert(self, new: Mapping) -> None:
        """Add a mapping where nothing is, merging it with equal neighbours."""
        i = bisect.bisect_left(self._starts, new.start)
        if i > 0 and self.mappings[i - 1].joins(new):
            i -= 1
            prev = self.mappings.pop(i)
            self._starts.pop(i)
            new = Mapping(prev.start, new.end, new.prot, new.name, prev.offset, new.guest)
        if i < len(self.mappings) and new.joins(self.mappings[i]):
            nxt = self.mappings.pop(i)
            self._starts.pop(i)
            new = Mapping(new.start, nxt.end, new.prot, new.name, new.offset, new.guest)
        self.mappings.insert(i, new)
        self._starts.insert(i, new.start)

    def _notify(self, start: int, end: int, mapped: bool) -> None:
        for cb in self.change_listeners:
            cb(start, end, mapped)

    # --- emsan's own regions (sanitizers): engine regions of their own -----------------------
    def map(self, start: int, end: int, prot: int, name: str = "") -> None:
        assert start % PAGE == 0 and end % PAGE == 0 and start < end
        assert self.is_free(start, end), f"emsan region [{start:#x}, {end:#x}) overlaps a mapping"
        self.machine.map(start, end - start, prot)
        self._emsan_region(start, end, prot, name)

    def map_host(self, start: int, end: int, prot: int, name: str, host_ptr: int) -> None:
        """Like map(), backed by host memory the caller owns and keeps alive."""
        assert start % PAGE == 0 and end % PAGE == 0 and start < end
        assert self.is_free(start, end), f"emsan region [{start:#x}, {end:#x}) overlaps a mapping"
        self.machine.map_ptr(start, end - start, prot, host_ptr)
        self._emsan_region(start, end, prot, name)

    def _emsan_region(self, start: int, end: int, prot: int, name: str) -> None:
        if end <= self.task_size:
            self.space.set_region(start, end, effective_prot(self.arch, prot))
        self._insert(Mapping(start, end, prot, name, guest=False))
        self._notify(start, end, True)

    # --- the guest's mappings (loader and system calls) ---------------------------------------
    def guest_map(self, start: int, end: int, prot: int, name: str = "[anon]", offset: int = 0) -> None:
        """Map [start, end) for the guest, replacing what the guest had there (MAP_FIXED). The
        caller checked usable(); the pages read as zero."""
        assert start % PAGE == 0 and end % PAGE == 0 and start < end
        self.guest_unmap(start, end)
        self.space.map(start, end, effective_prot(self.arch, prot))
        self._insert(Mapping(start, end, prot, name, offset))
        self._notify(start, end, True)

    def guest_unmap(self, start: int, end: int) -> None:
        gone = self._carve(start, end)
        for m in gone:
            self.space.unmap(m.start, m.end, had_exec=bool(m.prot & PROT_EXEC))
            self._notify(m.start, m.end, False)

    def guest_protect(self, start: int, end: int, prot: int) -> bool:
        """Change the protection of [start, end); False if part of it is not mapped (ENOMEM)."""
        pieces = self.overlapping(start, end)
        covered = sum(min(m.end, end) - max(m.start, start) for m in pieces)
        if covered != end - start:
            return False
        for m in self._carve(start, end):
            old, new = effective_prot(self.arch, m.prot), effective_prot(self.arch, prot)
            self.space.protect(m.start, m.end, new, shrinks=bool(old & ~new),
                               had_exec=bool(m.prot & PROT_EXEC))
            self._insert(m.piece(m.start, m.end, prot))
        return True

    def guest_move(self, old: int, size: int, new: int, new_size: int) -> None:
        """mremap: the mapping piece [old, old+size) moves to [new, new+new_size) with its first
        min(size, new_size) bytes; what the guest had at the destination goes. The caller checked
        that [old, old+size) lies in one mapping and that the two ranges do not overlap."""
        m = self.find(old)
        moved = m.piece(old, old + size)
        self.guest_unmap(new, new + new_size)
        if m.prot & PROT_EXEC:
            self.space.forget_code(old, old + size)
        self.space.move(old, new, min(size, new_size))
        self.guest_unmap(old, old + size)
        self.space.map(new, new + new_size, effective_prot(self.arch, moved.prot))
        self._insert(Mapping(new, new + new_size, moved.prot, moved.name, moved.offset))
        self._notify(new, new + new_size, True)

    def discard(self, start: int, end: int) -> None:
        """MADV_DONTNEED on the guest's private pages: they read as zero again."""
        for m in self.overlapping(start, end):
            if m.guest:
                lo, hi = max(m.start, start), min(m.end, end)
                if m.prot & PROT_EXEC:
                    self.space.forget_code(lo, hi)
                self.space.discard(lo, hi)

    def count(self) -> int:
        return len(self.mappings)

    # --- a persistent fuzzing loop: back to a saved state --------------------------------------
    def save(self) -> tuple:
        """The map as it is now (Mapping and Module records are never changed in place)."""
        return list(self.mappings), list(self.modules), self.brk_end

    def restore(self, saved: tuple) -> None:
        """Back to a saved() state once the engine's memory went back to a snapshot taken with
        it (which unmaps what was mapped since and maps again what was unmapped): the records,
        and the listeners told which ranges came back and which went."""
        mappings, modules, brk_end = saved
        bounds = sorted({b for m in self.mappings + mappings for b in (m.start, m.end)})
        for lo, hi in zip(bounds, bounds[1:]):
            now, then = self.find(lo) is not None, any(m.start <= lo < m.end for m in mappings)
            if now != then:
                for cb in self.change_listeners:
                    cb(lo, hi, then)
        self.mappings, self.modules, self.brk_end = list(mappings), list(modules), brk_end

    def describe(self) -> str:
        """/proc/self/maps-style listing (for crash messages and the guest's /proc)."""
        lines = []
        for m in self.mappings:
            perms = "".join(c if m.prot & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4))) + "p"
            name = "" if m.name == "[anon]" else m.name
            lines.append(f"{m.start:08x}-{m.end:08x} {perms} {m.offset:08x} 00:00 0".ljust(73) + name)
        return "".join(line.rstrip() + "\n" for line in lines)
