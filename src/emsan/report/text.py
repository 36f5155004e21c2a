"""Kernel KASAN report layout (mm/kasan/report.c), with user-space words where kernel words
make no sense (task = process, cache = size class)."""
from __future__ import annotations

from emsan import __version__
from emsan.machine import UNICORN_VERSION
from emsan.report.symbolize import Symbolizer
from emsan.sanitizer.report import ROW_GRANULES, Report

RULE = "=" * 66


def frames_text(sym: Symbolizer, addrs: list[int], first_is_pc: bool) -> list[str]:
    if not addrs:
        return [" (stack is not available)"]
    return [f" {f}" for f in sym.stack(addrs, first_is_pc)]


def render(rep: Report, sym: Symbolizer, arch: str) -> str:
    title = sym.frame(rep.stack[rep.title_frame], is_return_address=rep.title_frame > 0) if rep.stack else None
    out = [RULE, f"BUG: KASAN: {rep.bug_type} in {title if title else f'{rep.pc:#x}'}"]
    if rep.access == "free":
        out.append(f"Free of addr {rep.addr:016x} by task {rep.comm}/{rep.pid}")
    else:
        out.append(f"{rep.access.capitalize()} of size {rep.size} at addr {rep.addr:016x} by task {rep.comm}/{rep.pid}")
    if rep.pointer_tag is not None:
        mem = "--" if rep.memory_tag is None else f"{rep.memory_tag:02x}"
        out.append(f"Pointer tag: [{rep.pointer_tag:02x}], memory tag: [{mem}]")
    out += ["", f"CPU: 0 PID: {rep.pid} Comm: {rep.comm} emsan {__version__} ({rep.mode} mode)",
            f"Hardware name: Unicorn {UNICORN_VERSION} {arch}", "Call Trace:"]
    out += frames_text(sym, rep.stack, True)
    out.append("")
    o = rep.obj
    if o is not None:
        out.append(f"Allocated by task {rep.pid}:")
        out += frames_text(sym, o.alloc_stack, False)
        out.append("")
        if o.state == "freed" or o.free_stack:
            out.append(f"Freed by task {rep.pid}:")
            out += frames_text(sym, o.free_stack, False)
            out.append("")
        cache = f"kmalloc-{o.cache_size}" if not o.large else "kmalloc-large"
        out += [f"The buggy address belongs to the object at {o.start:016x}",
                f" which belongs to the cache {cache} of size {o.cache_size}"]
        where = rep.untagged_addr         # the access address, as describe_object_addr() uses
        if where < o.start:
            rel, n = "to the left of", o.start - where
        elif where >= o.start + o.size:
            rel, n = "to the right of", where - (o.start + o.size)
        else:
            rel, n = "inside of", where - o.start
        # Only generic mode knows from its shadow whether the region is allocated or freed.
        state = "" if rep.pointer_tag is not None else "allocated " if o.state == "allocated" else "freed "
        out += [f"The buggy address is located {n} bytes {rel}",
                f" {state}{o.size}-byte region [{o.start:016x}, {o.start + o.size:016x})", ""]
    for note in rep.notes:
        out.append(note)
    if rep.notes:
        out.append("")
    if rep.shadow_rows:
        out.append("Memory state around the buggy address:")
        row_bytes = ROW_GRANULES * rep.granule
        for start, vals in rep.shadow_rows:
            if all(v is None for v in vals):
                continue
            mark = ">" if start <= rep.first_bad < start + row_bytes else " "
            cells = " ".join("  " if v is None else f"{v:02x}" for v in vals)
            out.append(f"{mark}{start:016x}: {cells}")
            if mark == ">":
                col = 1 + 16 + 2 + ((rep.first_bad - start) // rep.granule) * 3
                out.append(" " * col + "^")
    out.append(RULE)
    return "\n".join(out)
