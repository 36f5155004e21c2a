"""Reports as JSON: the same data as the text, with symbolized frames."""
from __future__ import annotations

from emsan.report.symbolize import Symbolizer
from emsan.sanitizer.report import Report


def to_json(rep: Report, sym: Symbolizer) -> dict:
    def frames(addrs: list[int], first_is_pc: bool) -> list[dict]:
        return [f.to_json() for f in sym.stack(addrs, first_is_pc)]

    title = sym.frame(rep.stack[rep.title_frame], is_return_address=rep.title_frame > 0) if rep.stack else None
    d = {
        "tool": "emsan", "mode": rep.mode, "bug_type": rep.bug_type, "access": rep.access,
        "address": f"{rep.addr:#x}", "size": rep.size, "pc": f"{rep.pc:#x}",
        "function": title.function if title else None,
        "task": {"comm": rep.comm, "pid": rep.pid},
        "stack": frames(rep.stack, True), "notes": rep.notes,
    }
    o = rep.obj
    if o is not None:
        d["object"] = {
            "start": f"{o.start:#x}", "size": o.size, "cache": f"kmalloc-{o.cache_size}" if not o.large else "kmalloc-large",
            "state": o.state, "allocated_with": o.kind, "offset": rep.untagged_addr - o.start,
            "alloc_stack": frames(o.alloc_stack, False), "free_stack": frames(o.free_stack, False),
        }
    if rep.pointer_tag is not None:
        d["pointer_tag"] = rep.pointer_tag
        d["memory_tag"] = rep.memory_tag
        if rep.shadow_rows:
            d["memory_tags"] = [{"addr": f"{start:#x}", "tags": vals} for start, vals in rep.shadow_rows]
            d["first_bad_address"] = f"{rep.first_bad:#x}"
    elif rep.shadow_rows:
        d["shadow"] = [{"addr": f"{start:#x}", "bytes": vals} for start, vals in rep.shadow_rows]
        d["first_bad_address"] = f"{rep.first_bad:#x}"
    return d
