"""The ucontext a signal handler receives, in the kernel's layout for each architecture.

emsan fills in the interrupted registers, signal mask and (for faults) the fault details, and
reads registers and mask back at rt_sigreturn, so a handler that edits its ucontext (to skip
a faulting instruction, or to change the mask it returns to) works as on Linux. Floating-point
and vector state is not in the frame: emsan keeps it outside the guest and restores it itself.
"""
from __future__ import annotations

import struct

X86_GREGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
             "rdi", "rsi", "rbp", "rbx", "rdx", "rax", "rcx", "rsp", "rip")
X86_MCONTEXT, X86_SIGMASK = 40, 296           # offsets in struct ucontext
X86_FIX_EFLAGS = 0x40CD5                      # AC OF DF SF ZF AF PF CF: what sigreturn may change
ARM64_SIGMASK, ARM64_MCONTEXT = 40, 176
ARM64_GREGS = tuple(f"x{i}" for i in range(29)) + ("x29", "x30")
NZCV = 0xF000_0000
# x86: the ucontext and glibc's 128-byte sigset; arm64: up to the end of sigcontext.__reserved.
UCONTEXT_SIZE = {"x86_64": 1024, "arm64": ARM64_MCONTEXT + 288 + 4096}
X86_TRAPNO = {"segv": 14, "ill": 6, "fpe": 0, "trap": 3, "bus": 17}
SIGINFO_SIZE = 128
# The kernel's MINSIGSTKSZ: the smallest alternate stack sigaltstack accepts.
MINSIGSTKSZ = {"x86_64": 2048, "arm64": 5120}


def frame_size(arch: str) -> int:
    """The most stack a signal frame takes below where it starts (siginfo, ucontext, 16-byte
    alignment, and on x86-64 the restorer's return address), rounded to 16 bytes."""
    return (SIGINFO_SIZE + UCONTEXT_SIZE[arch] + 15 + (8 if arch == "x86_64" else 0) + 15) & ~15


def min_signal_stack(arch: str) -> int:
    """AT_MINSIGSTKSZ: an alternate stack this large takes emsan's signal frame and is one that
    sigaltstack accepts (on x86-64 glibc would otherwise size it from CPUID's XSAVE area, which
    emsan's frames do not carry; on arm64 this is the kernel's figure, above emsan's frame)."""
    return max(frame_size(arch), MINSIGSTKSZ[arch])


def build_ucontext(m, arch: str, resume_pc: int, mask: int, altstack: tuple[int, int, int, int],
                   fault) -> bytes:
    """The frame's ucontext bytes for the machine's current registers, resuming at resume_pc."""
    ss_sp, ss_flags, _pad, ss_size = altstack
    head = struct.pack("<QQQi4xQ", 0, 0, ss_sp, ss_flags, ss_size)
    if arch == "x86_64":
        regs = [m.reg(r) for r in X86_GREGS[:-1]] + [resume_pc]
        err = trapno = cr2 = 0
        if fault is not None:
            trapno = X86_TRAPNO.get(fault.kind, 0)
            if fault.kind == "segv":
                err = 4 | (2 if fault.access == "write" else 0) | (1 if fault.mapped else 0) | \
                    (16 if fault.access == "fetch" else 0)
                cr2 = fault.addr
        mcontext = struct.pack("<17QQHHHHQQQQQ8Q", *regs, m.reg("eflags"), 0x33, 0, 0, 0x2B,
                               err, trapno, mask, cr2, 0, *[0] * 8)
        out = head + mcontext + struct.pack("<Q", mask)
    else:
        fault_address = fault.addr if fault is not None and fault.kind == "segv" else 0
        regs = [m.reg(r) for r in ARM64_GREGS]
        out = head + struct.pack("<Q", mask)
        out = out.ljust(ARM64_MCONTEXT, b"\0")
        out += struct.pack("<Q31QQQQ", fault_address, *regs, m.sp, resume_pc, m.reg("nzcv") & NZCV)
    return out.ljust(UCONTEXT_SIZE[arch], b"\0")


def read_ucontext(m, arch: str, addr: int) -> tuple[dict[str, int], int]:
    """Registers (with "pc", "sp" and the flags) and the signal mask a handler's frame now holds."""
    if arch == "x86_64":
        raw = m.read(addr + X86_MCONTEXT, 18 * 8)
        values = struct.unpack("<18Q", raw)
        regs = dict(zip(X86_GREGS, values))
        regs["pc"] = regs.pop("rip")
        regs["eflags"] = values[17]
        mask = struct.unpack("<Q", m.read(addr + X86_SIGMASK, 8))[0]
    else:
        mask = struct.unpack("<Q", m.read(addr + ARM64_SIGMASK, 8))[0]
        values = struct.unpack("<Q31QQQQ", m.read(addr + ARM64_MCONTEXT, 8 * 35))
        regs = dict(zip(ARM64_GREGS, values[1:32]))
        regs["sp"], regs["pc"], regs["nzcv"] = values[32], values[33], values[34]
    return regs, mask


def apply_registers(m, arch: str, regs: dict[str, int]) -> None:
    """Load registers read from a frame; the PC last (writing it makes the engine leave its block)."""
    pc = regs.pop("pc")
    if arch == "x86_64":
        flags = regs.pop("eflags")
        m.set_reg("eflags", (m.reg("eflags") & ~X86_FIX_EFLAGS) | (flags & X86_FIX_EFLAGS))
    else:
        m.set_reg("nzcv", regs.pop("nzcv") & NZCV)
    for name, value in regs.items():
        m.set_reg(name, value)
    m.pc = pc
