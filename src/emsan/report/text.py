"""Reports in the kernel's text layouts: KASAN's report and KFENCE's, with user-space words where
kernel words make no sense (task = process, cache = size class). Addresses are printed in full
(the kernel's no_hash_pointers), and corrupted bytes with their values."""
from __future__ import annotations

from emsan import __version__
from emsan.machine import UNICORN_VERSION
from emsan.report.model import ROW_GRANULES, KfenceReport, LeakReport, Report
from emsan.report.symbolize import Frame, Symbolizer

RULE = "=" * 66


def render(rep: Report | KfenceReport | LeakReport, sym: Symbolizer, arch: str) -> str:
    if isinstance(rep, LeakReport):
        return leak_text(rep, sym)
    return kfence_text(rep, sym, arch) if isinstance(rep, KfenceReport) else kasan_text(rep, sym, arch)


def title_frame(rep: Report | KfenceReport, sym: Symbolizer) -> Frame | None:
    """The frame the title names: the access's, or the caller of a free or interceptor."""
    if not rep.stack:
        return None
    i = rep.title_frame
    return sym.frame(rep.stack[i], is_return_address=i > 0 or not rep.first_is_pc)


def frames_text(sym: Symbolizer, addrs: list[int], first_is_pc: bool) -> list[str]:
    if not addrs:
        return [" (stack is not available)"]
    return [f" {f}" for f in sym.stack(addrs, first_is_pc)]


def machine_lines(rep: Report | KfenceReport, arch: str) -> list[str]:
    return [f"CPU: 0 PID: {rep.task.pid} Comm: {rep.task.comm} emsan {__version__} ({rep.mode} mode)",
            f"Hardware name: Unicorn {UNICORN_VERSION} {arch}"]


def kasan_text(rep: Report, sym: Symbolizer, arch: str) -> str:
    title = title_frame(rep, sym)
    out = [RULE, f"BUG: KASAN: {rep.bug_type} in {title if title else f'{rep.pc:#x}'}"]
    if rep.access == "free":
        out.append(f"Free of addr {rep.addr:016x} by task {rep.task}")
    elif rep.access == "allocate":
        out.append(f"Allocation of {rep.request} by task {rep.task}")
    else:
        out.append(f"{rep.access.capitalize()} of size {rep.size} at addr {rep.addr:016x} by task {rep.task}")
    if rep.pointer_tag is not None:
        mem = "--" if rep.memory_tag is None else f"{rep.memory_tag:02x}"
        out.append(f"Pointer tag: [{rep.pointer_tag:02x}], memory tag: [{mem}]")
    out += ["", *machine_lines(rep, arch), "Call Trace:"]
    out += frames_text(sym, rep.stack, True)
    out.append("")
    o = rep.obj
    if o is not None:
        out.append(f"Allocated by task {o.alloc_tid or rep.task.pid}:")
        out += frames_text(sym, o.alloc_stack, False)
        out.append("")
        if o.state == "freed" or o.free_stack:
            out.append(f"Freed by task {o.free_tid or rep.task.pid}:")
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


def kfence_description(rep: KfenceReport) -> str:
    """The line after a KFENCE title: what happened where (the line kfence_test matches)."""
    o = rep.obj
    rw = rep.access
    if rep.kind == "out-of-bounds":
        left = rep.addr < o.start
        dist = o.start - rep.addr if left else rep.addr - o.start
        return (f"Out-of-bounds {rw} at {rep.addr:#x} ({dist}B {'left' if left else 'right'} "
                f"of kfence-#{o.index}):")
    if rep.kind == "use-after-free":
        return f"Use-after-free {rw} at {rep.addr:#x} (in kfence-#{o.index}):"
    if rep.kind == "memory corruption":
        shown = " ".join("." if b is None else f"0x{b:02x}" for b in rep.corrupted)
        return f"Corrupted memory at {rep.addr:#x} [ {shown} ] (in kfence-#{o.index}):"
    if rep.kind == "invalid":
        return f"Invalid {rw} at {rep.addr:#x}:"
    where = f" (in kfence-#{o.index})" if o is not None else ""
    return f"Invalid free of {rep.addr:#x}{where}:"


def _track(what: str, pid: int, t: float, now: float) -> str:
    return f"{what} by task {pid} on cpu 0 at {t:.6f}s ({max(now - t, 0.0):.6f}s ago):"


def kfence_text(rep: KfenceReport, sym: Symbolizer, arch: str) -> str:
    title = title_frame(rep, sym)
    out = [RULE, f"BUG: KFENCE: {rep.bug_type} in {title if title else f'{rep.pc:#x}'}", "",
           kfence_description(rep)]
    out += frames_text(sym, rep.stack, rep.first_is_pc)
    o = rep.obj
    if o is not None:
        out += ["", f"kfence-#{o.index}: {o.start:#x}-{o.start + o.size - 1:#x}, size={o.size}, cache={o.cache}", "",
                _track("allocated", o.alloc_tid or rep.task.pid, o.alloc_s, rep.now_s)]
        out += frames_text(sym, o.alloc_stack, False)
        if o.state == "freed":
            out += ["", _track("freed", o.free_tid or rep.task.pid, o.free_s, rep.now_s)]
            out += frames_text(sym, o.free_stack, False)
    out += ["", *machine_lines(rep, arch), RULE]
    return "\n".join(out)


def hex_dump(data: bytes, prefix: str = "    ") -> list[str]:
    """The kernel's print_hex_dump() rows: 16 bytes each, bytes one by one, then the ASCII
    column (at a fixed position, also on a short last row)."""
    rows = []
    for off in range(0, len(data), 16):
        row = data[off:off + 16]
        hexpart = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        rows.append(f"{prefix}{hexpart:<49}{text}")
    return rows


def leak_text(rep: LeakReport, sym: Symbolizer) -> str:
    """mm/kmemleak.c's print_unreferenced() for the first object of a group, then what the
    kernel's layout has no line for: how many more objects the group has and how many are
    reachable only through them."""
    out = [f"unreferenced object 0x{rep.addr:08x} (size {rep.size}):",
           f'  comm "{rep.task.comm}", pid {rep.task.pid}, jiffies {rep.jiffies} (age {rep.age_ms / 1000:.3f}s)',
           f"  hex dump (first {len(rep.head)} bytes):", *hex_dump(rep.head), "  backtrace:"]
    out += [f"    {f}" for f in sym.stack(rep.stack, False)] or ["    (stack is not available)"]
    if rep.count > 1:
        out.append(f"  {rep.count - 1} more unreferenced object{'s' if rep.count > 2 else ''} with this backtrace "
                   f"({rep.bytes} bytes in {rep.count} objects)")
    if rep.indirect_count:
        out.append(f"  {rep.indirect_count} more object{'s' if rep.indirect_count > 1 else ''} "
                   f"({rep.indirect_bytes} bytes) referenced only from {'them' if rep.count > 1 else 'it'}")
    if rep.indirect:
        out.append("  (referenced only from other unreferenced objects)")
    return "\n".join(out)
