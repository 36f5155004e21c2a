"""Generic KASAN's reading of the shadow, as the kernel's report code does it: where an access
first goes bad, what the shadow says the bug is, and the window of shadow rows a report
shows. Pure functions of a shadow_byte(addr) -> int | None lookup."""
from __future__ import annotations

from typing import Callable

from emsan.report.model import GRANULE, ROW_GRANULES

ShadowLookup = Callable[[int], "int | None"]

# The kernel's generic shadow codes -> the bug types its generic report names
SHADOW_BUG_TYPES = {
    0xFE: "slab-out-of-bounds", 0xFC: "slab-out-of-bounds", 0xF9: "global-out-of-bounds",
    0xF1: "stack-out-of-bounds", 0xF2: "stack-out-of-bounds", 0xF3: "stack-out-of-bounds",
    0xF4: "stack-out-of-bounds", 0xFF: "use-after-free", 0xFB: "slab-use-after-free",
    0xFA: "slab-use-after-free", 0xCA: "alloca-out-of-bounds", 0xCB: "alloca-out-of-bounds",
    0xF8: "vmalloc-out-of-bounds",
}
ROWS_AROUND = 2               # rows shown above and below the buggy address's


def shadow_bug_type(shadow_byte: ShadowLookup, first_bad: int) -> str:
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


def first_bad_addr(shadow_byte: ShadowLookup, addr: int, size: int) -> int:
    """find_first_bad_addr(): the first granule of the access whose shadow is not zero (within
    the first MAX_WALK granules)."""
    p, end = addr, addr + min(size, MAX_WALK * GRANULE)
    while p < end and shadow_byte(p) == 0:
        p += GRANULE
    return min(p, addr + size - 1) if size else addr


def accessible(shadow_byte: ShadowLookup, addr: int, size: int) -> bool:
    """Is every byte of [addr, addr+size) accessible by the shadow (00, or a partial granule's
    01-07 covering it)? The kernel's memory_is_poisoned(), negated."""
    g = addr & ~(GRANULE - 1)
    while g < addr + size:
        s = shadow_byte(g)
        if s is None or (s != 0 and not (s < GRANULE and addr + size - g <= s)):
            return False
        g += GRANULE
    return True


def shadow_window(shadow_byte: ShadowLookup, addr: int, granule: int = GRANULE) -> list[tuple[int, list[int | None]]]:
    row_bytes = ROW_GRANULES * granule
    row = (addr & ~(row_bytes - 1)) - ROWS_AROUND * row_bytes
    rows = []
    for i in range(2 * ROWS_AROUND + 1):
        start = row + i * row_bytes
        rows.append((start, [shadow_byte(start + g * granule) for g in range(ROW_GRANULES)]))
    return rows
