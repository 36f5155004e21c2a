"""Validated view of an ELF executable or shared object: what the loader needs.

Only the ELF header and the program headers are read, as the kernel's binfmt_elf does: a
file whose section headers are damaged or cut off still runs, one whose segments are cut
off is refused with a one-line message.
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import field
from functools import cached_property

from emsan.errors import EmsanError
from emsan.lazyclass import dataclass

PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_PHDR, PT_GNU_STACK = 1, 2, 3, 6, 0x6474E551
ET_EXEC, ET_DYN = 2, 3
EM_X86_64, EM_AARCH64 = 62, 183
MACHINE_NAMES = {3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 22: "S/390", 40: "ARM", 62: "x86-64",
                 183: "AArch64", 243: "RISC-V", 258: "LoongArch"}
ETYPE_NAMES = {0: "ET_NONE", 1: "ET_REL (an object file; link it first)", 4: "ET_CORE (a core dump)"}
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")     # Elf64_Ehdr
PHDR = struct.Struct("<IIQQQQQQ")             # Elf64_Phdr


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD program header."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int          # PF_X=1, PF_W=2, PF_R=4


@dataclass
class ElfImage:
    """What loading needs of an ELF file: its header, program headers and interpreter."""

    path: str
    machine: int
    etype: int
    entry: int
    phoff: int
    phentsize: int
    phnum: int
    segments: list[Segment]
    interp: str | None
    data: bytes = field(repr=False)
    phdr: int | None = None                  # PT_PHDR's vaddr, when present
    dynamic: tuple[int, int] | None = None   # PT_DYNAMIC's file offset and size

    @property
    def is_pie(self) -> bool:
        return self.etype == ET_DYN

    @cached_property
    def span(self) -> tuple[int, int]:
        lo = min(s.vaddr for s in self.segments) & ~0xFFF
        hi = max(s.vaddr + s.memsz for s in self.segments)
        return lo, (hi + 0xFFF) & ~0xFFF

    def phdr_vaddr(self) -> int:
        """AT_PHDR: PT_PHDR if there is one, else where the segment holding e_phoff puts it."""
        if self.phdr is not None:
            return self.phdr
        for s in self.segments:
            if s.offset <= self.phoff < s.offset + s.filesz:
                return s.vaddr + self.phoff - s.offset
        first = self.segments[0]
        return first.vaddr - first.offset + self.phoff

    def offset_of(self, vaddr: int) -> int | None:
        """File offset of a link-time address inside a loaded segment's file bytes."""
        for s in self.segments:
            if s.vaddr <= vaddr < s.vaddr + s.filesz:
                return s.offset + vaddr - s.vaddr
        return None


def open_elf(path: str, *, what: str = "program", need_exec: bool = True) -> ElfImage:
    """Read and validate an ELF file; every problem becomes a one-line EmsanError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EmsanError(f"{path}: no such file ({what})") from None
    except OSError as e:
        raise EmsanError(f"{path}: cannot access {what}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise EmsanError(f"{path}: is a directory, not an ELF {what}")
    if not stat.S_ISREG(st.st_mode):
        raise EmsanError(f"{path}: not a regular file, cannot be an ELF {what}")
    if need_exec and not os.access(path, os.X_OK):
        raise EmsanError(f"{path}: permission denied (not executable)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise EmsanError(f"{path}: cannot read {what}: {e.strerror}") from None
    return parse_elf(path, data)


def parse_elf(path: str, data: bytes) -> ElfImage:
    if data[:4] != b"\x7fELF":
        if data[:2] == b"#!":
            line = data[2:].split(b"\n", 1)[0].strip().decode(errors="replace")
            raise EmsanError(f"{path}: a script for {line or 'a shell'}, not an ELF program "
                             "(run its interpreter under emsan)")
        raise EmsanError(f"{path}: not an ELF file")
    if len(data) < 6:
        raise EmsanError(f"{path}: truncated ELF file ({len(data)} bytes, header incomplete)")
    if data[4] != 2:
        kind = "32-bit" if data[4] == 1 else f"class {data[4]}"
        raise EmsanError(f"{path}: unsupported ELF class ({kind}); emsan runs 64-bit x86-64 and AArch64 programs")
    if data[5] != 1:
        raise EmsanError(f"{path}: unsupported ELF data encoding ({'big-endian' if data[5] == 2 else data[5]})")
    if len(data) < EHDR.size:
        raise EmsanError(f"{path}: truncated ELF file ({len(data)} bytes, header incomplete)")
    (_ident, etype, machine, _version, entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum,
     *_rest) = EHDR.unpack_from(data)
    if machine not in (EM_X86_64, EM_AARCH64):
        name = MACHINE_NAMES.get(machine, f"machine {machine}")
        raise EmsanError(f"{path}: unsupported machine {name}; emsan runs x86-64 and AArch64 programs")
    if etype not in (ET_EXEC, ET_DYN):
        raise EmsanError(f"{path}: not an executable or shared object ({ETYPE_NAMES.get(etype, f'type {etype}')})")
    if phentsize != PHDR.size or phnum == 0:
        raise EmsanError(f"{path}: malformed ELF file (program header size {phentsize}, count {phnum})")
    end_ph = phoff + phnum * phentsize
    if end_ph > len(data):
        raise EmsanError(f"{path}: truncated ELF file (program headers end at {end_ph}, file has {len(data)} bytes)")

    segments: list[Segment] = []
    interp = phdr = dynamic = None
    for i in range(phnum):
        ptype, flags, off, vaddr, _paddr, filesz, memsz, _align = PHDR.unpack_from(data, phoff + i * phentsize)
        if ptype in (PT_LOAD, PT_INTERP, PT_DYNAMIC) and off + filesz > len(data):
            raise EmsanError(f"{path}: truncated ELF file (segment at offset {off:#x} needs {filesz:#x} bytes, "
                             f"file has {len(data)} bytes)")
        if ptype == PT_LOAD:
            if filesz > memsz:
                raise EmsanError(f"{path}: malformed ELF file (segment at {vaddr:#x} has file size > memory size)")
            if memsz:
                segments.append(Segment(vaddr, memsz, off, filesz, flags))
        elif ptype == PT_INTERP:
            interp = data[off:off + filesz].split(b"\0", 1)[0].decode(errors="surrogateescape")
            if not interp:
                raise EmsanError(f"{path}: malformed ELF file (empty interpreter path)")
        elif ptype == PT_PHDR:
            phdr = vaddr
        elif ptype == PT_DYNAMIC:
            dynamic = (off, filesz)
    if not segments:
        raise EmsanError(f"{path}: ELF file has no loadable segments")
    if max(s.vaddr + s.memsz for s in segments) >= 1 << 44:
        raise EmsanError(f"{path}: segments above the 44-bit guest address space")
    return ElfImage(path, machine, etype, entry, phoff, phentsize, phnum, segments, interp, data, phdr, dynamic)
