"""Address -> function+offset/size (and file:line when DWARF has it), cached per module."""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from functools import lru_cache

from elftools.elf.elffile import ELFFile


@dataclass(frozen=True)
class Frame:
    addr: int
    function: str | None = None
    offset: int = 0
    size: int = 0
    module: str = ""
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.function is None:
            where = f"{self.addr:#x}"
            if self.module:
                where += f" ({os.path.basename(self.module)})"
            return where
        s = f"{self.function}+{self.offset:#x}/{self.size:#x}"
        if self.file:
            s += f" {self.file}:{self.line}"
        return s

    def to_json(self) -> dict:
        return {"addr": f"{self.addr:#x}", "function": self.function, "offset": self.offset,
                "size": self.size, "module": self.module, "file": self.file, "line": self.line}


class ModuleSymbols:
    """Symbols and line table of one ELF file, addresses relative to its link address."""

    def __init__(self, path: str):
        self.path = path
        self.starts: list[int] = []
        self.syms: list[tuple[int, int, str]] = []
        self._lines: tuple[list[int], list[tuple[str, int]]] | None = None
        self._dwarf_ok = True
        try:
            self._f = open(path, "rb")
            self.elf = ELFFile(self._f)
        except Exception:
            self.elf = None
            return
        seen: dict[int, tuple[int, int, str]] = {}
        for secname in (".symtab", ".dynsym"):
            sec = self.elf.get_section_by_name(secname)
            if sec is None:
                continue
            for sym in sec.iter_symbols():
                if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC", "STT_LOOS", "STT_OBJECT") or not sym["st_value"]:
                    continue
                addr, size, name = sym["st_value"], sym["st_size"], sym.name
                prev = seen.get(addr)
                # Among aliases prefer the public name (malloc over __libc_malloc), then the sized one.
                if prev is None or (prev[2].startswith("_") and not name.startswith("_")) or (not prev[1] and size):
                    seen[addr] = (addr, size, name)
        self.syms = sorted(seen.values())
        self.starts = [s[0] for s in self.syms]

    def lookup(self, rel: int) -> tuple[str, int, int] | None:
        i = bisect.bisect_right(self.starts, rel) - 1
        if i < 0:
            return None
        addr, size, name = self.syms[i]
        if size and rel >= addr + size:
            return None
        return name, rel - addr, size

    def address_of(self, name: str) -> int | None:
        for addr, _size, n in self.syms:
            if n == name:
                return addr
        return None

    def line(self, rel: int) -> tuple[str, int] | None:
        if self._lines is None:
            self._lines = self._load_lines()
        addrs, rows = self._lines
        i = bisect.bisect_right(addrs, rel) - 1
        return rows[i] if i >= 0 and rows[i][1] else None

    def _load_lines(self) -> tuple[list[int], list[tuple[str, int]]]:
        if self.elf is None or not self.elf.has_dwarf_info():
            return [], []
        try:
            dwarf = self.elf.get_dwarf_info()
            entries: list[tuple[int, str, int]] = []
            for cu in dwarf.iter_CUs():
                lp = dwarf.line_program_for_CU(cu)
                if lp is None:
                    continue
                files = lp["file_entry"]
                base = 1 if lp.header["version"] < 5 else 0
                for e in lp.get_entries():
                    st = e.state
                    if st is None:
                        continue
                    if st.end_sequence:
                        entries.append((st.address, "", 0))
                        continue
                    idx = st.file - base
                    fname = files[idx].name.decode(errors="replace") if 0 <= idx < len(files) else "?"
                    entries.append((st.address, fname, st.line))
            entries.sort(key=lambda t: t[0])
            return [e[0] for e in entries], [(e[1], e[2]) for e in entries]
        except Exception:
            return [], []


@lru_cache(maxsize=1)
def _cxa_demangle():
    import ctypes
    import ctypes.util
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6")
    except OSError:
        return None
    fn = lib.__cxa_demangle
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    return fn


@lru_cache(maxsize=4096)
def demangle(name: str) -> str:
    """C++ names as people read them (libstdc++'s own demangler, when the host has it)."""
    fn = _cxa_demangle()
    if fn is None or not name.startswith("_Z"):
        return name
    import ctypes
    status = ctypes.c_int()
    ptr = fn(name.encode(), None, None, ctypes.byref(status))
    if status.value != 0 or not ptr:
        return name
    out = ctypes.string_at(ptr).decode(errors="replace")
    ctypes.CDLL(None).free(ctypes.c_void_p(ptr))
    return out


@lru_cache(maxsize=64)
def module_symbols(path: str) -> ModuleSymbols:
    return ModuleSymbols(path)


class Symbolizer:
    """Symbolizes guest addresses using the memory map's list of loaded modules."""

    def __init__(self, mem):
        self.mem = mem

    def frame(self, addr: int, is_return_address: bool = False) -> Frame:
        mod = self.mem.module_at(addr)
        if mod is None:
            return Frame(addr)
        syms = module_symbols(mod.path)
        rel = addr - mod.base
        # A return address points after the call (past the end of the caller when the callee
        # never returns): look up the call instruction instead.
        probe = rel - 1 if is_return_address else rel
        hit = syms.lookup(probe)
        if hit is not None:
            hit = (hit[0], hit[1] + (rel - probe), hit[2])
        line = syms.line(probe)
        file, lineno = (os.path.basename(line[0]), line[1]) if line else (None, None)
        if hit is None:
            return Frame(addr, None, 0, 0, mod.path, file, lineno)
        name, off, size = hit
        return Frame(addr, demangle(name), off, size, mod.path, file, lineno)

    def stack(self, addrs: list[int], first_is_pc: bool = True) -> list[Frame]:
        return [self.frame(a, is_return_address=not (first_is_pc and i == 0)) for i, a in enumerate(addrs)]
