"""Validated view of an ELF executable or shared object: what the loader and symbolizer need."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from functools import cached_property

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from emsan.errors import EmsanError

PT_LOAD, PT_INTERP, PT_PHDR, PT_GNU_STACK = 1, 3, 6, 0x6474E551
ET_EXEC, ET_DYN = 2, 3
MACHINE_NAMES = {3: "i386", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 40: "ARM", 62: "x86-64",
                 183: "AArch64", 243: "RISC-V"}


@dataclass(frozen=True)
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int          # PF_X=1, PF_W=2, PF_R=4


@dataclass
class ElfImage:
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

    @property
    def is_pie(self) -> bool:
        return self.etype == ET_DYN

    @cached_property
    def span(self) -> tuple[int, int]:
        lo = min(s.vaddr for s in self.segments) & ~0xFFF
        hi = max(s.vaddr + s.memsz for s in self.segments)
        return lo, (hi + 0xFFF) & ~0xFFF

    def phdr_vaddr(self) -> int:
        for s in self.segments:
            if s.offset <= self.phoff < s.offset + s.filesz:
                return s.vaddr + self.phoff - s.offset
        raise EmsanError(f"{self.path}: program headers are not in a loadable segment")


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
    if need_exec and not os.access(path, os.X_OK):
        raise EmsanError(f"{path}: permission denied (not executable)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise EmsanError(f"{path}: cannot read {what}: {e.strerror}") from None
    if data[:4] != b"\x7fELF":
        raise EmsanError(f"{path}: not an ELF file")
    if len(data) < 64 and not (len(data) >= 52 and data[4] == 1):
        raise EmsanError(f"{path}: truncated ELF file ({len(data)} bytes, header incomplete)")
    if data[4] != 2:
        raise EmsanError(f"{path}: unsupported ELF class ({'32-bit' if data[4] == 1 else data[4]}); "
                         "emsan runs 64-bit x86-64 and AArch64 programs")
    if data[5] != 1:
        raise EmsanError(f"{path}: unsupported ELF data encoding (big-endian)")
    try:
        ef = ELFFile(_Stream(data))
        hdr = ef.header
        machine = _machine_number(hdr["e_machine"])
        if machine not in (62, 183):
            name = MACHINE_NAMES.get(machine, f"machine {machine}")
            raise EmsanError(f"{path}: unsupported machine {name}; emsan runs x86-64 and AArch64 programs")
        etype = {"ET_EXEC": ET_EXEC, "ET_DYN": ET_DYN}.get(hdr["e_type"])
        if etype is None:
            raise EmsanError(f"{path}: not an executable or shared object ({hdr['e_type']})")
        end_ph = hdr["e_phoff"] + hdr["e_phnum"] * hdr["e_phentsize"]
        if end_ph > len(data):
            raise EmsanError(f"{path}: truncated ELF file (program headers end at {end_ph}, file has {len(data)} bytes)")
        segments, interp = [], None
        for ph in ef.iter_segments():
            if ph["p_type"] == "PT_LOAD":
                if ph["p_offset"] + ph["p_filesz"] > len(data):
                    raise EmsanError(f"{path}: truncated ELF file (segment at offset {ph['p_offset']:#x} "
                                     f"needs {ph['p_filesz']:#x} bytes, file has {len(data)} bytes)")
                segments.append(Segment(ph["p_vaddr"], ph["p_memsz"], ph["p_offset"], ph["p_filesz"], ph["p_flags"]))
            elif ph["p_type"] == "PT_INTERP":
                raw = data[ph["p_offset"]:ph["p_offset"] + ph["p_filesz"]]
                interp = raw.split(b"\0", 1)[0].decode(errors="replace")
        if not segments:
            raise EmsanError(f"{path}: ELF file has no loadable segments")
        return ElfImage(path, machine, etype, hdr["e_entry"], hdr["e_phoff"], hdr["e_phentsize"],
                        hdr["e_phnum"], segments, interp, data)
    except EmsanError:
        raise
    except (ELFError, ValueError, KeyError, IndexError, EOFError) as e:
        raise EmsanError(f"{path}: malformed or truncated ELF file ({e})") from None
    except Exception as e:  # pyelftools raises assorted errors on damaged files
        raise EmsanError(f"{path}: malformed or truncated ELF file ({type(e).__name__})") from None


def _machine_number(m) -> int:
    if isinstance(m, int):
        return m
    from elftools.elf.enums import ENUM_E_MACHINE
    return ENUM_E_MACHINE.get(m, -1)


class _Stream:
    """Minimal seekable stream over bytes (pyelftools wants a file object)."""

    def __init__(self, data: bytes):
        import io
        self._io = io.BytesIO(data)
        self.read, self.seek, self.tell = self._io.read, self._io.seek, self._io.tell
