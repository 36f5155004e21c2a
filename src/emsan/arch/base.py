"""What the upper layers need to know about an instruction set, independent of the OS."""
from __future__ import annotations

from functools import cached_property
from typing import ClassVar

from emsan.lazyclass import dataclass


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
    # Unicorn syncs no PC before this architecture's atomic read-modify-writes (x86-64).
    stale_atomic_pc: ClassVar[bool] = False

    def memory_operands(self, insn, regs: dict[str, int]) -> list[tuple[int, int, int]]:
        """(effective address, size, capstone access bits) of each memory operand of a capstone
        instruction, given the registers before it executes."""
        raise NotImplementedError

    def block_instructions(self, m, block: int, regs: dict[str, int], limit: int = 0):
        """(capstone instruction, its memory operands) from `block` to the end of its basic block
        (`limit` instructions at most when given), memory operands as memory_operands() gives them
        (none where a register is unknown)."""
        code = m.try_read(block, 512) or m.try_read(block, 64)
        if not code:
            return
        for insn in self.disassembler.disasm(code, block):
            try:
                ops = self.memory_operands(insn, regs)
            except KeyError:
                ops = []
            yield insn, ops
            if limit:                   # look at that many instructions only
                limit -= 1
                if not limit:
                    return
            # jump, call, ret, interrupt (syscall), branch_relative: the block ends
            if insn.group(1) or insn.group(2) or insn.group(3) or insn.group(4) or insn.group(7):
                return

    def locate_access(self, m, block: int, regs: dict[str, int], addr: int,
                      is_write: bool, first_only: int = 0, size: int = 1) -> tuple[int, int, int] | None:
        """The instruction of the block at `block` whose memory operand overlaps [addr, addr+size)
        (a load or a store as asked, else any), given the registers when it accessed memory (those
        before it ran, also for the instructions before it, whose own effects are not undone):
        (pc, address, size)."""
        want = 2 if is_write else 1                   # CS_AC_WRITE / CS_AC_READ
        fallback = None
        for insn, ops in self.block_instructions(m, block, regs, first_only):
            for ea, n, access in ops:
                # QEMU performs an unaligned load from MMIO as the aligned loads around it
                # (of up to 8 bytes each): the piece seen may lie beside the operand.
                w = min(n, 8) if n & (n - 1) == 0 else 1
                lo, hi = ea & ~(w - 1), (ea + n + w - 1) & ~(w - 1)
                if lo < addr + size and addr < hi:
                    if access & want or not access:
                        return insn.address, ea, n
                    fallback = fallback or (insn.address, ea, n)
        return fallback

    def locate(self, m, candidates: list[int], synced_pc: int, regs: dict[str, int], addr: int,
               is_write: bool, size: int = 1) -> tuple[int, int, int] | None:
        """The instruction behind an access to [addr, addr+size) seen without its PC (an MMIO
        callback): one of the first two instructions at a candidate PC QEMU gave (the access or
        the one before it), else within eight instructions of the lowest candidate (the access is
        at or just after them), else in the block at the PC Unicorn last synced. (pc, address,
        size) or None."""
        for c in candidates:
            found = self.locate_access(m, c, regs, addr, is_write, 2, size)
            if found is not None:
                return found
        if candidates:
            found = self.locate_access(m, min(candidates), regs, addr, is_write, 8, size)
            if found is not None:
                return found
        return self.locate_access(m, synced_pc, regs, addr, is_write, 0, size)

    def hooked_access_pcs(self, m, pc: int, addr: int, is_write: bool) -> list[int]:
        """The instructions that may have made an access a memory hook saw at `pc`: [pc] if the
        instruction there makes it. Unicorn syncs the PC before the loads and stores it
        translates one by one, not before x86's atomic read-modify-writes, whose hook calls
        carry the last PC it synced: the access is then made by one of the atomic instructions
        at or after it in the block that touch `addr`, in order; [] if none does. A synced PC
        that is itself such an atomic (a TLB fill syncs it) does not tell which of them it was."""
        regs = {r: m.reg(r) for r in self.gprs}
        want = 2 if is_write else 1
        found = []
        for insn, ops in self.block_instructions(m, pc, regs):
            if any(ea <= addr < ea + size and (access & want or not access) for ea, size, access in ops):
                atomic = self.atomic_rmw(m, insn.address)
                if insn.address == pc and not (atomic and self.stale_atomic_pc):
                    return [pc]
                if atomic:
                    found.append(insn.address)
        return found

    # Access kinds as the kernel prints them.
    def atomic_rmw(self, m, pc: int) -> bool:
        """Is the instruction at pc an atomic read-modify-write of memory?"""
        return False

    def access_kind(self, m, pc: int, is_write: bool) -> str:
        """"read" or "write" as the kernel prints the access of the instruction at pc: an atomic
        read-modify-write is a write whichever half of it the emulator showed first (the
        kernel's instrument_atomic_read_write() calls kasan_check_write(), and compilers
        instrument atomicrmw and cmpxchg as stores)."""
        return "write" if is_write or self.atomic_rmw(m, pc) else "read"

    # Calling convention, used by interceptors that stand in for a whole function.
    def fault_access(self, m, pc: int, page: int, is_write: bool, page_size: int = 0x1000) -> tuple[int, int] | None:
        """The first address and the size of the access the instruction at pc made to `page`
        (a fault seen through the TLB knows only the page): (address, size), or None."""
        code = m.try_read(pc, 16)
        insn = next(self.disassembler.disasm(code, pc, 1), None) if code else None
        if insn is None:
            return None
        regs = {r: m.reg(r) for r in self.gprs}
        want = 2 if is_write else 1                   # CS_AC_WRITE / CS_AC_READ
        other = None
        try:
            operands = self.memory_operands(insn, regs)
        except KeyError:
            return None
        for ea, size, access in operands:
            ea &= m.addr_mask
            if ea < page + page_size and page < ea + max(size, 1):
                found = (max(ea, page), size)
                if access & want or not access:
                    return found
                other = other or found
        return other

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
