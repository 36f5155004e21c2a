"""Which guest functions emsan stands in for, found by symbol name in each loaded module."""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache

from emsan.report.elfsections import open_sections

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
    "_ZdlPv": "DELETE", "_ZdlPvRKSt9nothrow_t": "DELETE", "_ZdlPvm": "DELETE_SIZED",
    "_ZdlPvSt11align_val_t": "DELETE_ALIGNED", "_ZdlPvSt11align_val_tRKSt9nothrow_t": "DELETE_ALIGNED",
    "_ZdlPvmSt11align_val_t": "DELETE_SIZED_ALIGNED",
    "_ZdaPv": "DELETE_ARRAY", "_ZdaPvRKSt9nothrow_t": "DELETE_ARRAY", "_ZdaPvm": "DELETE_ARRAY_SIZED",
    "_ZdaPvSt11align_val_t": "DELETE_ARRAY_ALIGNED", "_ZdaPvSt11align_val_tRKSt9nothrow_t": "DELETE_ARRAY_ALIGNED",
    "_ZdaPvmSt11align_val_t": "DELETE_ARRAY_SIZED_ALIGNED",
}
# Tag modes also stand in for HWASan's interface for tagging a range of memory.
TAG_FUNCTIONS = {"__hwasan_tag_memory": "TAG_MEMORY"}

# String and memory functions with interceptors, by base name.
STRINGS = {
    "strlen": "STRLEN", "strnlen": "STRNLEN", "strchr": "STRCHR", "strrchr": "STRRCHR", "memchr": "MEMCHR",
    "strcmp": "STRCMP", "strncmp": "STRNCMP", "memcmp": "MEMCMP", "bcmp": "MEMCMP", "memcmpeq": "MEMCMP",
    "strcpy": "STRCPY", "strncpy": "STRNCPY", "stpcpy": "STPCPY", "stpncpy": "STPNCPY", "strcat": "STRCAT",
    "strncat": "STRNCAT", "memcpy": "MEMCPY", "memmove": "MEMMOVE", "mempcpy": "MEMPCPY", "memset": "MEMSET",
    "rawmemchr": "RAWMEMCHR", "strchrnul": "STRCHRNUL", "memrchr": "MEMRCHR",
    # the wide-character family, spans, searches, case-insensitive compares, duplicates
    "wcslen": "WCSLEN", "wcsnlen": "WCSNLEN", "wcschr": "WCSCHR", "wmemchr": "WMEMCHR", "wcsrchr": "WCSRCHR",
    "wcscmp": "WCSCMP", "wcsncmp": "WCSNCMP", "wmemcmp": "WMEMCMP", "wcscpy": "WCSCPY", "wcpcpy": "WCPCPY",
    "wcsncpy": "WCSNCPY", "wcpncpy": "WCPNCPY", "wcscat": "WCSCAT", "wcsncat": "WCSNCAT", "wmemcpy": "WMEMCPY",
    "wmemmove": "WMEMMOVE", "wmempcpy": "WMEMPCPY", "wmemset": "WMEMSET", "wcsdup": "WCSDUP",
    "strspn": "STRSPN", "strcspn": "STRCSPN", "strpbrk": "STRPBRK", "strstr": "STRSTR", "memmem": "MEMMEM",
    "strcasecmp": "STRCASECMP", "strncasecmp": "STRNCASECMP", "strdup": "STRDUP", "strndup": "STRNDUP",
}

# _FORTIFY_SOURCE's checked variants (__memcpy_chk...) of those: glibc compares the length with the
# destination's size the compiler passed, and aborts when it does not fit.
FORTIFIED = ("memcpy", "memmove", "mempcpy", "memset", "strcpy", "stpcpy", "strncpy", "stpncpy", "strcat", "strncat")

# glibc's optimized variants: __strlen_avx2, __memmove_avx_unaligned_erms, __memcpy_generic,
# __memmove_chk_avx_unaligned_erms, and its internal aliases (__GI_strlen, which on arm64 is a copy
# no IFUNC leads to).
_VARIANT = re.compile(r"^(?:__GI_)?_*(" + "|".join(sorted(STRINGS, key=len, reverse=True)) + r")(_chk)?(_[a-z0-9_]+)?$")
# Old helpers with their own signatures (__strspn_c2(s, a1, a2), __strcpy_small(d, w0, w1...)).
_NOT_VARIANT = re.compile(r"_(c[123]|1c|small|g)$")
# Code that legally reads past a string's end with aligned vector loads.
STRING_CODE = re.compile(r"^(?:__GI_)?_*(str|mem|stp|wcs|wmem|wcp|rawmem|bcmp|index|rindex)")


