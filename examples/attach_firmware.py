"""A firmware-like blob under emsan: a raw binary loaded at its link address with nothing around it
but a stack, its own allocator (fw_alloc/fw_free) replaced by emsan's at the addresses the
firmware's map gives, packets handed to handle_packet(pkt, len) one by one. Symbols come from
the ELF the blob was cut from (a firmware map or ELF is what such projects usually have).

    gcc -O1 -g -ffreestanding -nostdlib -static -fno-pic -no-pie -Wl,-Ttext=0x10000 \\
        -Wl,-e,handle_packet -Wl,--build-id=none -o fw.elf examples/attach_fw.c
    objcopy -O binary fw.elf fw.bin
    python3 examples/attach_firmware.py fw.bin fw.elf PACKETS       # one packet per line, hex

A report is raised as emsan.ReportError; its text is printed and the exit status is 99.
"""
from __future__ import annotations

import sys

import unicorn
from elftools.elf.elffile import ELFFile
from unicorn import arm64_const, x86_const

import emsan

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


class Firmware:
    def __init__(self, blob: str, elf_path: str):
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
                                modules=[(elf_path, 0)], stack=(STACK - STACK_SIZE, STACK), comm="firmware")

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


def main(argv: list[str]) -> int:
    fw = Firmware(argv[0], argv[1])
    try:
        for line in open(argv[2]):
            if line.strip():
                fw.packet(bytes.fromhex(line.strip()))
    except emsan.ReportError as e:
        print(e.report.text, file=sys.stderr)
        return 99
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
