"""The CPU a new Linux process starts on: the registers execve leaves, and the hardware
capabilities the kernel advertises in the auxiliary vector (AT_HWCAP, AT_HWCAP2).

What is advertised comes from the engine's own CPU model (x86 CPUID, arm64 ID registers),
mapped to hwcaps as the kernel maps them, minus what emsan's Linux personality does not support:
a program is never told about an instruction the engine does not run, and glibc picks its string
routines from exactly what the engine implements."""
from __future__ import annotations

# x86-64 (arch/x86/kernel/process_64.c start_thread, fpu__init_cpu / fpstate_init): the x87
# control word 0x37F (all exceptions masked, 64-bit precision, round to nearest), an empty x87
# stack (full tag word 0xFFFF), MXCSR 0x1F80, RFLAGS with only IF and the reserved bit 1.
X86_START = {"fpcw": 0x37F, "fpsw": 0, "fptag": 0xFFFF, "mxcsr": 0x1F80, "rflags": 0x202}
X86_HWCAP2_FSGSBASE = 1 << 1

# arm64 (arch/arm64/include/asm/processor.h start_thread): PSTATE = EL0t with NZCV and DAIF
# clear, FPCR and FPSR zero. SCTLR_EL1 bits Linux sets for EL0 (arch/arm64/include/asm/
# sysreg.h INIT_SCTLR_EL1_MMU_ON): DC ZVA, CTR_EL0 reads and cache maintenance from EL0.
ARM64_PSTATE_EL0T = 0
ARM64_SCTLR_EL1 = (3, 0, 1, 0, 0)
SCTLR_DZE, SCTLR_UCT, SCTLR_UCI = 1 << 14, 1 << 15, 1 << 26

# arm64 ID registers by encoding (op0, op1, CRn, CRm, op2).
ID_AA64PFR0, ID_AA64PFR1 = (3, 0, 0, 4, 0), (3, 0, 0, 4, 1)
ID_AA64ISAR0, ID_AA64ISAR1 = (3, 0, 0, 6, 0), (3, 0, 0, 6, 1)
ID_AA64MMFR2 = (3, 0, 0, 7, 2)

# The kernel's arm64_elf_hwcaps (arch/arm64/kernel/cpufeature.c): ID register field (shift,
# signed), minimum value -> (AT_HWCAP word 1 or 2, bit), for every hwcap emsan can honour.
# Left out, as by a kernel built without them: SVE/SVE2 (emsan's signal frames carry no
# sve_context), PACA/PACG and BTI (pointer authentication keys and guarded pages are not
# enabled), MTE (not in the engine), CPUID (no emulation of EL0 ID-register reads) and EVTSTRM
# (no timer event stream).
ARM64_HWCAPS: tuple[tuple[tuple[int, ...], int, bool, int, int, int], ...] = (
    (ID_AA64PFR0, 16, True, 0, 1, 0),      # FP
    (ID_AA64PFR0, 16, True, 1, 1, 9),      # FPHP
    (ID_AA64PFR0, 20, True, 0, 1, 1),      # ASIMD
    (ID_AA64PFR0, 20, True, 1, 1, 10),     # ASIMDHP
    (ID_AA64PFR0, 48, False, 1, 1, 24),    # DIT
    (ID_AA64ISAR0, 4, False, 1, 1, 3),     # AES
    (ID_AA64ISAR0, 4, False, 2, 1, 4),     # PMULL
    (ID_AA64ISAR0, 8, False, 1, 1, 5),     # SHA1
    (ID_AA64ISAR0, 12, False, 1, 1, 6),    # SHA2
    (ID_AA64ISAR0, 12, False, 2, 1, 21),   # SHA512
    (ID_AA64ISAR0, 16, False, 1, 1, 7),    # CRC32
    (ID_AA64ISAR0, 20, False, 2, 1, 8),    # ATOMICS
    (ID_AA64ISAR0, 28, False, 1, 1, 12),   # ASIMDRDM
    (ID_AA64ISAR0, 32, False, 1, 1, 17),   # SHA3
    (ID_AA64ISAR0, 36, False, 1, 1, 18),   # SM3
    (ID_AA64ISAR0, 40, False, 1, 1, 19),   # SM4
    (ID_AA64ISAR0, 44, False, 1, 1, 20),   # ASIMDDP
    (ID_AA64ISAR0, 48, False, 1, 1, 23),   # ASIMDFHM
    (ID_AA64ISAR0, 52, False, 1, 1, 27),   # FLAGM
    (ID_AA64ISAR0, 52, False, 2, 2, 7),    # FLAGM2
    (ID_AA64ISAR0, 60, False, 1, 2, 16),   # RNG
    (ID_AA64ISAR1, 0, False, 1, 1, 16),    # DCPOP
    (ID_AA64ISAR1, 0, False, 2, 2, 0),     # DCPODP
    (ID_AA64ISAR1, 12, False, 1, 1, 13),   # JSCVT
    (ID_AA64ISAR1, 16, False, 1, 1, 14),   # FCMA
    (ID_AA64ISAR1, 20, False, 1, 1, 15),   # LRCPC
    (ID_AA64ISAR1, 20, False, 2, 1, 26),   # ILRCPC
    (ID_AA64ISAR1, 32, False, 1, 2, 8),    # FRINT
    (ID_AA64ISAR1, 36, False, 1, 1, 29),   # SB
    (ID_AA64ISAR1, 44, False, 1, 2, 14),   # BF16
    (ID_AA64ISAR1, 48, False, 1, 2, 15),   # DGH
    (ID_AA64ISAR1, 52, False, 1, 2, 13),   # I8MM
    (ID_AA64MMFR2, 32, False, 1, 1, 25),   # USCAT
    (ID_AA64PFR1, 4, False, 2, 1, 28),     # SSBS
)