def string_function(name: str) -> str | None:
    """Native id name for a symbol that implements one of the intercepted functions."""
    if name.endswith("_ifunc") or _NOT_VARIANT.search(name):
        return None            # resolvers; old helpers with their own signatures
    m = _VARIANT.match(name)
    if not m:
        return None
    if m.group(2):             # glibc's own names only: a program's memcpy_chk() is its own
        return STRINGS[m.group(1)] + "_CHK" if m.group(1) in FORTIFIED and name.startswith("__") else None
    return STRINGS[m.group(1)]


@dataclass(frozen=True)
class EntryPoint:
    addr: int
    fn: str          # native function id name (MALLOC, STRLEN...)
    name: str        # the symbol


_SYM = struct.Struct("<IBBHQQ")          # Elf64_Sym
STT_FUNC, STT_GNU_IFUNC = 2, 10


@lru_cache(maxsize=None)
def function_symbols(path: str) -> tuple[tuple[int, int, int, str], ...]:
    """(link address, size, type, name) of the defined functions in .symtab and .dynsym.

    Scanned with struct, not pyelftools' per-symbol parser: that took 0.8 s for a static glibc
    program, most of a short run's start-up."""
    out = []
    try:
        with open(path, "rb") as f:
            elf = open_sections(f, path)
            for secname in ((".symtab", ".dynsym") if elf is not None else ()):
                sec = elf.get_section_by_name(secname)
                if sec is None or sec["sh_entsize"] != _SYM.size:
                    continue
                strtab = elf.get_section(sec["sh_link"]).data()
                data = sec.data()
                for off in range(0, len(data) - _SYM.size + 1, _SYM.size):
                    name_off, info, _other, shndx, value, size = _SYM.unpack_from(data, off)
                    kind = info & 0xF
                    if kind not in (STT_FUNC, STT_GNU_IFUNC) or not value or shndx == 0:
                        continue
                    end = strtab.find(b"\0", name_off)
                    out.append((value, size, kind, strtab[name_off:end].decode(errors="replace").split("@")[0]))
    except Exception:                       # not an ELF we can read: nothing to intercept
        return ()
    return tuple(out)


def has_section(path: str, name: str) -> bool:
    """Does the ELF file at path have a section called name (False if it cannot be read)?"""
    try:
        with open(path, "rb") as f:
            elf = open_sections(f, path)
            return elf is not None and elf.get_section_by_name(name) is not None
    except Exception:
        return False


# Two names of one function with different rules: glibc before 2.38 makes aligned_alloc an alias
# of memalign, so one entry serves both (with memalign's rules: glibc's).
SHARED = {frozenset(("MEMALIGN", "ALIGNED_ALLOC")): "MEMALIGN_OR_ALIGNED_ALLOC"}


def has_symtab(path: str) -> bool:
    return has_section(path, ".symtab")


def module_entry_points(path: str, base: int, strings: bool = True, tags: bool = False) -> list[EntryPoint]:
    """Allocator (and, unless strings=False, string; with tags=True, tagging) functions a module
    defines, at run time."""
    out: dict[int, EntryPoint] = {}
    for value, _size, kind, name in function_symbols(path):
        if kind != STT_FUNC:
            continue
        fn = ALLOCATOR.get(name) or (string_function(name) if strings else None) or \
            (TAG_FUNCTIONS.get(name) if tags else None)
        if not fn:
            continue
        had = out.get(value + base)
        if had is None:
            out[value + base] = EntryPoint(value + base, fn, name)
        elif frozenset((had.fn, fn)) in SHARED:
            out[value + base] = EntryPoint(value + base, SHARED[frozenset((had.fn, fn))], had.name)
    return list(out.values())


def string_ifuncs(path: str, base: int) -> list[tuple[int, str]]:
    """(resolver address, name) of the IFUNC symbols of intercepted string functions.

    A stripped libc has no names for its optimized variants: emsan calls each resolver once
    the program is relocated and intercepts the variant it returns."""
    return sorted({(value + base, name) for value, _size, kind, name in function_symbols(path)
                   if kind == STT_GNU_IFUNC and string_function(name)})


def string_code_ranges(path: str, base: int) -> list[tuple[int, int]]:
    """Address ranges of string-routine code in a module (whose read-ahead kasan.c tolerates)."""
    return [(value + base, value + base + size) for value, size, _kind, name in function_symbols(path)
            if size and STRING_CODE.match(name)]
