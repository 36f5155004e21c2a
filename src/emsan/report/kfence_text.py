"""KFENCE reports in the kernel's layout (mm/kfence/report.c), and as JSON.

Addresses are printed in full (the kernel's no_hash_pointers), and corrupted bytes with their
values. Task = process, cache = the kmalloc size class the object's size falls in."""
from __future__ import annotations

from emsan import __version__
from emsan.machine import UNICORN_VERSION
from emsan.report.symbolize import Symbolizer
from emsan.report.text import RULE, frames_text
from emsan.sanitizer.kfence import KfenceReport


def title_frame(rep: KfenceReport, sym: Symbolizer):
    if not rep.stack:
        return None
    return sym.frame(rep.stack[0], is_return_address=not rep.first_is_pc)


def description(rep: KfenceReport) -> str:
    """The line after the title: what happened where (the line kfence_test matches)."""
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


def render(rep: KfenceReport, sym: Symbolizer, arch: str) -> str:
    title = title_frame(rep, sym)
    out = [RULE, f"BUG: KFENCE: {rep.bug_type} in {title if title else f'{rep.pc:#x}'}", "",
           description(rep)]
    out += frames_text(sym, rep.stack, rep.first_is_pc)
    o = rep.obj
    if o is not None:
        out += ["", f"kfence-#{o.index}: {o.start:#x}-{o.start + o.size - 1:#x}, size={o.size}, cache={o.cache}", "",
                _track("allocated", rep.pid, o.alloc_s, rep.now_s)]
        out += frames_text(sym, o.alloc_stack, False)
        if o.state == "freed":
            out += ["", _track("freed", rep.pid, o.free_s, rep.now_s)]
            out += frames_text(sym, o.free_stack, False)
    out += ["", f"CPU: 0 PID: {rep.pid} Comm: {rep.comm} emsan {__version__} ({rep.mode} mode)",
            f"Hardware name: Unicorn {UNICORN_VERSION} {arch}", RULE]
    return "\n".join(out)


def to_json(rep: KfenceReport, sym: Symbolizer) -> dict:
    """The same fields as a generic report's JSON (emsan.report.json), plus the KFENCE object."""
    def frames(addrs: list[int], first_is_pc: bool) -> list[dict]:
        return [f.to_json() for f in sym.stack(addrs, first_is_pc)]

    title = title_frame(rep, sym)
    d = {
        "tool": "emsan", "mode": rep.mode, "bug_type": rep.bug_type, "access": rep.access,
        "address": f"{rep.addr:#x}", "size": rep.size, "pc": f"{rep.pc:#x}",
        "function": title.function if title else None,
        "task": {"comm": rep.comm, "pid": rep.pid},
        "stack": frames(rep.stack, rep.first_is_pc), "notes": [],
        "description": description(rep),
    }
    o = rep.obj
    if o is not None:
        d["object"] = {
            "index": o.index, "start": f"{o.start:#x}", "size": o.size, "cache": o.cache, "state": o.state,
            "offset": rep.addr - o.start,
            "alloc_stack": frames(o.alloc_stack, False), "free_stack": frames(o.free_stack, False),
        }
    if rep.kind == "memory corruption":
        d["corrupted_bytes"] = rep.corrupted
    return d
