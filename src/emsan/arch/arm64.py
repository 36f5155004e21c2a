from __future__ import annotations

from emsan.arch.base import Arch


class ARM64(Arch):
    def __init__(self) -> None:
        super().__init__(
            name="arm64", elf_machine=183, platform="aarch64",
            pc="pc", sp="sp", fp="x29", ret="x0",
            args=("x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7"),
            syscall_nr="x8", syscall_args=("x0", "x1", "x2", "x3", "x4", "x5"), syscall_ret="x0",
            capstone_arch="CS_ARCH_ARM64", capstone_mode="CS_MODE_ARM",
        )

    gprs = tuple(f"x{i}" for i in range(29)) + ("x29", "x30", "sp")

    _SIZE_BY_REG = {"x": 8, "w": 4, "q": 16, "d": 8, "s": 4, "h": 2, "b": 1, "v": 16}
    # The LSE atomics, and their aliases without a result register (STADD is LDADD into xzr).
    _LSE_ATOMICS = tuple(p + op for op in ("add", "clr", "eor", "set", "smax", "smin", "umax", "umin")
                         for p in ("ld", "st")) + ("swp", "cas")
    _LOAD_EXCLUSIVE = ("ldxr", "ldaxr", "ldxp", "ldaxp")
    _STORE_EXCLUSIVE = ("stxr", "stlxr", "stxp", "stlxp")

    def memory_operands(self, insn, regs: dict[str, int]) -> list[tuple[int, int, int]]:
        from capstone import arm64 as ca
        mems = [op for op in insn.operands if op.type == ca.ARM64_OP_MEM]
        if not mems:
            return []
        mem = mems[0].mem
        base = insn.reg_name(mem.base)
        ea = regs["sp" if base in ("sp", "wsp") else "x" + base[1:] if base[0] == "w" else base] + mem.disp
        if mem.index:
            idx = insn.reg_name(mem.index)
            val = regs["x" + idx[1:]]
            op = mems[0]
            if idx[0] == "w":
                val &= 0xFFFF_FFFF
                if op.ext in (ca.ARM64_EXT_SXTW,) and val >> 31:
                    val -= 1 << 32
            ea += val << (op.shift.value if op.shift.type else 0)
        name = insn.mnemonic
        regs_used = [insn.reg_name(op.reg) for op in insn.operands if op.type == ca.ARM64_OP_REG]
        if name.startswith(("stxr", "stlxr", "stxp", "stlxp")):
            regs_used = regs_used[1:]                 # the status register
        if name.endswith("b") and not name.startswith(("sub", "cb", "tb")):
            size = 1
        elif name.endswith("h"):
            size = 2
        elif name in ("ldrsw", "ldursw", "ldpsw"):
            size = 4 * (2 if name == "ldpsw" else 1)
        else:
            size = self._SIZE_BY_REG.get(regs_used[0][0], 8) if regs_used else 8
            if name.startswith(("ldp", "stp", "ldnp", "stnp", "ldxp", "stxp", "ldaxp", "stlxp", "casp")):
                size *= 2
            elif name.startswith(("ld1", "st1", "ld2", "st2", "ld3", "st3", "ld4", "st4")):
                size = 16 * max(1, len(regs_used))
        # capstone marks a store's memory operand read-write: judge by the instruction instead.
        access = 3 if name.startswith(self._LSE_ATOMICS) else 2 if name.startswith("st") else 1
        return [(ea & 0x00FF_FFFF_FFFF_FFFF, size, access)]

    def atomic_rmw(self, m, pc: int) -> bool:
        """The LSE atomics, and a load-exclusive that opens a load/store-exclusive loop (a
        store-exclusive follows before the code leaves it): the guest's own atomic operation, or
        libgcc's outline atomics on a CPU without LSE."""
        code = m.try_read(pc, 64) or m.try_read(pc, 4) or b""
        insns = self.disassembler.disasm(code, pc)
        first = next(insns, None)
        if first is None or first.mnemonic.startswith(self._LSE_ATOMICS):
            return first is not None
        if not first.mnemonic.startswith(self._LOAD_EXCLUSIVE):
            return False
        for insn in insns:
            if insn.mnemonic.startswith(self._STORE_EXCLUSIVE):
                return True
            if insn.mnemonic in ("ret", "bl", "blr", "br", "b", "svc"):
                return False
        return False

    def return_address(self, m) -> int:
        return m.reg("lr") & 0x0000_FFFF_FFFF_FFFF

    def return_from_call(self, m, value: int | None) -> None:
        if value is not None:
            m.set_reg("x0", value)
        m.pc = m.reg("lr")

    def setup_call(self, m, args: list[int], return_to: int) -> None:
        for reg, v in zip(self.args, args):
            m.set_reg(reg, v)
        m.set_reg("lr", return_to)
        m.sp = (m.sp - 4096) & ~15
