"""Stack objects from DWARF (--stack-checks full): the native check (native/stackobj.c) finds the
frame a range touched by an interceptor or a system call starts in, from the shadow call stack,
and asks here, once per return address, which local variables DWARF places in that frame at
that point (report/dwarf_locals.py); an overrun becomes the kernel's stack-out-of-bounds report
with its frame description ("located in stack of task ... at offset N in frame: FUNC ... this
frame has N objects: [32, 42) 'dest'"). Modules are indexed lazily, per function, when one of
their frames is first touched: a program that never hands a stack range to libc pays nothing."""
from __future__ import annotations

import bisect

from emsan.report.dwarf_locals import FB
from emsan.report.model import CompilerReport, FrameObject, StackFrame, Task
from emsan.report.symbolize import module_symbols
from emsan.sanitizer.runtime import Error
from emsan.sanitizer.stacks import ROW, cfi_rows

ObjectList = list[tuple[int, int, str]]         # (lo, hi, name), CFA-relative


def row_at(rows: bytes, pc: int) -> tuple | None:
    """The last of the packed CFI rows (ROW, sorted by pc) whose pc is at most `pc`, None before
    the first: a binary search over the packed bytes (unpacking libc's 29,000 rows into tuples
    first was 5 ms of the first stack-range check of every run)."""
    i = bisect.bisect_right(range(len(rows) // ROW.size), pc, key=lambda k: ROW.unpack_from(rows, k * ROW.size)[0])
    return ROW.unpack_from(rows, (i - 1) * ROW.size) if i else None


class StackObjects:
    def __init__(self, runtime, mem, symbolizer, arm64: bool):
        self.runtime, self.mem, self.sym, self.arm64 = runtime, mem, symbolizer, arm64
        self.frames: dict[int, tuple[int, ObjectList]] = {}     # return address -> (entry, objects)
        self._rows: dict[str, bytes] = {}                       # module -> its CFI rows (link addresses)
        ffi, lib = runtime.ffi, runtime.lib

        def lookup(pc: int) -> None:
            try:
                entry, objs, cfa_reg, cfa_off = self.objects(pc)
            except Exception:               # unreadable DWARF is guest input: the frame's bounds only
                entry, objs, cfa_reg, cfa_off = 0, [], 0, 0
            self.frames[pc] = (entry, objs)
            lib.emsan_sobj_add(runtime.rt, pc, entry, cfa_reg, cfa_off,
                               ffi.new("int64_t[]", [o[0] for o in objs] or [0]),
                               ffi.new("int64_t[]", [o[1] for o in objs] or [0]), len(objs))
        self._cb = ffi.callback("void(uint64_t)", lookup)
        lib.emsan_sobj_enable(runtime.rt, self._cb)

    def objects(self, pc: int) -> tuple[int, ObjectList, int, int]:
        """The function's first instruction (0: unknown), the objects in place at the return
        address pc (CFA-relative, sorted) and the CFI rule of its CFA there (cfa_rule); no
        objects without usable DWARF. A place relative to a register (clang's frame bases,
        DW_OP_breg) is related to the CFA by that rule: the frame pointer when the CFA is the
        frame pointer plus k, the stack pointer when it is the stack pointer plus k (at the call,
        where the place is read); other registers give no object."""
        mod = self.mem.module_at(pc)
        if mod is None:
            return 0, [], 0, 0
        dwarf = module_symbols(mod.path, self.sym.roots).dwarf
        found = dwarf.frame_objects(pc - mod.base - 1) if dwarf is not None else None
        if found is None or not found[2]:
            return 0, [], 0, 0
        entry, frame_base, places = found
        cfa_reg, cfa_off = self.cfa_rule(pc)
        fp, sp = (29, 31) if self.arm64 else (6, 7)

        def shift(base: int | None) -> int | None:
            """CFA-relative offset of a base: the CFA itself, or a register the rule relates to it."""
            if base == FB:
                return shift(frame_base)
            if base == -1:
                return 0
            if (base, cfa_reg) in ((fp, 2), (sp, 1)):
                return -cfa_off             # the register is CFA - k here
            return None
        objs = sorted((lo + d, hi + d, name) for base, lo, hi, name in places if (d := shift(base)) is not None)
        return (entry + mod.base if entry is not None else 0), objs, cfa_reg, cfa_off

    def cfa_rule(self, pc: int) -> tuple[int, int]:
        """The CFI rule of the CFA at the call before return address pc: (1, off) for sp + off,
        (2, off) for fp + off, (0, 0) when the module's CFI says nothing there."""
        mod = self.mem.module_at(pc)
        if mod is None:
            return 0, 0
        rows = self._rows.get(mod.path)
        if rows is None:
            rows = self._rows[mod.path] = cfi_rows(mod.path, self.arm64)
        row = row_at(rows, pc - mod.base - 1)
        if row is None:
            return 0, 0
        _pc, cfa_off, _ra, _fp, cfa_reg = row
        return (cfa_reg, cfa_off) if cfa_reg in (1, 2) else (0, 0)

    def stats(self) -> dict[str, int]:
        st = self.runtime.ffi.new("emsan_sobj_stats *")
        self.runtime.lib.emsan_sobj_get_stats(self.runtime.rt, st)
        return {"stack_range_checks": st.checks, "stack_frames_checked": st.frames,
                "stack_frame_lookups": st.lookups}

    def build(self, mode, e: Error, task: Task) -> CompilerReport:
        """The report of an EMSAN_ERR_STACK_OOB, in the kernel's layout for stack addresses."""
        rec = e.record
        stack = mode.call_trace(e)
        access = "write" if e.is_write else "read"
        entry, objs = self.frames.get(rec.frame_pc, (0, []))
        lo, cfa = min(rec.frame_lo, e.addr), rec.frame_cfa        # offsets from the frame's start, as KASAN's
        obj = objs[rec.frame_obj] if 0 <= rec.frame_obj < len(objs) else None
        first_bad = (cfa + obj[1] if e.addr >= cfa + obj[0] else e.addr) if obj is not None else \
            (cfa - 8 if not self.arm64 else cfa)
        rep = CompilerReport(mode.name, "stack-out-of-bounds", access, e.addr, e.size, e.pc, task, stack,
                             mode.title_frame(e, stack), None, max(first_bad, e.addr))
        mode.add_notes(rep, e)
        rep.on_stack = True
        where = self.sym.frame(rec.frame_pc, is_return_address=True)
        frame_objs = [FrameObject(cfa + a - lo, cfa + b - lo, name) for a, b, name in objs]
        rep.frame = StackFrame(e.addr - lo, entry or rec.frame_pc - 1, frame_objs)
        lines = [f"The buggy address belongs to stack of task {task}",
                 f" and is located at offset {e.addr - lo} in frame:", f" {where}", ""]
        if objs:
            lines.append(f"This frame has {len(objs)} {'object' if len(objs) == 1 else 'objects'}:")
            for i, o in enumerate(frame_objs):
                mark = ""
                if i == rec.frame_obj:
                    verb = "overflows" if e.addr >= cfa + objs[i][0] else "underflows"
                    mark = f" <== Memory access at offset {e.addr - lo} {verb} this variable"
                lines.append(f" [{o.start}, {o.end}) '{o.name}'{mark}")
        else:
            lines.append("This frame has no objects emsan knows of (no DWARF for it): checked against its bounds.")
        if obj is None:
            what = "the saved return address" if not self.arm64 else "its caller's frame record"
            lines.append(f"The access runs past the frame's end at {cfa - (0 if self.arm64 else 8):#x} "
                         f"({what}).")
        else:
            rep.variable = {"name": obj[2], "offset": e.addr - (cfa + obj[0]), "size": obj[1] - obj[0],
                            "address": f"{cfa + obj[0]:#x}", "module": where.module, "file": None, "line": None}
        rep.notes.append("\n".join(lines))
        return rep
