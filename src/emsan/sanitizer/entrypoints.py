"""Which guest functions emsan stands in for, found by symbol name in each loaded module."""
from __future__ import annotations

import os
import re
import struct
from functools import lru_cache

from emsan.lazyclass import dataclass
from emsan.report.elfsections import open_sections, sections_usable
from emsan.runtime import GLOBALS_SYMBOL, NO_RETURN_SYMBOL, REPORT_SYMBOL

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
# Compiler-assisted mode stands in for its runtime's functions (emsan.runtime, kasan_runtime.h).
RUNTIME_FUNCTIONS = (REPORT_SYMBOL, GLOBALS_SYMBOL, NO_RETURN_SYMBOL)
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
FORTIFIED = ("memcpy", "memmove", "mempcpy", "memset", "strcpy", "stpcpy", "strncpy", "stpncpy", "strcat", "strncat",
             "wmemcpy", "wmemmove", "wmempcpy", "wmemset", "wcscpy", "wcpcpy", "wcsncpy", "wcpncpy", "wcscat", "wcsncat")

# C library functions whose own code runs, checked at their entry (native/libc.c), by exact
# symbol name: the number parsers (with glibc 2.38's C23 variants, which the headers pick for
# strtol with base 0b prefixes), the printf and scanf families with their ISO C99/C23 and
# _FORTIFY_SOURCE names, streams and checked reads.
LIBC = {
    "strtol": "STRTOL", "strtoul": "STRTOUL", "strtoll": "STRTOLL", "strtoull": "STRTOULL", "strtoq": "STRTOLL",
    "strtouq": "STRTOULL", "strtoimax": "STRTOLL", "strtoumax": "STRTOULL",
    "__isoc23_strtol": "STRTOL", "__isoc23_strtoul": "STRTOUL", "__isoc23_strtoll": "STRTOLL",
    "__isoc23_strtoull": "STRTOULL", "__isoc23_strtoimax": "STRTOLL", "__isoc23_strtoumax": "STRTOULL",
    "atoi": "ATOI", "atol": "ATOL", "atoll": "ATOLL", "atoq": "ATOLL",
    "strtod": "STRTOD", "strtof": "STRTOF", "strtold": "STRTOLD", "atof": "ATOF",
    # TS 18661-3 aliases, and the old ABI's parsers (a 4th argument, grouping, the C locale ignores)
    "strtof32": "STRTOF", "strtof64": "STRTOD", "strtof32x": "STRTOD", "strtof64x": "STRTOLD",
    "__strtol_internal": "STRTOL", "__strtoul_internal": "STRTOUL", "__strtoll_internal": "STRTOLL",
    "__strtoull_internal": "STRTOULL", "__strtod_internal": "STRTOD", "__strtof_internal": "STRTOF",
    "__strtold_internal": "STRTOLD",
    "printf": "PRINTF", "fprintf": "FPRINTF", "dprintf": "DPRINTF", "sprintf": "SPRINTF", "snprintf": "SNPRINTF",
    "asprintf": "ASPRINTF", "vprintf": "VPRINTF", "vfprintf": "VFPRINTF", "vdprintf": "VDPRINTF",
    "vsprintf": "VSPRINTF", "vsnprintf": "VSNPRINTF", "vasprintf": "VASPRINTF",
    "__printf_chk": "PRINTF_CHK", "__fprintf_chk": "FPRINTF_CHK", "__dprintf_chk": "DPRINTF_CHK",
    "__sprintf_chk": "SPRINTF_CHK", "__snprintf_chk": "SNPRINTF_CHK", "__asprintf_chk": "ASPRINTF_CHK",
    "__vprintf_chk": "VPRINTF_CHK", "__vfprintf_chk": "VFPRINTF_CHK", "__vdprintf_chk": "VDPRINTF_CHK",
    "__vsprintf_chk": "VSPRINTF_CHK", "__vsnprintf_chk": "VSNPRINTF_CHK", "__vasprintf_chk": "VASPRINTF_CHK",
    "scanf": "SCANF", "fscanf": "FSCANF", "sscanf": "SSCANF", "vscanf": "VSCANF", "vfscanf": "VFSCANF",
    "vsscanf": "VSSCANF",
    "__isoc99_scanf": "SCANF", "__isoc99_fscanf": "FSCANF", "__isoc99_sscanf": "SSCANF",
    "__isoc99_vscanf": "VSCANF", "__isoc99_vfscanf": "VFSCANF", "__isoc99_vsscanf": "VSSCANF",
    "__isoc23_scanf": "SCANF", "__isoc23_fscanf": "FSCANF", "__isoc23_sscanf": "SSCANF",
    "__isoc23_vscanf": "VSCANF", "__isoc23_vfscanf": "VFSCANF", "__isoc23_vsscanf": "VSSCANF",
    "fwrite": "FWRITE", "fwrite_unlocked": "FWRITE", "fputs": "FPUTS", "fputs_unlocked": "FPUTS", "puts": "PUTS",
    # the libio names old binaries import
    "_IO_printf": "PRINTF", "_IO_fprintf": "FPRINTF", "_IO_sprintf": "SPRINTF", "_IO_vfprintf": "VFPRINTF",
    "_IO_vsprintf": "VSPRINTF", "__snprintf": "SNPRINTF", "__vsnprintf": "VSNPRINTF", "__asprintf": "ASPRINTF",
    "_IO_sscanf": "SSCANF", "__vsscanf": "VSSCANF", "_IO_vfscanf": "VFSCANF", "__vfscanf": "VFSCANF",
    "_IO_puts": "PUTS", "_IO_fputs": "FPUTS", "_IO_fwrite": "FWRITE", "_IO_fread": "FREAD", "_IO_fgets": "FGETS",
    "__read_chk": "READ_CHK", "__pread_chk": "PREAD_CHK", "__pread64_chk": "PREAD_CHK",
    "__fread_chk": "FREAD_CHK", "__fread_unlocked_chk": "FREAD_CHK",
    "fgets": "FGETS", "fgets_unlocked": "FGETS", "__fgets_chk": "FGETS_CHK",
    "__fgets_unlocked_chk": "FGETS_UNLOCKED_CHK", "fread": "FREAD", "fread_unlocked": "FREAD",
    "__chk_fail": "CHK_FAIL",
}

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
    if m.group(3) and m.group(3) != "_l" and not name.startswith("__"):
        return None            # glibc's variants are __-prefixed: a program's strlen_utf8() is its own
    return STRINGS[m.group(1)]


