"""The kernel-oops-like message printed when a guest signal would kill the real process."""
from __future__ import annotations

from emsan.os.linux.signals import SIGNAMES
from emsan.report.symbolize import Frame, Symbolizer
from emsan.session.unwind import leaf_caller


def describe_fault(fault) -> list[str]:
    if fault is None or fault.kind != "segv":
        return []
    what = "not present" if not fault.mapped else "protection violation"
    return [f"BUG: unable to handle page fault for address: {fault.addr:016x}",
            f"#PF: user {fault.access} access, page {what}"]


def call_trace(proc, sym: Symbolizer, max_frames: int = 64) -> list[Frame]:
    """Innermost first: the PC, then the frame-pointer chain while it stays in code."""
    return sym.stack(call_trace_pcs(proc, sym, max_frames))


def call_trace_pcs(proc, sym: Symbolizer, max_frames: int = 64) -> list[int]:
    m, arch, mem = proc.machine, proc.arch, proc.mem
    pcs = [m.pc]
    caller = leaf_caller(m, arch, mem, sym, m.pc)
    if caller is not None:
        pcs.append(caller)
    for ret in arch.frame_walk(m, max_frames):
        mapping = mem.find(ret)
        if mapping is None or not mapping.prot & 4:
            break
        if ret not in pcs[-1:]:
            pcs.append(ret)
    return pcs[:max_frames]


def oops(proc, info, sym: Symbolizer) -> str:
    sig = info.signal
    name = SIGNAMES.get(sig, f"signal {sig}")
    lines = ["==================================================================",
             f"emsan: {proc.comm}/{proc.pid} killed by {name} (signal {sig})"]
    lines += describe_fault(info.fault)
    frames = call_trace(proc, sym)
    if frames:
        lines.append(f"PC is at {frames[0]}")
    lines.append("Call Trace:")
    lines += [f" {f}" for f in frames]
    lines.append("==================================================================")
    return "\n".join(lines)


def oops_json(proc, info, sym: Symbolizer) -> dict:
    """The fatal signal as a report-like JSON record (the fields triage and SARIF read)."""
    sig = info.signal
    frames = call_trace(proc, sym)
    d = {"tool": "emsan", "mode": "signal", "bug_type": SIGNAMES.get(sig, f"signal {sig}"),
         "signal": sig, "pc": f"{frames[0].addr:#x}" if frames else None,
         "function": frames[0].function if frames else None,
         "task": {"comm": proc.comm, "pid": proc.pid}, "stack": [f.to_json() for f in frames], "notes": []}
    f = info.fault
    if f is not None and f.kind == "segv":
        d.update(access=f.access, address=f"{f.addr:#x}", size=f.size)
    return d

