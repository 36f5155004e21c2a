"""Which guest functions emsan stands in for, found by symbol name in each loaded module."""
from __future__ import annotations

import re
from dataclasses import dataclass

from emsan.report.symbolize import module_symbols

# Allocator entry points (C and C++), by symbol name -> native function id name.
ALLOCATOR = {
    "malloc": "MALLOC", "free": "FREE", "cfree": "FREE", "calloc": "CALLOC", "realloc": "REALLOC",
    "reallocarray": "REALLOCARRAY", "memalign": "MEMALIGN", "posix_memalign": "POSIX_MEMALIGN",
    "aligned_alloc": "ALIGNED_ALLOC", "valloc": "VALLOC", "pvalloc": "PVALLOC",
    "malloc_usable_size": "USABLE_SIZE",
    "_Znwm": "NEW", "_Znam": "NEW_ARRAY",
    "_ZnwmRKSt9nothrow_t": "NEW_NOTHROW", "_ZnamRKSt9nothrow_t": "NEW_ARRAY_NOTHROW",
    "_ZnwmSt11align_val_t": "NEW_ALIGNED", "_ZnamSt11align_val_t": "NEW_ARRAY_ALIGNED",
    "_ZnwmSt11align_val_tRKSt9nothrow_t": "NEW_ALIGNED_NOTHROW",
    "_ZnamSt11align_val_tRKSt9nothrow_t": "NEW_ARRAY_ALIGNED_NOTHROW",
    "_ZdlPv": "DELETE", "_ZdlPvm": "DELETE", "_ZdlPvSt11align_val_t": "DELETE",
    "_ZdlPvmSt11align_val_t": "DELETE", "_ZdlPvRKSt9nothrow_t": "DELETE",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t": "DELETE",
    "_ZdaPv": "DELETE_ARRAY", "_ZdaPvm": "DELETE_ARRAY", "_ZdaPvSt11align_val_t": "DELETE_ARRAY",
    "_ZdaPvmSt11align_val_t": "DELETE_ARRAY", "_ZdaPvRKSt9nothrow_t": "DELETE_ARRAY",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t": "DELETE_ARRAY",
}

# String and memory functions with interceptors, by base name.
STRINGS = {
    "strlen": "STRLEN", "strnlen": "STRNLEN", "strchr": "STRCHR", "strrchr": "STRRCHR", "memchr": "MEMCHR",
    "strcmp": "STRCMP", "strncmp": "STRNCMP", "memcmp": "MEMCMP", "bcmp": "MEMCMP", "memcmpeq": "MEMCMP",
    "strcpy": "STRCPY", "strncpy": "STRNCPY", "stpcpy": "STPCPY", "stpncpy": "STPNCPY", "strcat": "STRCAT",
    "strncat": "STRNCAT", "memcpy": "MEMCPY", "memmove": "MEMMOVE", "mempcpy": "MEMPCPY", "memset": "MEMSET",
    "rawmemchr": "RAWMEMCHR", "strchrnul": "STRCHRNUL", "memrchr": "MEMRCHR",
}

# glibc's optimized variants: __strlen_avx2, __memmove_avx_unaligned_erms, __memcpy_generic...
_VARIANT = re.compile(r"^_*(" + "|".join(sorted(STRINGS, key=len, reverse=True)) + r")(_[a-z0-9_]+)?$")
# Code that legally reads past a string's end with aligned vector loads.
# pyelftools names type 10 STT_LOOS (it is also STT_GNU_IFUNC).
IFUNC_TYPES = ("STT_GNU_IFUNC", "STT_LOOS")
STRING_CODE = re.compile(r"^_*(str|mem|stp|wcs|wmem|rawmem|bcmp)")


def string_function(name: str) -> str | None:
    """Native id name for a symbol that implements one of the intercepted functions."""
    if name.endswith(("_chk", "_ifunc")) or "_chk_" in name:
        return None            # fortify wrappers jump to the real code; *_ifunc are resolvers
    m = _VARIANT.match(name)
    return STRINGS[m.group(1)] if m else None


@dataclass(frozen=True)
class EntryPoint:
    addr: int
    fn: str          # native function id name (MALLOC, STRLEN...)
    name: str        # the symbol


def module_entry_points(path: str, base: int) -> list[EntryPoint]:
    """Allocator and string functions defined by one module, at their run-time addresses."""
    syms = module_symbols(path)
    if syms.elf is None:
        return []
    out: dict[int, EntryPoint] = {}
    for secname in (".symtab", ".dynsym"):
        sec = syms.elf.get_section_by_name(secname)
        if sec is None:
            continue
        for sym in sec.iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or not sym["st_value"] or sym["st_shndx"] == "SHN_UNDEF":
                continue
            name = sym.name.split("@")[0]
            fn = ALLOCATOR.get(name) or string_function(name)
            addr = sym["st_value"] + base
            if fn and addr not in out:
                out[addr] = EntryPoint(addr, fn, name)
    return list(out.values())


def string_ifuncs(path: str, base: int) -> list[tuple[int, str]]:
    """(resolver address, name) of the IFUNC symbols of intercepted string functions.

    A stripped libc has no names for its optimized variants: emsan calls each resolver once
    the program is relocated and intercepts the variant it returns."""
    syms = module_symbols(path)
    if syms.elf is None:
        return []
    out = []
    for secname in (".dynsym", ".symtab"):
        sec = syms.elf.get_section_by_name(secname)
        if sec is None:
            continue
        for sym in sec.iter_symbols():
            if sym["st_info"]["type"] in IFUNC_TYPES and sym["st_value"] and sym["st_shndx"] != "SHN_UNDEF":
                name = sym.name.split("@")[0]
                if string_function(name):
                    out.append((sym["st_value"] + base, name))
    return sorted(set(out))


def string_code_ranges(path: str, base: int) -> list[tuple[int, int]]:
    """Address ranges of string-routine code in a module (for the aligned-overread tolerance)."""
    syms = module_symbols(path)
    return [(addr + base, addr + base + size) for addr, size, name in syms.syms
            if size and STRING_CODE.match(name)]
