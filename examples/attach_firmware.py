"""A firmware-like blob under emsan: a raw binary loaded at its link address with nothing around it
but a stack, its own allocator (fw_alloc/fw_free) replaced by emsan's at the addresses the
firmware's map gives, packets handed to handle_packet(pkt, len) one by one. Symbols come from
the ELF the blob was cut from (a firmware map or ELF is what such projects usually have).

    gcc -O1 -g -ffreestanding -nostdlib -static -fno-pic -no-pie -Wl,-Ttext=0x10000 \\
        -Wl,-e,handle_packet -Wl,--build-id=none -o fw.elf examples/attach_fw.c
    objcopy -O binary fw.elf fw.bin
    python3 examples/attach_firmware.py [--mode MODE] fw.bin fw.elf PACKETS   # one packet per line, hex
    afl-fuzz -i SEEDS -o OUT -- python3 examples/attach_firmware.py --fuzz [--persistent N] \
        [--setup HEX]... fw.bin fw.elf                  # fuzz it: an input is packets, one per line

MODE is any emsan mode for the firmware's architecture: generic (default), generic-hook (generic
KASAN checking every access with a memory hook), kfence (the firmware's own allocator sampled;
every allocation, it makes few), and on arm64 sw-tags and hw-tags. A report is raised as
emsan.ReportError; its text is printed and the exit status is 99. With --fuzz the --setup packets
run once, then AFL++'s fork server starts there: each input is raw packets separated by newlines;
with --persistent N each forked child takes N inputs, the engine and emsan's state going back to
the fork point's after each (a session --setup opened is open again, even if an input closed it).
"""
from __future__ import annotations

import argparse
import sys

import emsan  # first: the unicorn binding must load emsan's engine, on which the Uc below runs
import unicorn
from elftools.elf.elffile import ELFFile
from unicorn import arm64_const, x86_const


LOAD = 0x10000                         # the blob's link address (-Ttext)
RAM_END = 0x20_0000                    # code, data and bss
STACK, STACK_SIZE = 0x80_0000, 0x10_0000
PKT = 0x90_0000                        # where packets are written
RETURN = 0x1000                        # handle_packet returns here: a page mapped for it


def firmware_map(elf_path: str) -> tuple[str, dict[str, int]]:
    """The firmware's architecture and function addresses (its linker map, in effect)."""
    elf = ELFFile(open(elf_path, "rb"))
    arch = {"EM_X86_64": "x86_64", "EM_AARCH64": "arm64"}[elf["e_machine"]]
    return arch, {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()
                  if s["st_info"]["type"] == "STT_FUNC"}


def mode_options(mode: str) -> dict:
    """emsan.attach()'s mode and options for the modes the command line offers."""
    if mode == "generic-hook":
        return {"mode": "generic", "checks": "hook"}
    if mode == "kfence":
        return {"mode": "kfence", "sample_interval": 1}
    return {"mode": mode}


class Firmware:
    def __init__(self, blob: str, elf_path: str, mode: str = "generic"):
        self.arch, self.syms = firmware_map(elf_path)
        if self.arch == "x86_64":
            uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        else:
            uc = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
            uc.reg_write(arm64_const.UC_ARM64_REG_CPACR_EL1, 3 << 20)
        uc.mem_map(0, RAM_END)                                  # includes the RETURN page
        uc.mem_write(LOAD, open(blob, "rb").read())
        uc.mem_map(STACK - STACK_SIZE, STACK_SIZE)
        uc.mem_map(PKT, 0x1000)
        self.uc = uc
        self.san = emsan.attach(uc, self.arch, allocator={"malloc": self.syms["fw_alloc"],
                                                          "free": self.syms["fw_free"]},
                                modules=[(elf_path, 0)], stack=(STACK - STACK_SIZE, STACK), comm="firmware",
                                **mode_options(mode))

    def packet(self, data: bytes) -> None:
        uc = self.uc
        uc.mem_write(PKT, data)
        sp = STACK - 0x100
        if self.arch == "x86_64":
            sp -= 8
            uc.mem_write(sp, RETURN.to_bytes(8, "little"))
            uc.reg_write(x86_const.UC_X86_REG_RSP, sp)
            uc.reg_write(x86_const.UC_X86_REG_RDI, PKT)
            uc.reg_write(x86_const.UC_X86_REG_RSI, len(data))
        else:
            uc.reg_write(arm64_const.UC_ARM64_REG_SP, sp)
            uc.reg_write(arm64_const.UC_ARM64_REG_LR, RETURN)
            uc.reg_write(arm64_const.UC_ARM64_REG_X0, PKT)
            uc.reg_write(arm64_const.UC_ARM64_REG_X1, len(data))
        self.san.run(self.syms["handle_packet"], RETURN)


    def packets(self, data: bytes) -> None:
        """A fuzzing input: packets separated by newlines."""
        for pkt in data.split(b"\n"):
            if pkt:
                self.packet(pkt[:0x1000])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="a firmware blob under emsan")
    ap.add_argument("--mode", default="generic", help="generic, generic-hook, kfence, sw-tags, hw-tags")
    ap.add_argument("--fuzz", action="store_true", help="serve AFL++ (by hand: run the input file once)")
    ap.add_argument("--persistent", type=int, default=1, metavar="N", help="inputs per forked child")
    ap.add_argument("--setup", action="append", default=[], metavar="HEX", help="a packet run before fuzzing")
    ap.add_argument("blob")
    ap.add_argument("elf")
    ap.add_argument("packets", nargs="?", help="packets, one per line in hex (with --fuzz: an input file)")
    a = ap.parse_args(argv)
    fw = Firmware(a.blob, a.elf, a.mode)
    if a.fuzz:
        for hx in a.setup:
            fw.packet(bytes.fromhex(hx))
        return 99 if fw.san.fuzz(fw.packets, cover=[(LOAD, RAM_END)], input_file=a.packets,
                                 persistent=a.persistent) else 0
    try:
        for line in open(a.packets):
            if line.strip():
                fw.packet(bytes.fromhex(line.strip()))
    except emsan.ReportError as e:
        print(e.report.text, file=sys.stderr)
        return 99
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
