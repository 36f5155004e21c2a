"""Compiler-assisted mode: the guest was built with clang -fsanitize=kernel-address and emsan's
runtime header (`emsan cflags`), so it checks its own accesses against the shadow emsan maps into
it. No memory hook: emsan's allocator (the generic mode's, at the same entry points) poisons that
shadow, global redzones are poisoned when the guest registers its globals, and the compiler's
own code poisons stack and alloca redzones. Failed checks reach emsan through one native hook
(src/emsan/native/compiler.c); reports describe stack frames and global variables as the
kernel's generic KASAN reports do."""
from __future__ import annotations

import sys

from emsan.errors import EmsanError
from emsan.report.model import CompilerReport, FrameObject, StackFrame, Task
from emsan.runtime import GLOBALS_SYMBOL, NO_RETURN_SYMBOL, REPORT_SYMBOL
from emsan.sanitizer.entrypoints import runtime_functions
from emsan.sanitizer.kasan import Kasan, KasanMode
from emsan.sanitizer.mode import Capabilities, ModuleInfo, Target
from emsan.sanitizer.modes import register
from emsan.sanitizer.modes.generic import shadow_report
from emsan.sanitizer.runtime import Error, Runtime

FRAME_MAGIC = 0x41B58AB3
STACK_BUGS = ("stack-out-of-bounds", "alloca-out-of-bounds", "stack-use-after-scope")
MAX_FRAME_WALK = 8 << 20         # how far below the address a frame's left redzone is looked for


def runtime_symbols(path: str) -> dict[str, int]:
    """Link addresses of the runtime functions emsan stands in for, if the module defines them."""
    return runtime_functions(path)


def is_instrumented(path: str) -> bool:
    """Was this program built with emsan's compiler-assisted runtime (`emsan cflags`)?"""
    return REPORT_SYMBOL in runtime_symbols(path)


def parse_frame_descr(text: str) -> list[FrameObject]:
    """The compiler's frame descriptor "N off size len name[:line] ..." (tokenize_frame_descr())."""
    tok = text.split(" ")
    try:
        n = int(tok[0])
        out = []
        i = 1
        for _ in range(n):
            off, size, name = int(tok[i]), int(tok[i + 1]), tok[i + 3]    # tok[i + 2]: the name's length
            out.append(FrameObject(off, off + size, name.split(":")[0]))   # the kernel strips ":line"
            i += 4
        return out
    except (ValueError, IndexError):
        return []