def _field(value: int, shift: int, signed: bool) -> int:
    f = (value >> shift) & 0xF
    return f - 16 if signed and f & 8 else f


def arm64_hwcaps(id_regs: dict[tuple[int, ...], int]) -> tuple[int, int]:
    """(AT_HWCAP, AT_HWCAP2) for arm64 ID register values, as the kernel derives them."""
    words = {1: 0, 2: 0}
    for reg, shift, signed, minimum, word, bit in ARM64_HWCAPS:
        if _field(id_regs[reg], shift, signed) >= minimum:
            words[word] |= 1 << bit
    return words[1], words[2]


def hwcaps(machine, arch_name: str) -> tuple[int, int]:
    """(AT_HWCAP, AT_HWCAP2) for a process on this engine."""
    if arch_name == "x86_64":
        # The kernel puts CPUID.1:EDX in AT_HWCAP, and HWCAP2_FSGSBASE once it has enabled
        # CR4.FSGSBASE, which the engine does whenever CPUID.7.0:EBX says FSGSBASE.
        edx = machine.cpuid(1)[3]
        fsgsbase = machine.cpuid(0)[0] >= 7 and machine.cpuid(7)[1] & 1
        return edx, X86_HWCAP2_FSGSBASE if fsgsbase else 0
    regs = (ID_AA64PFR0, ID_AA64PFR1, ID_AA64ISAR0, ID_AA64ISAR1, ID_AA64MMFR2)
    return arm64_hwcaps({r: machine.sysreg(*r) for r in regs})


def set_start_registers(machine, arch_name: str) -> None:
    """The registers execve leaves (the stack pointer and PC are the loader's)."""
    if arch_name == "x86_64":
        for reg, value in X86_START.items():
            machine.set_reg(reg, value)
        return
    machine.set_reg("pstate", ARM64_PSTATE_EL0T)
    machine.set_reg("fpcr", 0)
    machine.set_reg("fpsr", 0)
    machine.set_sysreg(*ARM64_SCTLR_EL1, machine.sysreg(*ARM64_SCTLR_EL1) | SCTLR_DZE | SCTLR_UCT | SCTLR_UCI)


def missing_isa_words(machine, arch_name: str, caps: tuple[int, int]) -> frozenset[str]:
    """Words in the names of glibc's string-routine variants (__strlen_avx2, __memcpy_sve) for
    instruction sets this CPU lacks: such a variant never runs, and emsan need not stand in
    for it (each intercepted address costs the engine a hook it checks while translating)."""
    if arch_name == "arm64":
        sve, mte = caps[0] >> 22 & 1, caps[1] >> 18 & 1
        return frozenset(({"sve", "a64fx"} if not sve else set()) | ({"mte"} if not mte else set()))
    ecx, ebx7 = machine.cpuid(1)[2], machine.cpuid(7)[1] if machine.cpuid(0)[0] >= 7 else 0
    words = set()
    if not ecx >> 28 & 1:
        words |= {"avx"}
    if not ebx7 >> 5 & 1:
        words |= {"avx2"}
    if not ebx7 >> 16 & 1:
        words |= {"evex", "evex512", "avx512"}
    if not ebx7 >> 11 & 1:
        words |= {"rtm"}
    return frozenset(words)
