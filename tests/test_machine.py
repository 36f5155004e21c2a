"""The engine layer: exact PCs in memory hooks, Top-Byte-Ignore on arm64, fast register access."""
from __future__ import annotations

import struct

from unicorn import unicorn_const as uc

from emsan.machine import Machine

CODE = 0x10000
DATA = 0x200000


def _pcs_of_writes(m: Machine, code: bytes, regs: dict[str, int]) -> list[tuple[int, int]]:
    m.map(CODE, 0x1000, 7)
    m.map(DATA, 0x1000, 3)
    m.write(CODE, code)
    for k, v in regs.items():
        m.set_reg(k, v)
    seen: list[tuple[int, int]] = []
    m.hook(uc.UC_HOOK_MEM_WRITE, lambda _uc, acc, addr, size, val, ud: seen.append((m.pc, addr)))
    m.uc.emu_start(CODE, CODE + len(code))
    return seen


def test_x86_memory_hook_sees_exact_pc_mid_block():
    # four stores in one basic block; the hook must see each store's own address
    code = bytes.fromhex("8903" "894304" "894308" "90" "89430c" "90")
    seen = _pcs_of_writes(Machine("x86_64"), code, {"rbx": DATA, "rax": 7})
    assert seen == [(CODE, DATA), (CODE + 2, DATA + 4), (CODE + 5, DATA + 8), (CODE + 9, DATA + 12)]


def test_arm64_memory_hook_sees_exact_pc_mid_block():
    # str w0,[x1]; str w0,[x1,#4]; nop; str w0,[x1,#8]
    code = struct.pack("<4I", 0xB9000020, 0xB9000420, 0xD503201F, 0xB9000820)
    seen = _pcs_of_writes(Machine("arm64"), code, {"x1": DATA, "x0": 7})
    assert seen == [(CODE, DATA), (CODE + 4, DATA + 4), (CODE + 12, DATA + 8)]


def test_arm64_top_byte_ignore_is_on():
    m = Machine("arm64")
    m.map(CODE, 0x1000, 7)
    m.map(DATA, 0x1000, 3)
    m.write(DATA, struct.pack("<Q", 0x1122334455667788))
    m.write(CODE, struct.pack("<I", 0xF9400020))          # ldr x0, [x1]
    m.set_reg("x1", DATA | (0x5A << 56))                   # a tagged pointer
    m.uc.emu_start(CODE, CODE + 4)
    assert m.reg("x0") == 0x1122334455667788


def test_register_access_round_trips():
    m = Machine("x86_64")
    m.set_reg("r12", 0xDEADBEEF_CAFEF00D)
    assert m.reg("r12") == 0xDEADBEEF_CAFEF00D
    m.pc = 0x1234
    assert m.pc == 0x1234


def test_arm64_pc_is_exact_only_with_an_unbounded_hook():
    """Why generic mode registers its memory hook over all memory: on unicorn 2.1.3 a
    range-bounded hook on arm64 sees the PC of the block's first access instead."""
    code = struct.pack("<4I", 0xB9000020, 0xB9000420, 0xD503201F, 0xB9000820)
    bounded = Machine("arm64")
    bounded.map(CODE, 0x1000, 7)
    bounded.map(DATA, 0x1000, 3)
    bounded.write(CODE, code)
    bounded.set_reg("x1", DATA)
    seen: list[int] = []
    bounded.hook(uc.UC_HOOK_MEM_WRITE, lambda _uc, acc, addr, size, val, ud: seen.append(bounded.pc),
                 DATA, DATA + 0xFFF)
    bounded.uc.emu_start(CODE, CODE + len(code))
    assert seen == [CODE, CODE, CODE], "unicorn changed: bounded hooks may now be exact (revisit generic.py)"
