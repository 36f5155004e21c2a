"""What the upper layers need to know about an instruction set, independent of the OS."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar


@dataclass(frozen=True)
class Arch:
    name: str                 # emsan's name: x86_64 / arm64
    elf_machine: int          # e_machine
    platform: str             # AT_PLATFORM / uname machine
    pc: str
    sp: str
    fp: str                   # frame pointer register
    ret: str                  # integer return value register
    args: tuple[str, ...]     # integer argument registers, in order
    syscall_nr: str
    syscall_args: tuple[str, ...]
    syscall_ret: str
    capstone_arch: str        # capstone constant names, so capstone (55 ms) loads only when used
    capstone_mode: str

    @cached_property
    def disassembler(self):
        import capstone
        md = capstone.Cs(getattr(capstone, self.capstone_arch), getattr(capstone, self.capstone_mode))
        md.detail = True
        return md

    # Locating the instruction behind an access seen without its PC (--checks mmio).
    gprs: ClassVar[tuple[str, ...]] = ()   # the registers an effective address can use

    def memory_operands(self, insn, regs: dict[str, int]) -> list[tuple[int, int, int]]:
        """(effective address, size, capstone access bits) of each memory operand of a capstone
        instruction, given the registers before it executes."""
        raise NotImplementedError

    def locate_access(self, m, block: int, regs: dict[str, int], addr: int,
                      is_write: bool, first_only: int = 0, size: int = 1) -> tuple[int, int, int] | None:
        """The instruction of the block at `block` whose memory operand overlaps [addr, addr+size)
        (a load or a store as asked, else any), given the registers when it accessed memory (those
        before it ran, also for the instructions before it, whose own effects are not undone):
        (pc, address, size)."""
        code = m.try_read(block, 512) or m.try_read(block, 64)
        if not code:
            return None
        want = 2 if is_write else 1                   # CS_AC_WRITE / CS_AC_READ
        fallback = None
        for insn in self.disassembler.disasm(code, block):
            try:
                for ea, n, access in self.memory_operands(insn, regs):
                    # QEMU performs an unaligned load from MMIO as the aligned loads around it
                    # (of up to 8 bytes each): the piece seen may lie beside the operand.
                    w = min(n, 8) if n & (n - 1) == 0 else 1
                    lo, hi = ea & ~(w - 1), (ea + n + w - 1) & ~(w - 1)
                    if lo < addr + size and addr < hi:
                        if access & want or not access:
                            return insn.address, ea, n
                        fallback = fallback or (insn.address, ea, n)
            except KeyError:
                pass
            if first_only:              # look at that many instructions only
                first_only -= 1
                if not first_only:
                    break
            if insn.group(1) or insn.group(2) or insn.group(3) or insn.group(7):   # jump, call, ret, branch_relative
                break
        return fallback

    # Calling convention, used by interceptors that stand in for a whole function.
    def return_address(self, m) -> int:
        raise NotImplementedError

    def return_from_call(self, m, value: int | None) -> None:
        """Make the intercepted function return `value` to its caller, as its `ret` would."""
        raise NotImplementedError

    def setup_call(self, m, args: list[int], return_to: int) -> None:
        """Registers and stack for calling a guest function that returns to `return_to`."""
        raise NotImplementedError

    def frame_walk(self, m, max_frames: int) -> list[int]:
        """Return addresses from the frame-pointer chain, innermost first (caller of the current function first)."""
        out: list[int] = []
        fp = m.reg(self.fp)
        seen = set()
        while fp and len(out) < max_frames and fp not in seen and not fp & 7:
            seen.add(fp)
            rec = m.try_read(fp, 16)
            if rec is None:
                break
            nxt = int.from_bytes(rec[:8], "little")
            ret = int.from_bytes(rec[8:], "little")
            if ret == 0:
                break
            out.append(ret)
            if nxt <= fp:        # frames live at increasing addresses: anything else is not a chain
                break
            fp = nxt
        return out
