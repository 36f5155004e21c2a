#!/usr/bin/env python3
"""Why many tags on one page slow Unicorn down (arm64, bare Unicorn, no emsan).

    python3 bench/tbi_tlb.py [--iters N]            # on the unicorn wheel's library
    LIBUNICORN_PATH=DIR python3 bench/tbi_tlb.py    # on another, e.g. emsan's engine (the directory
                                                    # `emsan --version` shows)

A 6-instruction loop loads a pointer from a table and reads through it; the 64 pointers all
point into one page and carry 1..64 distinct top-byte tags. For three ways of turning on
TCR_EL1.TBI0 (a cpr_write from the host; the same plus a PSTATE write, which makes QEMU rebuild
its cached hflags; the guest's own `msr tcr_el1`) it prints ns per iteration, and, with
UC_TLB_VIRTUAL and a counting TLB-fill callback, which virtual addresses QEMU translates.

What it shows on unicorn 2.1.3 (QEMU 5.0): the fill callback receives the *tagged* address in every
variant, so the softmmu TLB is keyed by the tagged address and 1 main entry plus the 8-entry
victim TLB hold at most 9 aliases of a page; beyond that every access misses. The cached hflags
are not the cause: QEMU 5.0's system-mode clean_data_tbi() deliberately leaves the tag in the
address (to report a tagged FAR) and strips it only inside the page-table walk.
"""
from __future__ import annotations

import argparse
import struct
import time

from unicorn import UC_ARCH_ARM64, UC_HOOK_TLB_FILL, UC_MODE_ARM, UC_TLB_VIRTUAL, Uc
from unicorn.arm64_const import (UC_ARM64_REG_PSTATE, UC_ARM64_REG_X0, UC_ARM64_REG_X3, UC_ARM64_REG_X5,
                                 UC_ARM64_REG_X6, UC_ARM64_REG_X9, UC_CPU_ARM64_MAX)

# loop: ldr x2,[x0,x3,lsl #3]; ldr x4,[x2]; add x3,x3,#1; and x3,x3,x6; subs x5,x5,#1; b.ne loop
#       nop; msr tcr_el1,x9; isb
CODE_WORDS = (0xF8637802, 0xF9400044, 0x91000463, 0x8A060063, 0xF10004A5, 0x54FFFF61,
              0xD503201F, 0xD5182049, 0xD5033FDF)
CODE, TABLE, DATA = 0x10000, 0x200000, 0x300000
LOOP_END, MSR = CODE + 6 * 4, CODE + 7 * 4
VARIANTS = ("host cpr_write", "host + PSTATE write", "guest msr")


def engine(variant: str) -> Uc:
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(UC_CPU_ARM64_MAX)
    uc.cpr_write(3, 6, 1, 1, 0, 0x401)           # SCR_EL3 = NS | RW
    uc.cpr_write(3, 4, 1, 1, 0, 1 << 31)         # HCR_EL2.RW
    uc.mem_map(CODE, 0x1000, 7)
    uc.mem_map(TABLE, 0x1000, 3)
    uc.mem_map(DATA, 0x1000, 3)
    uc.mem_write(CODE, struct.pack(f"<{len(CODE_WORDS)}I", *CODE_WORDS))
    if variant == "guest msr":
        uc.reg_write(UC_ARM64_REG_X9, 1 << 37)
        uc.emu_start(MSR, MSR + 8)
    else:
        uc.cpr_write(3, 0, 2, 0, 2, 1 << 37)     # TCR_EL1.TBI0
        if variant == "host + PSTATE write":
            uc.reg_write(UC_ARM64_REG_PSTATE, uc.reg_read(UC_ARM64_REG_PSTATE))
    return uc


def loop(uc: Uc, ntags: int, iters: int) -> float:
    ptrs = [(DATA + 16 * i) | ((0x10 + i % ntags) << 56) for i in range(64)]
    uc.mem_write(TABLE, struct.pack("<64Q", *ptrs))
    for reg, v in ((UC_ARM64_REG_X0, TABLE), (UC_ARM64_REG_X3, 0), (UC_ARM64_REG_X6, 63), (UC_ARM64_REG_X5, iters)):
        uc.reg_write(reg, v)
    t = time.thread_time()             # CPU time: not stretched by other tenants' load
    uc.emu_start(CODE, LOOP_END)
    return (time.thread_time() - t) / iters * 1e9


def filled_addresses(variant: str) -> set[int]:
    uc = engine(variant)
    seen: set[int] = set()

    def fill(uc_, vaddr, access, entry, ud):
        seen.add(vaddr)
        entry.paddr = vaddr & ((1 << 56) - 1) & ~0xFFF
        entry.perms = 7
        return True
    uc.hook_add(UC_HOOK_TLB_FILL, fill)
    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    loop(uc, 16, 1000)
    return {a for a in seen if a & ~0xFFF != CODE}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=1_000_000)
    args = p.parse_args()
    counts = (1, 2, 8, 9, 10, 16, 64)
    from unicorn.unicorn_py3.unicorn import uclib
    print(f"library: {uclib._name}")
    print("CPU ns per iteration by distinct tags on the page: " + " ".join(f"{n:>6}" for n in counts))
    for variant in VARIANTS:
        print(f"  {variant:22}" + " " * 25 + " ".join(f"{loop(engine(variant), n, args.iters):6.0f}" for n in counts))
    for variant in VARIANTS:
        addrs = filled_addresses(variant)
        tagged = sum(1 for a in addrs if a >> 56)
        print(f"  TLB fills ({variant}): {len(addrs)} distinct data addresses, {tagged} of them tagged")


if __name__ == "__main__":
    main()