@dataclass(frozen=True)
class EntryPoint:
    """A function emsan stands in for or checks at its entry, where it is loaded."""

    addr: int
    fn: str          # native function id name (MALLOC, STRLEN...)
    name: str        # the symbol


_SYM = struct.Struct("<IBBHQQ")          # Elf64_Sym
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
_SHDR = struct.Struct("<IIQQQQIIQQ")      # Elf64_Shdr
STT_FUNC, STT_GNU_IFUNC = 2, 10


@dataclass(frozen=True)
class _Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    entsize: int
    addr: int = 0


def _sections(path: str) -> tuple[_Section, ...] | None:
    """The section headers of a little-endian ELF64 file, in index order; () when its section-header
    table is unusable (report/elfsections.py: then the file runs without its sections); None for any
    other file (the callers let pyelftools read it).

    Read with struct: pyelftools parses every header with construct to find one by name, 20-40 ms
    per libc at every start-up."""
    from emsan.cache import file_identity
    return _sections_of(path, file_identity(path))


@lru_cache(maxsize=512)
def _sections_of(path: str, _identity: str | None) -> tuple[_Section, ...] | None:
    with open(path, "rb") as f:
        head = f.read(_EHDR.size)
    if len(head) < _EHDR.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    if not sections_usable(path):
        return ()
    shoff, shentsize, shnum, shstrndx = (_EHDR.unpack(head)[i] for i in (6, 11, 12, 13))
    if not shoff or shentsize != _SHDR.size or shstrndx >= shnum:
        return ()
    with open(path, "rb") as f:
        f.seek(shoff)
        table = f.read(shnum * shentsize)
        hdrs = [_SHDR.unpack_from(table, i * shentsize) for i in range(len(table) // shentsize)]
        if shstrndx >= len(hdrs):
            return ()
        f.seek(hdrs[shstrndx][4])
        names = f.read(hdrs[shstrndx][5])
    out = []
    for name_off, typ, _flags, addr, offset, size, link, _info, _align, entsize in hdrs:
        end = names.find(b"\0", name_off)
        out.append(_Section(names[name_off:end if end >= 0 else None].decode(errors="replace"),
                            typ, offset, size, link, entsize, addr))
    return tuple(out)


def _read(f, sec: _Section) -> bytes:
    f.seek(sec.offset)
    return f.read(sec.size)


def function_symbols(path: str) -> tuple[tuple[int, int, int, str], ...]:
    """(link address, size, type, name) of the defined functions in .symtab and .dynsym.

    Scanned with struct, not pyelftools' per-symbol parser: that took 0.8 s for a static glibc
    program, most of a short run's start-up. Kept per file version (a file replaced while emsan
    runs is read again)."""
    from emsan.cache import file_identity
    return _function_symbols(path, file_identity(path))


@lru_cache(maxsize=64)
def _function_symbols(path: str, _identity: str | None) -> tuple[tuple[int, int, int, str], ...]:
    out = []
    try:
        secs = _sections(path) or ()          # (32-bit and big-endian files: entsize is not 24)
        with open(path, "rb") as f:
            for secname in (".symtab", ".dynsym"):
                sec = next((s for s in secs if s.name == secname), None)
                if sec is None or sec.entsize != _SYM.size or sec.link >= len(secs):
                    continue
                strtab = _read(f, secs[sec.link])
                data = _read(f, sec)
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


def _index(path: str) -> dict:
    """What the functions below need of a module, derived once per file and cached on disk
    (emsan.cache.per_file): the symbols of functions emsan stands in for, with their class in
    each table, string IFUNCs, string-code ranges, imports and whether it has .symtab. A start-up
    then reads a few hundred entries instead of scanning and classifying a debug libc's 7,000
    symbols (~25 ms per run)."""
    from emsan.cache import file_identity
    return _index_of(path, file_identity(path))


@lru_cache(maxsize=512)
def _index_of(path: str, _identity: str | None) -> dict:
    from emsan.cache import per_file
    return per_file(path, "entrypoints", __file__, lambda: _make_index(path))


def _make_index(path: str) -> dict:
    named = []          # STT_FUNC symbols of any table: [value, name, allocator, string, tag, libc id]
    ifuncs = []         # [value, name] of IFUNCs of intercepted string functions
    code = []           # [value, size] of string-routine code
    runtime = {}        # compiler-assisted mode's runtime functions: name -> value
    for value, size, kind, name in function_symbols(path):
        if name in RUNTIME_FUNCTIONS:
            runtime[name] = value
        if kind == STT_FUNC:
            row = [ALLOCATOR.get(name), string_function(name), TAG_FUNCTIONS.get(name), LIBC.get(name)]
            if any(row):
                named.append([value, name, *row])
        elif kind == STT_GNU_IFUNC and string_function(name):
            ifuncs.append([value, name])
        if size and STRING_CODE.match(name):
            code.append([value, size])
    return {"named": named, "ifuncs": ifuncs, "code": code, "imports": sorted(_imported_functions(path)),
            "symtab": has_section(path, ".symtab"), "runtime": runtime}


def runtime_functions(path: str) -> dict[str, int]:
    """Link addresses of compiler-assisted mode's runtime functions (emsan.runtime) the module
    defines: the report hook, the globals' registration, the no-return hook."""
    return dict(_index(path)["runtime"])


def has_section(path: str, name: str) -> bool:
    """Does the ELF file at path have a section called name (False if it cannot be read)?"""
    try:
        secs = _sections(path)
        if secs is not None:
            return any(s.name == name for s in secs)
        with open(path, "rb") as f:
            elf = open_sections(f, path)
            return elf is not None and elf.get_section_by_name(name) is not None
    except Exception:
        return False


# Two names of one function with different rules: glibc before 2.38 makes aligned_alloc an alias
# of memalign, so one entry serves both (with memalign's rules: glibc's).
SHARED = {frozenset(("MEMALIGN", "ALIGNED_ALLOC")): "MEMALIGN_OR_ALIGNED_ALLOC"}


def has_symtab(path: str) -> bool:
    return _index(path)["symtab"]


def module_entry_points(path: str, base: int, strings: bool = True, tags: bool = False) -> list[EntryPoint]:
    """Allocator (and, unless strings=False, string; with tags=True, tagging) functions a module
    defines, at run time."""
    out: dict[int, EntryPoint] = {}
    for value, name, alloc, string, tag, _libc in _index(path)["named"]:
        fn = alloc or (string if strings else None) or (tag if tags else None)
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
    return sorted({(value + base, name) for value, name in _index(path)["ifuncs"]})


def string_code_ranges(path: str, base: int) -> list[tuple[int, int]]:
    """Address ranges of string-routine code in a module (whose read-ahead kasan.c tolerates)."""
    return [(value + base, value + base + size) for value, size in _index(path)["code"]]


# ---- which of the C library functions checked at entry (LIBC) a program calls ---------------------
# Every entry hook costs each intercepted call a little (the engine walks its list of code hooks at
# each one), so the functions of LIBC are hooked only where something outside the C library calls
# them: a name another module imports (dynamic programs), or a direct call from the program's own
# code (static programs: the code .debug_aranges covers, which glibc's static archive has none of).


def libc_functions(path: str, base: int) -> dict[int, tuple[str, frozenset[str]]]:
    """Address -> (native id name, every LIBC name there) of the LIBC functions a module defines."""
    out: dict[int, tuple[str, set[str]]] = {}
    for value, name, _alloc, _string, _tag, libc in _index(path)["named"]:
        if libc:
            out.setdefault(value + base, (libc, set()))[1].add(name)
    return {a: (fn, frozenset(names)) for a, (fn, names) in out.items()}


def imported_functions(path: str) -> frozenset[str]:
    """The names a module imports (its undefined dynamic symbols)."""
    return frozenset(_index(path)["imports"])


def _imported_functions(path: str) -> frozenset[str]:
    out = set()
    try:
        secs = _sections(path) or ()
        sec = next((s for s in secs if s.name == ".dynsym"), None)
        if sec is None or sec.entsize != _SYM.size or sec.link >= len(secs):
            return frozenset()
        with open(path, "rb") as f:
            strtab, data = _read(f, secs[sec.link]), _read(f, sec)
        for off in range(_SYM.size, len(data) - _SYM.size + 1, _SYM.size):
            name_off, _info, _other, shndx, _value, _size = _SYM.unpack_from(data, off)
            if shndx == 0:
                end = strtab.find(b"\0", name_off)
                out.add(strtab[name_off:end].decode(errors="replace").split("@")[0])
    except Exception:
        return frozenset()
    return frozenset(out)


def _aranges(data: bytes) -> list[tuple[int, int]]:
    """(address, length) of every range .debug_aranges lists."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        length, = struct.unpack_from("<I", data, pos)
        head, fmt = (12, "<Q") if length == 0xFFFFFFFF else (4, "<I")
        if head == 12:
            length, = struct.unpack_from("<Q", data, pos + 4)
        start, end = pos, pos + head + length
        q = pos + head + 2 + struct.calcsize(fmt)           # version, debug_info offset
        if q + 2 > len(data):
            break
        asize, ssize = data[q], data[q + 1]
        if asize != 8 or ssize:
            return []
        q = start + -(-(q + 2 - start) // 16) * 16           # tuples start 2 * address size aligned
        while q + 16 <= end:
            addr, n = struct.unpack_from("<QQ", data, q)
            q += 16
            if not addr and not n:
                break
            out.append((addr, n))
        pos = end
    return out


def direct_callees(path: str, arm64: bool) -> frozenset[int] | None:
    """Link addresses that the module's own code (the ranges .debug_aranges covers) calls or
    jumps to directly (x86-64 call/jmp rel32, arm64 bl/b); None without .debug_aranges.
    Cached on disk per file (a static program's whole code is scanned)."""
    from emsan.cache import per_file
    found = per_file(path, f"callees-{int(arm64)}", __file__, lambda: _direct_callees(path, arm64))
    return None if found is None else frozenset(found)


def _direct_callees(path: str, arm64: bool) -> list[int] | None:
    try:
        secs = _sections(path) or ()
        ar = next((s for s in secs if s.name == ".debug_aranges"), None)
        if ar is None:
            return None
        code = [s for s in secs if s.type == 1 and s.addr and s.name in (".text", ".init", ".fini")]
        out: set[int] = set()
        with open(path, "rb") as f:
            ranges = _aranges(_read(f, ar))
            for lo, n in ranges:
                sec = next((s for s in code if s.addr <= lo and lo + n <= s.addr + s.size), None)
                if sec is None:
                    continue
                f.seek(sec.offset + lo - sec.addr)
                data = f.read(n)
                if arm64:
                    for i in range(0, len(data) - 3, 4):
                        w, = struct.unpack_from("<I", data, i)
                        if w >> 26 in (0b100101, 0b000101):             # bl, b
                            imm = w & 0x3FFFFFF
                            out.add(lo + i + ((imm - (1 << 26) if imm >> 25 else imm) << 2))
                else:
                    for op in (0xE8, 0xE9):                             # call, jmp rel32
                        i = data.find(op)
                        while 0 <= i <= len(data) - 5:
                            rel, = struct.unpack_from("<i", data, i + 1)
                            out.add(lo + i + 5 + rel)
                            i = data.find(op, i + 1)
        return sorted(out) if ranges else None
    except Exception:
        return None
