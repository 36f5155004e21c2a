"""Leak detection on a KASAN mode's allocator (native/kmemleak.c): the kernel's kmemleak scan
over every live object, from roots the caller names. Nothing here knows how the guest was
loaded: emsan's Linux session gives the roots of a Linux process (emsan.session.leaks), a
harness may give its own."""
from __future__ import annotations

from dataclasses import field

from emsan.lazyclass import dataclass
from emsan.sanitizer.kasan import Kasan

OBJECTS_KEPT = 256            # objects listed per group (the JSON's "objects")


@dataclass
class Roots:
    """Where references to heap objects may live: guest memory ranges [lo, hi) (module data and
    BSS, TLS, the guest's mappings, each thread's stack from its stack pointer up) and register
    values (each thread's)."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    words: list[int] = field(default_factory=list)


@dataclass
class LeakGroup:
    """The leaked objects of one allocation stack found by a scan (and not reported before)."""

    stack: list[int]          # allocation stack, innermost first
    indirect: bool            # reachable only from other leaked objects
    count: int
    bytes: int
    indirect_count: int       # direct groups: objects reachable only through these
    indirect_bytes: int
    before_main: int          # objects allocated before main started
    addr: int                 # the first object allocated (the guest's pointer)
    size: int
    jiffies: int              # its allocation time, ms since the run started
    head: bytes               # its first (at most 32) bytes
    objects: list[tuple[int, int]]   # (address, size), allocation order, at most OBJECTS_KEPT

    @property
    def total(self) -> int:
        return self.bytes + self.indirect_bytes


class Kmemleak:
    def __init__(self, kasan: Kasan):
        self.kasan = kasan                       # owns the native scanner
        self.ffi, self.lib = ffi, lib = kasan.ffi, kasan.lib
        self.runtime = kasan.runtime
        self.l = lib.emsan_leaks_new(kasan.k)
        self._addrs = ffi.new("uint64_t[]", OBJECTS_KEPT)
        self._sizes = ffi.new("uint64_t[]", OBJECTS_KEPT)
        self._block_cb = None

    def main_started(self) -> None:
        """main() starts now (allocations before it may be left out of reports)."""
        self.lib.emsan_leaks_main_started(self.l)

    def ignore_callers(self, lo: int, hi: int) -> None:
        """Objects allocated by code in [lo, hi) are roots, never leaks."""
        self.lib.emsan_leaks_ignore_callers(self.l, lo, hi)

    def scan(self, roots: Roots, ignore_before_main: bool = False) -> list[LeakGroup]:
        """One scan; the groups of leaks it found that no earlier scan reported, direct ones
        first (largest total first), then the indirect ones."""
        ffi, lib = self.ffi, self.lib
        flat = [v for r in roots.ranges for v in r]
        ranges = ffi.new("uint64_t[]", flat or [0])
        words = ffi.new("uint64_t[]", [w & (2**64 - 1) for w in roots.words] or [0])
        flags = lib.EMSAN_LEAKS_IGNORE_BEFORE_MAIN if ignore_before_main else 0
        n = lib.emsan_leaks_scan(self.l, ranges, len(roots.ranges), words, len(roots.words), flags)
        if not n:
            return []
        raw = ffi.new("emsan_leak_group[]", n)
        lib.emsan_leaks_groups(self.l, raw, n)
        out = []
        for g in raw:
            m = lib.emsan_leaks_members(self.l, g.id, self._addrs, self._sizes, OBJECTS_KEPT)
            out.append(LeakGroup(self.runtime.stack(g.stack), bool(g.indirect), g.count, g.bytes, g.indirect_count,
                                 g.indirect_bytes, g.before_main, g.addr, g.size, g.jiffies,
                                 bytes(ffi.buffer(g.head, g.nhead)), list(zip(self._addrs[0:m], self._sizes[0:m]))))
        return out

    def scan_every(self, instructions: int) -> None:
        """Stop the engine for a scan every `instructions` guest instructions (code bytes / 4:
        exact on arm64, about that on x86-64); take_due() then says a scan is due."""
        self.lib.emsan_leaks_scan_every(self.l, instructions)
        self._block_cb = self.ffi.addressof(self.lib, "emsan_leaks_block_cb")
        self.kasan.machine.hook_block_native(self._block_cb, self.l)

    def take_due(self) -> bool:
        return bool(self.lib.emsan_leaks_take_due(self.l))

    def stats(self) -> dict[str, int]:
        return self.runtime.counters("emsan_leak_stats", self.lib.emsan_leaks_get_stats, self.l)
