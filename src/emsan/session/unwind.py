"""Recovering a leaf function's caller, whose return address is not on the frame chain yet."""
from __future__ import annotations


def is_call_return(machine, arch, mem, sym, pc: int, ret: int) -> bool:
    """Is `ret` a return address into another function than the one at `pc`: in code, and
    right after a call instruction?"""
    mapping = mem.find(ret)
    if mapping is None or not mapping.prot & 4:
        return False
    here, there = sym.frame(pc), sym.frame(ret, is_return_address=True)
    if here.function is not None and here.function == there.function:
        return False
    if arch.name == "arm64":
        word = machine.try_read(ret - 4, 4)
        insn = int.from_bytes(word, "little") if word else 0
        return insn & 0xFC000000 == 0x94000000 or insn & 0xFFFFFC1F == 0xD63F0000   # bl / blr
    code = machine.try_read(ret - 7, 7) or b""
    if len(code) < 7:
        return False
    if code[2] == 0xE8:                                      # call rel32
        return True
    # call r/m64: ff /2, two to seven bytes long
    return any(code[7 - n] == 0xFF and (code[8 - n] >> 3) & 7 == 2 for n in range(2, 8))


def leaf_caller(machine, arch, mem, sym, pc: int) -> int | None:
    """The caller of the function at `pc` if that function has not saved its return address:
    LR on arm64, [sp] on x86-64 (confirmed by is_call_return)."""
    if arch.name == "arm64":
        ret = machine.reg("lr") & 0x0000_FFFF_FFFF_FFFF
    else:
        raw = machine.try_read(machine.sp, 8)
        ret = int.from_bytes(raw, "little") if raw else 0
    return ret if ret and is_call_return(machine, arch, mem, sym, pc, ret) else None
