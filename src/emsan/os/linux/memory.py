"""The guest's memory map: every mapping emsan or the guest made, mirrored into the engine.

This is the one place that knows the guest address-space layout; the sanitizer asks it for
the ranges it needs (its own heap region, the mmap area, stacks, loaded modules).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

PAGE = 0x1000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4     # Linux and Unicorn use the same bits

# Layout, the same on both architectures. Everything stays below 2**44: Unicorn's arm64 CPU
# has a 44-bit physical address range and, with the MMU off, faults on anything above it.
PIE_BASE = 0x0555_5555_0000
SANITIZER_HEAP_BASE = 0x0600_0000_0000      # emsan's allocator hands out objects from here
SANITIZER_HEAP_SIZE = 0x2_0000_0000         # 8 GiB, one lazily backed engine region
MMAP_BOTTOM = 0x0700_0000_0000
MMAP_TOP = 0x0FFF_0000_0000                 # mmap() grows down from here
STACK_TOP = 0x0FFF_FFFF_F000
STACK_SIZE = 8 << 20


def page_down(x: int) -> int:
    return x & ~(PAGE - 1)


def page_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


@dataclass
class Mapping:
    start: int
    end: int
    prot: int
    name: str = ""          # file path, "[heap]", "[stack]", "[anon]", "[emsan-heap]"...


@dataclass
class Module:
    """A loaded ELF file (program, interpreter or shared library) and where it sits."""

    path: str
    base: int               # load bias (0 for ET_EXEC)
    start: int
    end: int


@dataclass
class MemoryMap:
    machine: object
    mappings: list[Mapping] = field(default_factory=list)    # sorted, non-overlapping
    modules: list[Module] = field(default_factory=list)
    brk_start: int = 0
    brk_end: int = 0
    stack: tuple[int, int] = (0, 0)
    module_listeners: list = field(default_factory=list)    # called with each Module as it loads
    change_listeners: list = field(default_factory=list)    # called (start, end, mapped) as mappings come and go

    # --- queries -------------------------------------------------------------------------
    def find(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right([m.start for m in self.mappings], addr) - 1
        if i >= 0 and self.mappings[i].start <= addr < self.mappings[i].end:
            return self.mappings[i]
        return None

    def is_free(self, start: int, end: int) -> bool:
        return not any(m.start < end and start < m.end for m in self.mappings)

    def module_at(self, addr: int) -> Module | None:
        for mod in self.modules:
            if mod.start <= addr < mod.end:
                return mod
        return None

    def find_free(self, size: int, top: int = MMAP_TOP, bottom: int = MMAP_BOTTOM) -> int:
        """Highest free range of `size` bytes below `top` (top-down, like Linux's mmap)."""
        hi = top
        for m in reversed(self.mappings):
            if m.start >= hi:
                continue
            if hi - size >= max(m.end, bottom):
                return hi - size
            hi = min(hi, m.start)
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
        self.modules = [mod for mod in self.modules if mod.end <= start or end <= mod.start]

    # --- changes (mirrored into the engine) -------------------------------------------------
    def map(self, start: int, end: int, prot: int, name: str = "") -> None:
        assert start % PAGE == 0 and end % PAGE == 0 and start < end
        self.unmap(start, end)
        self.machine.map(start, end - start, prot)
        bisect.insort(self.mappings, Mapping(start, end, prot, name), key=lambda m: m.start)
        for cb in self.change_listeners:
            cb(start, end, True)

    def map_host(self, start: int, end: int, prot: int, name: str, host_ptr: int) -> None:
        """Like map(), backed by host memory the caller owns and keeps alive."""
        assert start % PAGE == 0 and end % PAGE == 0 and start < end
        self.unmap(start, end)
        self.machine.map_ptr(start, end - start, prot, host_ptr)
        bisect.insort(self.mappings, Mapping(start, end, prot, name), key=lambda m: m.start)

    def unmap(self, start: int, end: int) -> None:
        keep: list[Mapping] = []
        for m in self.mappings:
            if m.end <= start or end <= m.start:
                keep.append(m)
                continue
            lo, hi = max(m.start, start), min(m.end, end)
            self.machine.unmap(lo, hi - lo)
            for cb in self.change_listeners:
                cb(lo, hi, False)
            if m.start < lo:
                keep.append(Mapping(m.start, lo, m.prot, m.name))
            if hi < m.end:
                keep.append(Mapping(hi, m.end, m.prot, m.name))
        keep.sort(key=lambda m: m.start)
        self.mappings = keep

    def protect(self, start: int, end: int, prot: int) -> bool:
        """Change protection of [start, end); False if part of it is not mapped (ENOMEM)."""
        covered = sum(min(m.end, end) - max(m.start, start)
                      for m in self.mappings if m.start < end and start < m.end)
        if covered != end - start:
            return False
        out: list[Mapping] = []
        for m in self.mappings:
            if m.end <= start or end <= m.start or m.prot == prot:
                out.append(m)
                continue
            lo, hi = max(m.start, start), min(m.end, end)
            self.machine.protect(lo, hi - lo, prot)
            if m.start < lo:
                out.append(Mapping(m.start, lo, m.prot, m.name))
            out.append(Mapping(lo, hi, prot, m.name))
            if hi < m.end:
                out.append(Mapping(hi, m.end, m.prot, m.name))
        self.mappings = out
        return True

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
        """/proc/self/maps-style listing (for /proc/self/maps and crash messages)."""
        lines = []
        for m in self.mappings:
            perms = "".join(c if m.prot & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4))) + "p"
            lines.append(f"{m.start:08x}-{m.end:08x} {perms} 00000000 00:00 0 {m.name}".rstrip())
        return "\n".join(lines) + "\n"
