"""Return-address protection (--stack-checks ret): the shadow call stack (native/scs.c) keeps each
call's return address and compares it at the return; a mismatch becomes a KASAN report, in every
mode, before any code at the wrong target runs. This module only turns the native record into
the report: the function whose return address was overwritten, where it was kept, where the
return should have gone and where it went."""
from __future__ import annotations

from typing import Callable

from emsan.report.model import ReturnReport, Task
from emsan.report.symbolize import Frame
from emsan.sanitizer.runtime import Error, Runtime

def arm64_ra_slot(read: Callable[[int, int], bytes | None], ret_pc: int, sp_after: int) -> int | None:
    """Where an arm64 epilogue reloaded x30 from: walk back from the `ret` over the epilogue
    (ldp x29, x30 / ldr x30 from sp, add sp), undoing its stack-pointer moves. None when the
    epilogue is not one of those shapes."""
    import capstone
    from capstone import arm64_const as A
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    md.detail = True
    sp = sp_after
    for back in range(1, 9):
        code = read(ret_pc - 4 * back, 4)
        if not code:
            return None
        insn = next(md.disasm(code, ret_pc - 4 * back), None)
        if insn is None or insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL):
            return None
        ops = insn.operands
        regs = [{"lr": "x30", "fp": "x29"}.get(r, r) for r in
                (insn.reg_name(o.reg) for o in ops if o.type == A.ARM64_OP_REG)]
        if insn.mnemonic == "add" and regs[:2] == ["sp", "sp"] and ops[-1].type == A.ARM64_OP_IMM:
            sp -= ops[-1].imm
            continue
        if insn.mnemonic in ("ldp", "ldr") and "x30" in regs:
            mem = next((o for o in ops if o.type == A.ARM64_OP_MEM), None)
            if mem is None or insn.reg_name(mem.mem.base) != "sp":
                return None
            post = ops[-1].type == A.ARM64_OP_IMM          # [sp], #imm: sp moved after the load
            base = sp - ops[-1].imm if post else sp
            index = regs.index("x30") if insn.mnemonic == "ldp" else 0
            return base + (0 if post else mem.mem.disp) + 8 * index
        if "sp" in regs:
            return None             # another stack-pointer move: do not guess
    return None


def build(runtime: Runtime, e: Error, task: Task, mode: str, arm64: bool,
          read: Callable[[int, int], bytes | None], frame: Callable[[int, bool], Frame]) -> ReturnReport:
    """frame(addr, is_return_address): the symbolized frame of an address."""
    rec = e.record
    stack = runtime.stack(e.stack) or [e.pc]
    slot: int | None = e.addr
    if arm64:
        slot = arm64_ra_slot(read, e.pc, e.addr)
    rep = ReturnReport(mode, "stack-out-of-bounds", "read", slot if slot is not None else e.addr, 8, e.pc, task,
                       stack, 0, None, slot if slot is not None else e.addr,
                       function=e.pc, expected=rec.ret_expected, target=rec.ret_target, slot_known=slot is not None)
    where = frame(e.pc, False)
    func = where.function or f"{e.pc:#x}"
    whole = f"{func}+0x0/{where.size:#x}" if where.function else func
    kept = f"at {slot:#x}" if slot is not None else f"in the frame at sp {e.addr:#x}"
    rep.notes += [
        f"The return address of {func}() {kept} was overwritten before it returned:",
        f" the call left {frame(rec.ret_expected, True)} ({rec.ret_expected:#x}), "
        f"the return went to {frame(rec.ret_target, False)} ({rec.ret_target:#x}).",
        "The write that overwrote it was not seen (no stack shadow in this mode).",
        "",
        f"The buggy address belongs to stack of task {task}",
        " and holds the return address of frame:",
        f" {whole}",
    ]
    return rep
