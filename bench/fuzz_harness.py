"""A plain Unicorn fuzzing harness, as users write them for AFL++'s Unicorn mode: the static
program's segments mapped with pyelftools, `parse(buf, len)` called directly on each input, a bump
allocator at malloc/free (Python hooks on their entry), no sanitizer, no OS. It is bench/fuzz.py's
"plain unicornafl harness" baseline; the AFL++ side is emsan's fork server (emsan.machine.afl),
because the PyPI unicornafl (2.1.0) faults on its first block.

    afl-fuzz -i SEEDS -o OUT -- python3 bench/fuzz_harness.py PROGRAM [INPUT] [--persistent N]

With --persistent N each forked child runs N inputs (parse() keeps no state between calls, and
the bump allocator starts over for each input).
"""
from __future__ import annotations

import os
import sys

import emsan  # noqa: F401  first: the unicorn binding loads emsan's engine (the fork server's)
import unicorn
from elftools.elf.elffile import ELFFile
from unicorn import arm64_const as a64
from unicorn import x86_const as x86

STACK, STACK_SIZE = 0x7FFF_0000_0000, 1 << 20
HEAP, HEAP_SIZE = 0x6000_0000_0000, 64 << 20
INPUT, INPUT_MAX = 0x5000_0000_0000, 1 << 20
STOP = 0x1000                      # never mapped: parse() returns here


def load(path: str):
    f = open(path, "rb")
    elf = ELFFile(f)
    arch = {"EM_X86_64": "x86_64", "EM_AARCH64": "arm64"}[elf["e_machine"]]
    uc = (unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64) if arch == "x86_64"
          else unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM))
    if arch == "arm64":
        uc.ctl_set_cpu_model(a64.UC_CPU_ARM64_MAX)
        uc.reg_write(a64.UC_ARM64_REG_CPACR_EL1, 3 << 20)       # FP/SIMD on
    code = []
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        lo, hi = seg["p_vaddr"] & ~0xFFF, (seg["p_vaddr"] + seg["p_memsz"] + 0xFFF) & ~0xFFF
        uc.mem_map(lo, hi - lo, unicorn.UC_PROT_ALL)
        uc.mem_write(seg["p_vaddr"], seg.data())
        if seg["p_flags"] & 1:
            code.append((lo, hi))
    for base, size in ((STACK - STACK_SIZE, STACK_SIZE), (HEAP, HEAP_SIZE), (INPUT, INPUT_MAX)):
        uc.mem_map(base, size, unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE)
    syms = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols() if s["st_value"]}
    return uc, arch, syms, code


class Harness:
    def __init__(self, path: str):
        self.uc, self.arch, syms, self.code = load(path)
        self.parse = syms["parse"]
        self.top = HEAP
        x = self.arch == "x86_64"
        self.ret_reg = x86.UC_X86_REG_RAX if x else a64.UC_ARM64_REG_X0
        self.arg_regs = (x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI) if x else (a64.UC_ARM64_REG_X0, a64.UC_ARM64_REG_X1)
        self.pc_reg = x86.UC_X86_REG_RIP if x else a64.UC_ARM64_REG_PC
        self.sp_reg = x86.UC_X86_REG_RSP if x else a64.UC_ARM64_REG_SP
        self.uc.hook_add(unicorn.UC_HOOK_CODE, self.on_malloc, begin=syms["malloc"], end=syms["malloc"])
        self.uc.hook_add(unicorn.UC_HOOK_CODE, self.on_free, begin=syms["free"], end=syms["free"])

    def ret(self, value: int | None) -> None:
        uc = self.uc
        if value is not None:
            uc.reg_write(self.ret_reg, value)
        if self.arch == "x86_64":
            sp = uc.reg_read(self.sp_reg)
            uc.reg_write(self.pc_reg, int.from_bytes(uc.mem_read(sp, 8), "little"))
            uc.reg_write(self.sp_reg, sp + 8)
        else:
            uc.reg_write(self.pc_reg, uc.reg_read(a64.UC_ARM64_REG_LR))

    def on_malloc(self, uc, address, size, ud) -> None:
        n = uc.reg_read(self.arg_regs[0])
        p, self.top = self.top, self.top + ((n + 15) & ~15)
        self.ret(p)

    def on_free(self, uc, address, size, ud) -> None:
        self.ret(None)

    def run(self, data: bytes) -> bool:
        """parse(data); True when the emulation faulted (a crash for AFL++)."""
        uc = self.uc
        data = data[:INPUT_MAX]
        uc.mem_write(INPUT, data)
        self.top = HEAP
        sp = STACK - 0x100
        if self.arch == "x86_64":
            sp -= 8
            uc.mem_write(sp, STOP.to_bytes(8, "little"))
        else:
            uc.reg_write(a64.UC_ARM64_REG_LR, STOP)
        uc.reg_write(self.sp_reg, sp)
        uc.reg_write(self.arg_regs[0], INPUT)
        uc.reg_write(self.arg_regs[1], len(data))
        try:
            uc.emu_start(self.parse, STOP)
        except unicorn.UcError as e:
            if os.environ.get("HARNESS_DEBUG"):
                print(f"harness: {e} at {uc.reg_read(self.pc_reg):#x} data={data!r} parse={self.parse:#x}", file=sys.stderr)
            return True
        return False


def main(argv: list[str]) -> int:
    from emsan.machine.afl import CHILD, FINISHED, ForkServer

    iterations = 1
    if "--persistent" in argv:
        i = argv.index("--persistent")
        iterations = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    h = Harness(argv[0])
    server = ForkServer(h.uc._uch.value, h.arch)
    for lo, hi in h.code:
        server.cover(lo, hi - 1, compcov=False)
    role = server.serve()
    if role == FINISHED:
        os._exit(0)
    crashed = False
    for n in range(iterations if role == CHILD else 1):
        if n and not server.next():
            break
        crashed = h.run(server.input(argv[1] if len(argv) > 1 else None))
        if crashed:
            break
    if role == CHILD:
        if crashed:
            os.abort()
        os._exit(0)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
