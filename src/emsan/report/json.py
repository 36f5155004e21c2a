"""Reports as JSON: the same data as the text, with symbolized frames. Every report has the same
leading fields; each kind adds its own."""
from __future__ import annotations

from emsan.report.model import CompilerReport, KfenceReport, LeakReport, Report, ReturnReport
from emsan.report.symbolize import Symbolizer
from emsan.report.text import kfence_description, title_frame


def to_json(rep: Report | KfenceReport | LeakReport, sym: Symbolizer) -> dict:
    def frames(addrs: list[int], first_is_pc: bool) -> list[dict]:
        return [f.to_json() for f in sym.stack(addrs, first_is_pc)]

    if isinstance(rep, LeakReport):
        return leak_json(rep, frames(rep.stack, False))

    title = title_frame(rep, sym)
    d = {
        "tool": "emsan", "mode": rep.mode, "bug_type": rep.bug_type, "access": rep.access,
        "address": f"{rep.addr:#x}", "size": rep.size, "pc": f"{rep.pc:#x}",
        "function": title.function if title else None,
        "task": {"comm": rep.task.comm, "pid": rep.task.pid},
        "stack": frames(rep.stack, rep.first_is_pc), "notes": rep.notes,
    }
    if isinstance(rep, KfenceReport):
        d["description"] = kfence_description(rep)
        o = rep.obj
        if o is not None:
            d["object"] = {
                "index": o.index, "start": f"{o.start:#x}", "size": o.size, "cache": o.cache, "state": o.state,
                "offset": rep.addr - o.start,
                "alloc_stack": frames(o.alloc_stack, False), "free_stack": frames(o.free_stack, False),
                "alloc_task": o.alloc_tid or rep.task.pid,
                "free_task": (o.free_tid or rep.task.pid) if o.state == "freed" else None,
            }
        if rep.kind == "memory corruption":
            d["corrupted_bytes"] = rep.corrupted
        return d
    if rep.request is not None:
        q = rep.request
        d["request"] = {"function": q.call, "size": q.size, "count": q.count, "alignment": q.align,
                        "limit": q.limit, "in_use": q.in_use}
    o = rep.obj
    if o is not None:
        d["object"] = {
            "start": f"{o.start:#x}", "size": o.size, "cache": f"kmalloc-{o.cache_size}" if not o.large else "kmalloc-large",
            "state": o.state, "allocated_with": o.kind, "alignment": o.align or None, "offset": rep.untagged_addr - o.start,
            "alloc_stack": frames(o.alloc_stack, False), "free_stack": frames(o.free_stack, False),
            "alloc_task": o.alloc_tid or rep.task.pid,
            "free_task": (o.free_tid or rep.task.pid) if o.state == "freed" or o.free_stack else None,
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
    if isinstance(rep, ReturnReport):
        d["return_address"] = {
            "function": sym.frame(rep.function).function, "slot": f"{rep.addr:#x}" if rep.slot_known else None,
            "expected": sym.frame(rep.expected, is_return_address=True).to_json(),
            "target": sym.frame(rep.target).to_json()}
    if isinstance(rep, CompilerReport):
        if rep.variable is not None:
            d["variable"] = rep.variable
        if rep.on_stack:
            d["stack_object"] = None
            if rep.frame is not None:
                f = rep.frame
                d["stack_object"] = {
                    "offset": f.offset, "frame": sym.frame(f.pc).to_json(),
                    "objects": [{"start": o.start, "end": o.end, "name": o.name} for o in f.objects]}
    return d


def leak_json(rep: LeakReport, stack: list[dict]) -> dict:
    return {
        "tool": "emsan", "mode": rep.mode, "bug_type": rep.bug_type, "access": None,
        "address": f"{rep.addr:#x}", "size": rep.size, "pc": None,
        "function": stack[0]["function"] if stack else None,
        "task": {"comm": rep.task.comm, "pid": rep.task.pid}, "stack": stack, "notes": [],
        "jiffies": rep.jiffies, "age_ms": rep.age_ms, "hex_dump": rep.head.hex(),
        "indirect": rep.indirect, "count": rep.count, "bytes": rep.bytes,
        "indirect_count": rep.indirect_count, "indirect_bytes": rep.indirect_bytes,
        "objects": [{"address": f"{a:#x}", "size": n} for a, n in rep.objects],
    }
