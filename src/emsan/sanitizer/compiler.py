"""Compiler-assisted mode: the guest was built with clang -fsanitize=kernel-address and emsan's
runtime header (`emsan cflags`), so it checks its own accesses against the shadow emsan maps into
it. No memory hook: emsan's allocator (the generic mode's, at the same entry points) poisons that
shadow, global redzones are poisoned when the guest registers its globals, and the compiler's
own code poisons stack and alloca redzones. Failed checks reach emsan through one native hook
(src/emsan/native/compiler.c); reports describe stack frames and global variables as the
kernel's do (mm/kasan/report_generic.c)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from emsan.runtime import GLOBALS_SYMBOL, NO_RETURN_SYMBOL, REPORT_SYMBOL
from emsan.sanitizer.entrypoints import function_symbols
from emsan.sanitizer.generic import GenericMode
from emsan.sanitizer.native_heap import Error
from emsan.sanitizer.report import Report

FRAME_MAGIC = 0x41B58AB3
STACK_BUGS = ("stack-out-of-bounds", "alloca-out-of-bounds", "stack-use-after-scope")
MAX_FRAME_WALK = 8 << 20         # how far below the address a frame's left redzone is looked for


def runtime_symbols(path: str) -> dict[str, int]:
    """Link addresses of the runtime functions emsan stands in for, if the module defines them."""
    return {name: value for value, _size, _kind, name in function_symbols(path)
            if name in (REPORT_SYMBOL, GLOBALS_SYMBOL, NO_RETURN_SYMBOL)}


def is_instrumented(path: str) -> bool:
    """Was this program built with emsan's compiler-assisted runtime (`emsan cflags`)?"""
    return REPORT_SYMBOL in runtime_symbols(path)


@dataclass
class FrameObject:
    start: int
    end: int
    name: str


@dataclass
class StackFrame:
    """The instrumented frame a stack address belongs to (decoded from its left redzone)."""
    offset: int                           # of the address from the frame's start
    pc: int                               # the function's address
    objects: list[FrameObject]


@dataclass
class CompilerReport(Report):
    """A Report plus where a stack or global address belongs (the kernel's address description)."""
    variable: dict | None = None          # name, offset, size, address, module, file, line
    frame: StackFrame | None = None
    on_stack: bool = False

    @classmethod
    def of(cls, rep: Report) -> "CompilerReport":
        return cls(**{f.name: getattr(rep, f.name) for f in fields(Report)})


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


class CompilerMode(GenericMode):
    name = "compiler-assisted"

    def __init__(self, machine, arch, heap_base: int, heap_size: int, quarantine_bytes: int,
                 is_call_return=lambda pc, ret: False, stack_of=lambda addr: None,
                 symbolize=lambda pc: f"{pc:#x}"):
        # stack_of(addr): (lo, hi) of the stack mapping holding addr, or None;
        # symbolize(pc): the kernel's %pS of a code address.
        super().__init__(machine, arch, heap_base, heap_size, quarantine_bytes, is_call_return,
                         check_accesses=False)
        ffi, lib = self.heap.ffi, self.heap.lib
        self.cc = ffi.gc(lib.emsan_cc_new(self.heap.h), lib.emsan_cc_destroy)
        self._callbacks = {REPORT_SYMBOL: ffi.addressof(lib, "emsan_cc_report_cb"),
                           GLOBALS_SYMBOL: ffi.addressof(lib, "emsan_cc_globals_cb"),
                           NO_RETURN_SYMBOL: ffi.addressof(lib, "emsan_cc_no_return_cb")}
        self._global = ffi.new("emsan_cc_global *")
        self.stack_of = stack_of
        self.symbolize = symbolize
        self.heap.expose_shadow(machine)

    def runtime_loaded(self, path: str, base: int) -> None:
        """Stand in for the runtime functions of a module that defines them."""
        for name, value in runtime_symbols(path).items():
            addr = value + base
            if addr in self.hooked:
                continue
            self.hooked[addr] = name
            if self.stacks is not None:
                self.stacks.intercepted(addr)
            self.machine.hook_code_native(self._callbacks[name], self.cc, addr)

    # --- reports ----------------------------------------------------------------------------------
    def build(self, e: Error, comm: str, pid: int) -> CompilerReport:
        rep = CompilerReport.of(super().build(e, comm, pid))
        if rep.obj is not None or rep.access == "free":
            return rep
        if rep.bug_type == "vmalloc-out-of-bounds" and self.stack_of(rep.addr):
            rep.bug_type = "stack-use-after-scope"     # 0xF8 on a stack: -mllvm -asan-use-after-scope=1
        if rep.bug_type in STACK_BUGS or (rep.bug_type != "global-out-of-bounds" and self.stack_of(rep.addr)):
            self._describe_stack(rep, comm, pid)
        else:
            rep.variable = self._variable(rep.addr)
            if rep.variable is not None:
                v = rep.variable
                rep.notes.append(f"The buggy address belongs to the variable:\n {v['name']}+{v['offset']:#x}/{v['size']:#x}")
        return rep

    def _variable(self, addr: int) -> dict | None:
        g = self._global
        if not self.heap.lib.emsan_cc_find_global(self.cc, addr, g):
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

    def _describe_stack(self, rep: CompilerReport, comm: str, pid: int) -> None:
        """kasan_print_address_stack_frame()."""
        rng = self.stack_of(rep.addr)
        if rng is None:
            return
        rep.on_stack = True
        lines = [f"The buggy address belongs to stack of task {comm}/{pid}"]
        lo = max(rng[0], rep.addr - MAX_FRAME_WALK)
        frame = int(self.heap.lib.emsan_cc_find_frame(self.cc, rep.addr, lo))
        words = self.machine.try_read(frame, 24) if frame else None
        if words:
            descr_ptr = int.from_bytes(words[8:16], "little")
            pc = int.from_bytes(words[16:24], "little")
            objects = parse_frame_descr(_cstr(self.machine, descr_ptr)) if descr_ptr else []
            rep.frame = StackFrame(rep.addr - frame, pc, objects)
            lines.append(f" and is located at offset {rep.addr - frame} in frame:")
            lines.append(f" {self.symbolize(pc)}")
            if objects:
                lines.append("")
                lines.append(f"This frame has {len(objects)} {'object' if len(objects) == 1 else 'objects'}:")
                lines += [f" [{o.start}, {o.end}) '{o.name}'" for o in objects]
        rep.notes.append("\n".join(lines))

    def stats(self) -> dict[str, int]:
        st = super().stats()
        cs = self.heap.ffi.new("emsan_cc_stats *")
        self.heap.lib.emsan_cc_get_stats(self.cc, cs)
        st.update({f"cc_{f}": getattr(cs, f) for f in dir(cs)})
        return st


def _cstr(machine, addr: int, limit: int = 512) -> str:
    if not addr:
        return ""
    try:
        return machine.read_cstr(addr, limit).decode(errors="replace")
    except MemoryError:
        return ""