@register
class CompilerMode(KasanMode):
    """The guest checks itself; emsan is its runtime."""

    name = "compiler-assisted"
    # The instrumented code keeps frame records (`emsan cflags` has -fno-omit-frame-pointer): the
    # frame-pointer walk gives its allocation and free stacks without the shadow call stack's
    # per-block hook, which alone would cost more than the whole runtime's budget (5% over the
    # bare instrumented binary, bench/compiler.py). Code without frame records (a static libc)
    # may lose a frame of the stacks it allocates from. Holes of the mmap area: the guest's own
    # checks report them before the fault. For the same reason no return-address checks by
    # default (the compiler's stack redzones catch the overflows; --stack-checks ret adds them).
    caps = Capabilities(default_stacks="fp", reports_mmap_faults=False, default_stack_checks="none")

    def __init__(self, target: Target):
        super().__init__(target)
        self.map_heap()
        ffi, lib = self.runtime.ffi, self.runtime.lib
        self.cc = ffi.gc(lib.emsan_cc_new(self.kasan.k), lib.emsan_cc_destroy)
        self._callbacks = {REPORT_SYMBOL: ffi.addressof(lib, "emsan_cc_report_cb"),
                           GLOBALS_SYMBOL: ffi.addressof(lib, "emsan_cc_globals_cb"),
                           NO_RETURN_SYMBOL: ffi.addressof(lib, "emsan_cc_no_return_cb")}
        self._global = ffi.new("emsan_cc_global *")
        self.kasan.expose_shadow()

    def module_loaded(self, module: ModuleInfo) -> None:
        """Also stand in for the runtime functions of a module that defines them."""
        super().module_loaded(module)
        for name, value in runtime_symbols(module.path).items():
            addr = value + module.base
            if addr in self.kasan.hooked:
                continue
            self.kasan.hooked[addr] = name
            self.runtime.intercepted(addr)
            self.machine.hook_code_native(self._callbacks[name], self.cc, addr)

    def checkpoint(self) -> None:
        # The guest writes its stack and global shadow itself, into emsan's host pages: under a
        # memory snapshot those writes land in the engine's private copies of them, which
        # emsan's own checks never read.
        raise EmsanError("compiler-assisted mode cannot go back to a checkpoint (persistent fuzzing): the guest "
                         "writes its shadow itself; fuzz it without --persistent")

    # --- reports ----------------------------------------------------------------------------------
    def build(self, e: Error, task: Task) -> CompilerReport:
        rep = CompilerReport.of(shadow_report(self, e, task))
        if rep.obj is not None or rep.access == "free":
            return rep
        stack_of = self.target.stack_of
        if rep.bug_type == "vmalloc-out-of-bounds" and stack_of(rep.addr):
            rep.bug_type = "stack-use-after-scope"     # 0xF8 on a stack: -mllvm -asan-use-after-scope=1
        if rep.bug_type in STACK_BUGS or (rep.bug_type != "global-out-of-bounds" and stack_of(rep.addr)):
            self._describe_stack(rep)
        else:
            rep.variable = self._variable(rep.addr)
            if rep.variable is not None:
                v = rep.variable
                rep.notes.append(f"The buggy address belongs to the variable:\n {v['name']}+{v['offset']:#x}/{v['size']:#x}")
        return rep

    def _variable(self, addr: int) -> dict | None:
        g = self._global
        if not self.runtime.lib.emsan_cc_find_global(self.cc, addr, g):
            return None
        m = self.machine
        out = {"name": _cstr(m, g.name), "offset": addr - g.beg, "size": g.size, "address": f"{g.beg:#x}",
               "module": _cstr(m, g.module_name), "file": None, "line": None}
        if g.location:
            loc = m.try_read(g.location, 16)
            if loc:
                out["file"] = _cstr(m, int.from_bytes(loc[:8], "little"))
                out["line"] = int.from_bytes(loc[8:12], "little")
        return out

    def _describe_stack(self, rep: CompilerReport) -> None:
        """kasan_print_address_stack_frame()."""
        rng = self.target.stack_of(rep.addr)
        if rng is None:
            return
        rep.on_stack = True
        lines = [f"The buggy address belongs to stack of task {rep.task}"]
        lo = max(rng[0], rep.addr - MAX_FRAME_WALK)
        frame = int(self.runtime.lib.emsan_cc_find_frame(self.cc, rep.addr, lo))
        words = self.machine.try_read(frame, 24) if frame else None
        if words:
            descr_ptr = int.from_bytes(words[8:16], "little")
            pc = int.from_bytes(words[16:24], "little")
            objects = parse_frame_descr(_cstr(self.machine, descr_ptr)) if descr_ptr else []
            rep.frame = StackFrame(rep.addr - frame, pc, objects)
            lines.append(f" and is located at offset {rep.addr - frame} in frame:")
            lines.append(f" {self.target.symbolize(pc)}")
            if objects:
                lines.append("")
                lines.append(f"This frame has {len(objects)} {'object' if len(objects) == 1 else 'objects'}:")
                lines += [f" [{o.start}, {o.end}) '{o.name}'" for o in objects]
        rep.notes.append("\n".join(lines))

    def stats(self) -> dict[str, int]:
        st = super().stats()
        cc = self.runtime.counters("emsan_cc_stats", self.runtime.lib.emsan_cc_get_stats, self.cc)
        st.update({f"cc_{k}": v for k, v in cc.items()})
        return st


class BareShadow:
    """The benchmark baseline for compiler-assisted mode (`--mode none` on an instrumented
    program): the shadow mapped into the guest so that the instrumented code runs, and nothing
    else of emsan: no allocator, no quarantine, no interceptors, no reports (a failed check
    runs the runtime's empty report function and goes on)."""

    def __init__(self, machine, arch, stats: bool, heap: tuple[int, int]):
        self.kasan = Kasan(Runtime(machine, arch), "generic", heap[0], heap[1], 0)
        self.kasan.expose_shadow()
        self.print_stats = stats

    def finish(self, info) -> int:
        if self.print_stats:
            st = self.kasan.stats()
            print("emsan: stats: " + ", ".join(f"{k}={st[k]}" for k in ("shadow_pages", "tlb_flushes")),
                  file=sys.stderr)
        return info.status


def _cstr(machine, addr: int, limit: int = 512) -> str:
    if not addr:
        return ""
    try:
        return machine.read_cstr(addr, limit).decode(errors="replace")
    except MemoryError:
        return ""
