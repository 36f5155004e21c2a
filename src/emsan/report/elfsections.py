"""Section headers are optional: the kernel runs a program from its ELF and program headers and
never reads the section-header table. A file whose table is damaged or cut off (a wrong
e_shoff, e_shstrndx or section extent: fuzzers make such files, so do some packers) still runs;
symbols, DWARF lines and unwind tables come from the sections only when the whole table parses.
Every reader of sections (the symbolizer, the sanitizer's entry points and stack collectors)
opens the file through here."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

SHT_NOBITS = "SHT_NOBITS"


def _check(elf: ELFFile, size: int) -> None:
    """Raise if a section header, its name or its contents lie outside the file."""
    n = elf.num_sections()
    if n and elf["e_shentsize"] != elf.structs.Elf_Shdr.sizeof():
        raise ValueError("section header size")
    if elf["e_shoff"] + n * elf["e_shentsize"] > size:
        raise ValueError("section headers past the end of the file")
    for i in range(n):
        sec = elf.get_section(i)
        _ = sec.name
        if sec["sh_type"] != SHT_NOBITS and sec["sh_offset"] + sec["sh_size"] > size:
            raise ValueError(f"section {i} past the end of the file")
        if sec["sh_link"] >= max(n, 1) and sec["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM", "SHT_DYNAMIC", "SHT_REL",
                                                              "SHT_RELA", "SHT_HASH", "SHT_GNU_HASH"):
            raise ValueError(f"section {i} links to a section that does not exist")


@lru_cache(maxsize=512)
def _usable(path: str, size: int, _identity: str) -> bool:
    from elftools.elf.elffile import ELFFile     # here: importing pyelftools is ~20 ms of start-up
    try:
        with open(path, "rb") as f:
            _check(ELFFile(f), size)
        return True
    except Exception:               # whatever pyelftools makes of a damaged table: no sections
        return False


def sections_usable(path: str) -> bool:
    """Does the file's section-header table parse, with every section inside the file?"""
    from emsan.cache import stat_identity
    try:
        st = os.stat(path)
    except OSError:
        return False
    return _usable(path, st.st_size, stat_identity(st))


def open_sections(f: BinaryIO, path: str) -> ELFFile | None:
    """An ELFFile over the open file `f` (of `path`) to read sections from, or None when its
    section-header table is unusable: then the file is used without its sections."""
    if not sections_usable(path):
        return None
    from elftools.elf.elffile import ELFFile
    return ELFFile(f)
