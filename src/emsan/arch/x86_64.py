from __future__ import annotations

from emsan.arch.base import Arch


class X86_64(Arch):
    def __init__(self) -> None:
        super().__init__(
            name="x86_64", elf_machine=62, platform="x86_64",
            pc="rip", sp="rsp", fp="rbp", ret="rax",
            args=("rdi", "rsi", "rdx", "rcx", "r8", "r9"),
            syscall_nr="rax", syscall_args=("rdi", "rsi", "rdx", "r10", "r8", "r9"), syscall_ret="rax",
            capstone_arch="CS_ARCH_X86", capstone_mode="CS_MODE_64",
        )

    gprs = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
    stale_atomic_pc = True

    def memory_operands(self, insn, regs: dict[str, int]) -> list[tuple[int, int, int]]:
        from capstone import x86 as cx
        out: list[tuple[int, int, int]] = []
        if insn.mnemonic == "lea" or insn.mnemonic.startswith(("nop", "prefetch")):
            return out                  # an address operand that reads nothing
        for op in insn.operands:
            if op.type != cx.X86_OP_MEM or op.mem.segment not in (0, cx.X86_REG_DS, cx.X86_REG_SS, cx.X86_REG_ES):
                continue
            mem = op.mem
            ea = mem.disp
            if mem.base == cx.X86_REG_RIP:
                ea += insn.address + insn.size
            elif mem.base:
                ea += regs[insn.reg_name(mem.base)]
            if mem.index:
                ea += regs[insn.reg_name(mem.index)] * mem.scale
            out.append((ea & 0xFFFF_FFFF_FFFF_FFFF, op.size, op.access))
        return out

    def atomic_rmw(self, m, pc: int) -> bool:
        """lock-prefixed read-modify-writes, and xchg with memory (locked without the prefix)."""
        from capstone import x86 as cx
        insn = next(self.disassembler.disasm(m.try_read(pc, 15) or b"", pc, 1), None)
        if insn is None or not any(op.type == cx.X86_OP_MEM for op in insn.operands):
            return False
        return insn.prefix[0] == cx.X86_PREFIX_LOCK or insn.mnemonic == "xchg"

    def return_address(self, m) -> int:
        return m.read_u64(m.sp)

    def return_from_call(self, m, value: int | None) -> None:
        sp = m.sp
        ret = m.read_u64(sp)
        if value is not None:
            m.set_reg("rax", value)
        m.sp = sp + 8
        m.pc = ret     # last: writing the PC makes Unicorn leave the current block

    def setup_call(self, m, args: list[int], return_to: int) -> None:
        for reg, v in zip(self.args, args):
            m.set_reg(reg, v)
        sp = ((m.sp - 4096) & ~15) - 8           # below the red zone; rsp+8 aligned at entry
        m.write(sp, return_to.to_bytes(8, "little"))
        m.sp = sp
