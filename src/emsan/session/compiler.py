"""Wires compiler-assisted mode to a Linux guest built with `clang $(emsan cflags)`: the shadow
mapped into the guest, the generic allocator and string interceptors at the guest's entry
points, and the runtime's report and globals functions of each module as it loads.

Everything else (reporting each distinct bug once, --continue, JSON, exit decisions) is the
generic wiring's (emsan.session.sanitize.LinuxSanitizer)."""
from __future__ import annotations

import sys

from emsan.os.linux.memory import SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE, Module
from emsan.report.json import to_json
from emsan.sanitizer.compiler import CompilerMode, CompilerReport
from emsan.sanitizer.native_heap import NativeHeap
from emsan.session.sanitize import LinuxSanitizer


class CompilerSanitizer(LinuxSanitizer):
    reports_faults = False      # the guest's own checks report a hole before it faults
    def __init__(self, session):
        # The instrumented code keeps frame records (`emsan cflags` has -fno-omit-frame-pointer):
        # the frame-pointer walk gives its allocation and free stacks without the shadow call
        # stack's per-block hook, which alone would cost more than the whole runtime's budget
        # (5% over the bare instrumented binary, bench/compiler.py). Code without frame records
        # (a static libc) may lose a frame of the stacks it allocates from.
        if session.opts.stacks == "auto":
            session.opts.stacks = "fp"
        super().__init__(session)

    def create_mode(self) -> CompilerMode:
        opts, mem = self.s.opts, self.s.mem
        mem.map(SANITIZER_HEAP_BASE, SANITIZER_HEAP_BASE + SANITIZER_HEAP_SIZE, 3, "[emsan-heap]")
        return CompilerMode(self.s.machine, self.s.arch, SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE,
                            opts.quarantine_size, self.is_call_return, self.stack_of,
                            lambda pc: str(self.s.symbolizer.frame(pc)))

    def stack_of(self, addr: int) -> tuple[int, int] | None:
        """The stack mapping holding addr: the main thread's, or a thread's (an anonymous
        mapping below the main stack's guard)."""
        lo, hi = self.s.mem.stack
        if lo <= addr < hi:
            return lo, hi
        mp = self.s.mem.find(addr)
        if mp is not None and mp.name in ("[stack]", "[anon]") and mp.prot & 3 == 3:
            return mp.start, mp.end
        return None

    def module_loaded(self, mod: Module) -> None:
        super().module_loaded(mod)
        self.mode.runtime_loaded(mod.path, mod.base)

    @staticmethod
    def render_json(rep: CompilerReport, sym) -> dict:
        d = to_json(rep, sym)
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


class BareShadow:
    """The benchmark baseline for compiler-assisted mode (`--mode none` on an instrumented
    program): the shadow mapped into the guest so that the instrumented code runs, and nothing
    else of emsan: no allocator, no quarantine, no interceptors, no reports (a failed check
    runs the runtime's empty report function and goes on)."""

    def __init__(self, session):
        self.s = session
        self.heap = NativeHeap(session.machine, session.arch, SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE, 0)
        self.heap.expose_shadow(session.machine)

    def finish(self) -> None:
        if self.s.opts.stats:
            st = self.heap.stats()
            print("emsan: stats: " + ", ".join(f"{k}={st[k]}" for k in ("shadow_pages", "tlb_flushes")),
                  file=sys.stderr)
