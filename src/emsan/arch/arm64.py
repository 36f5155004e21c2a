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
