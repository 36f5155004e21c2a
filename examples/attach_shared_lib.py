"""Fuzzing a bare function in a shared library with a Unicorn harness of your own, emsan as its
sanitizer. The harness maps the library with pyelftools, points the library's malloc/free imports
at two stub addresses, tells emsan those are the allocator's entry points, places each input in
emsan's heap (exact redzones) and calls parse_message(buf, len).

    gcc -shared -fPIC -O1 -g -fno-omit-frame-pointer -o libattach.so examples/attach_lib.c
    python3 examples/attach_shared_lib.py libattach.so INPUT            # run one input
    afl-fuzz -i SEEDS -o OUT -- python3 examples/attach_shared_lib.py libattach.so   # fuzz it
    afl-fuzz -i SEEDS -o OUT -- python3 examples/attach_shared_lib.py --persistent 1000 libattach.so

A report is printed (kernel KASAN layout) and, under afl-fuzz, is a crash. With --persistent N
each forked child runs N inputs, the engine and emsan going back to the fork point's state after
each. Heap accesses are checked by translated code (--checks inline, engine patch 011); --checks
mmio checks them through an MMIO view of emsan's heap, --checks hook with a memory hook. Works the same for an arm64 library (aarch64-linux-gnu-gcc).
"""
from __future__ import annotations

import argparse
import sys

import emsan  # first: the unicorn binding must load emsan's engine, on which the Uc below runs
import unicorn
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from unicorn import arm64_const, x86_const


LIB_BASE = 0x1000_0000
STUBS = 0x2000_0000                       # malloc and free "live" here: emsan stands in for them
STACK, STACK_SIZE = 0x3000_0000, 0x10_0000
RETURN = STUBS + 0x800                    # parse_message returns here; the run stops there


def load_library(uc, path: str) -> tuple[str, dict[str, int], list[tuple[int, int]]]:
    """Map PT_LOAD segments at LIB_BASE, apply relocations; (arch, exported functions, code ranges)."""
    elf = ELFFile(open(path, "rb"))
    arch = {"EM_X86_64": "x86_64", "EM_AARCH64": "arm64"}[elf["e_machine"]]
    code = []
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        lo = (LIB_BASE + seg["p_vaddr"]) & ~0xFFF
        hi = (LIB_BASE + seg["p_vaddr"] + seg["p_memsz"] + 0xFFF) & ~0xFFF
        uc.mem_map(lo, hi - lo)
        uc.mem_write(LIB_BASE + seg["p_vaddr"], seg.data())
        if seg["p_flags"] & 1:
            code.append((lo, hi))
    dynsym = elf.get_section_by_name(".dynsym")
    stubs = {"malloc": STUBS, "free": STUBS + 0x10}
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection):
            continue
        for rel in sec.iter_relocations():
            sym = dynsym.get_symbol(rel["r_info_sym"]) if rel["r_info_sym"] else None
            if sym is not None and sym.name in stubs:                  # JUMP_SLOT / GLOB_DAT
                value = stubs[sym.name]
            elif sym is None and rel["r_addend"]:                      # RELATIVE
                value = LIB_BASE + rel["r_addend"]
            else:
                continue
            uc.mem_write(LIB_BASE + rel["r_offset"], value.to_bytes(8, "little"))
    exports = {s.name: LIB_BASE + s["st_value"] for s in dynsym.iter_symbols() if s["st_value"]}
    return arch, exports, code


def make_engine(path: str):
    elf = ELFFile(open(path, "rb"))
    if elf["e_machine"] == "EM_X86_64":
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    else:
        uc = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        uc.reg_write(arm64_const.UC_ARM64_REG_CPACR_EL1, 3 << 20)     # FP/SIMD on
    uc.mem_map(STUBS, 0x1000, unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC)
    uc.mem_map(STACK - STACK_SIZE, STACK_SIZE)
    return uc


class Harness:
    def __init__(self, path: str, checks: str = "inline"):
        self.uc = make_engine(path)
        arch, self.exports, self.code = load_library(self.uc, path)
        self.arch = arch
        self.san = emsan.attach(self.uc, arch, allocator={"malloc": STUBS, "free": STUBS + 0x10},
                                modules=[(path, LIB_BASE)], stack=(STACK - STACK_SIZE, STACK), checks=checks)

    def call(self, fn: str, *args: int) -> None:
        uc, sp = self.uc, STACK - 0x1000
        if self.arch == "x86_64":
            regs = (x86_const.UC_X86_REG_RDI, x86_const.UC_X86_REG_RSI)
            sp -= 8
            uc.mem_write(sp, RETURN.to_bytes(8, "little"))
            uc.reg_write(x86_const.UC_X86_REG_RSP, sp)
            uc.reg_write(x86_const.UC_X86_REG_RBP, 0)
        else:
            regs = (arm64_const.UC_ARM64_REG_X0, arm64_const.UC_ARM64_REG_X1)
            uc.reg_write(arm64_const.UC_ARM64_REG_SP, sp)
            uc.reg_write(arm64_const.UC_ARM64_REG_LR, RETURN)
            uc.reg_write(arm64_const.UC_ARM64_REG_X29, 0)
        for r, v in zip(regs, args):
            uc.reg_write(r, v)
        self.san.run(self.exports[fn], RETURN)          # raises emsan.ReportError on a bug

    def parse(self, data: bytes) -> None:
        buf = self.san.place(data)                      # exactly len(data) bytes, redzones around
        self.call("parse_message", buf, len(data))
        self.san.free(buf)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="parse_message() of a shared library under emsan")
    ap.add_argument("--persistent", type=int, default=1, metavar="N", help="inputs per forked child")
    ap.add_argument("--checks", choices=("inline", "mmio", "hook"), default="inline")
    ap.add_argument("library")
    ap.add_argument("input", nargs="?")
    a = ap.parse_args(argv)
    h = Harness(a.library, a.checks)
    # Under afl-fuzz: a fork server from here, each child running its inputs (a report or an
    # emulation error is a crash). By hand: the one input named on the command line.
    crashed = h.san.fuzz(h.parse, cover=h.code, input_file=a.input, persistent=a.persistent)
    return 99 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
