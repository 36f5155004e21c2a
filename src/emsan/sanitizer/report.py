"""Reports as data: bug type, access, stacks (depot handles resolved to addresses), the object,
and the shadow window. Text (kernel layout) and JSON are renderings in emsan.report."""
from __future__ import annotations

from dataclasses import dataclass, field

# mm/kasan/kasan.h shadow codes -> mm/kasan/report_generic.c bug types
SHADOW_BUG_TYPES = {
    0xFE: "slab-out-of-bounds", 0xFC: "slab-out-of-bounds", 0xF9: "global-out-of-bounds",
    0xF1: "stack-out-of-bounds", 0xF2: "stack-out-of-bounds", 0xF3: "stack-out-of-bounds",
    0xF4: "stack-out-of-bounds", 0xFF: "use-after-free", 0xFB: "slab-use-after-free",
    0xFA: "slab-use-after-free", 0xCA: "alloca-out-of-bounds", 0xCB: "alloca-out-of-bounds",
    0xF8: "vmalloc-out-of-bounds",
}
GRANULE = 8
UNTAG_MASK = (1 << 56) - 1
ROW_GRANULES = 16
ROWS_AROUND = 2


@dataclass
class ObjectInfo:
    start: int
    size: int                 # requested size
    cache_size: int           # size class
    state: str                # allocated / freed
    large: bool
    alloc_stack: list[int]
    free_stack: list[int]
    kind: str                 # malloc / new / new[]


@dataclass
class Report:
    mode: str
    bug_type: str
    access: str               # read / write / free
    addr: int
    size: int
    pc: int
    comm: str
    pid: int
    stack: list[int]          # innermost first; stack[0] is the PC
    title_frame: int          # which frame names the bug (the caller for frees and interceptors)
    obj: ObjectInfo | None
    first_bad: int
    shadow_rows: list[tuple[int, list[int | None]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # tag-based modes: the pointer's tag and the first bad granule's; the rows then hold
    # memory tags, one per 16-byte granule
    pointer_tag: int | None = None
    memory_tag: int | None = None
    granule: int = GRANULE

    @property
    def untagged_addr(self) -> int:
        return self.addr & UNTAG_MASK if self.pointer_tag is not None else self.addr


def shadow_bug_type(shadow_byte, first_bad: int) -> str:
    """get_shadow_bug_type(): look past a partial granule to what follows it."""
    s = shadow_byte(first_bad)
    if s is None:
        return "wild-memory-access"
    if 1 <= s <= GRANULE - 1:
        nxt = shadow_byte((first_bad & ~(GRANULE - 1)) + GRANULE)
        s = nxt if nxt is not None else s
    if 0 <= s < GRANULE:
        return "out-of-bounds"
    return SHADOW_BUG_TYPES.get(s, "unknown-crash")


MAX_WALK = 1 << 20      # granules looked at: an access of 2**63 bytes must not take forever


def first_bad_addr(shadow_byte, addr: int, size: int) -> int:
    """find_first_bad_addr(): the first granule of the access whose shadow is not zero (within
    the first MAX_WALK granules)."""
    p, end = addr, addr + min(size, MAX_WALK * GRANULE)
    while p < end and shadow_byte(p) == 0:
        p += GRANULE
    return min(p, addr + size - 1) if size else addr


def shadow_window(shadow_byte, addr: int, granule: int = GRANULE) -> list[tuple[int, list[int | None]]]:
    row_bytes = ROW_GRANULES * granule
    row = (addr & ~(row_bytes - 1)) - ROWS_AROUND * row_bytes
    rows = []
    for i in range(2 * ROWS_AROUND + 1):
        start = row + i * row_bytes
        rows.append((start, [shadow_byte(start + g * granule) for g in range(ROW_GRANULES)]))
    return rows
