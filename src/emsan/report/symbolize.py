"""Address -> function+offset/size (and file:line when DWARF has it), cached per module.

Symbols come from the module's .symtab/.dynsym and from its separate debug file when one is
installed (report/debuginfo.py); lines and inlined frames from DWARF, decoded lazily per compile
unit and cached on disk (report/dwarf.py). A frame with no symbol is named by its module and the
offset addr2line takes (`libc.so.6+0x175587`)."""
from __future__ import annotations

import bisect
import dataclasses
import os
from functools import cached_property, lru_cache

from typing import TYPE_CHECKING

from emsan.lazyclass import dataclass

if TYPE_CHECKING:
    from emsan.report.dwarf import DwarfIndex, Inline

__all__ = ["Frame", "ModuleSymbols", "Symbolizer", "demangle", "module_symbols"]


@dataclass(frozen=True)
class Frame:
    addr: int
    function: str | None = None
    offset: int = 0
    size: int = 0
    module: str = ""
    file: str | None = None
    line: int | None = None
    inlined: bool = False       # code of `function` inlined into the next frame (same address)
    module_offset: int | None = None    # addr - the module's load bias: what addr2line -e MODULE takes

    def __str__(self) -> str:
        if self.inlined:
            # As the kernel's decode_stacktrace.sh / syzbot print them: an inlined function has
            # no symbol of its own, so no +offset/size.
            s = self.function or "??"
            if self.file:
                s += f" {self.file}:{self.line}"
            return s + " (inlined)"
        if self.function is None:
            if self.module and self.module_offset is not None:
                s = f"{os.path.basename(self.module)}+{self.module_offset:#x}"
            else:
                s = f"{self.addr:#x}"
        else:
            s = f"{self.function}+{self.offset:#x}/{self.size:#x}"
        if self.file:
            s += f" {self.file}:{self.line}"
        return s

    def to_json(self) -> dict:
        return {"addr": f"{self.addr:#x}", "function": self.function, "offset": self.offset,
                "size": self.size, "module": self.module,
                "module_offset": None if self.module_offset is None else f"{self.module_offset:#x}",
                "file": self.file, "line": self.line, "inlined": self.inlined}


class ModuleSymbols:
    """Symbols and DWARF of one ELF file (and its separate debug file), addresses relative to
    its link address."""

    def __init__(self, path: str, roots: tuple[str, ...] = ("/",)):
        # pyelftools and the DWARF reader only once something is symbolized: a clean run never is
        from emsan.cache import file_key
        from emsan.report.debuginfo import elf_facts, find_debug_file
        from emsan.report.dwarf import DwarfIndex

        self.path = path
        self.debug_path: str | None = None
        self.dwarf: DwarfIndex | None = None
        bid, has_dwarf = None, False
        try:
            facts = elf_facts(path)
            if facts is not None:           # no readable section table: addresses, no names
                bid, has_dwarf = facts["build_id"], facts["debug_info"]
                self.debug_path = find_debug_file(path, facts, roots)
        except Exception:
            bid, has_dwarf, self.debug_path = None, False, None
        dwarf_path = path if has_dwarf else None
        if self.debug_path is not None and dwarf_path is None:
            debug_facts = elf_facts(self.debug_path)
            if debug_facts is not None and debug_facts["debug_info"]:
                dwarf_path = self.debug_path
        if dwarf_path is not None:
            self.dwarf = DwarfIndex(dwarf_path, file_key(path, bid), demangle)

    @cached_property
    def _table(self) -> tuple[list[tuple[int, int, str]], list[int]]:
        """(link address, size, name) of every function, sorted, and their addresses: read on the
        first lookup (the stack-object checks need only the DWARF)."""
        from emsan.sanitizer.entrypoints import function_symbols
        found = list(function_symbols(self.path))
        if self.debug_path is not None:
            found += function_symbols(self.debug_path)
        seen: dict[int, tuple[int, int, str]] = {}
        for addr, size, _kind, name in found:
            prev = seen.get(addr)
            # Among aliases prefer the public name (malloc over __libc_malloc), then the sized one.
            if prev is None or (prev[2].startswith("_") and not name.startswith("_")) or (not prev[1] and size):
                seen[addr] = (addr, size, name)
        syms = sorted(seen.values())
        return syms, [s[0] for s in syms]

    @property
    def syms(self) -> list[tuple[int, int, str]]:
        return self._table[0]

    @property
    def starts(self) -> list[int]:
        return self._table[1]

    def address_of(self, name: str) -> int | None:
        """The link address of function `name` (emsan fuzz's --entry and --persistent)."""
        for addr, _size, n in self.syms:
            if n == name:
                return addr
        return None

    def lookup(self, rel: int) -> tuple[str, int, int] | None:
        i = bisect.bisect_right(self.starts, rel) - 1
        if i < 0:
            return None
        addr, size, name = self.syms[i]
        if size and rel >= addr + size:
            return None
        return name, rel - addr, size

    def line(self, rel: int) -> tuple[str, int] | None:
        return self.dwarf.line(rel) if self.dwarf is not None else None

    def inlined(self, rel: int) -> tuple[Inline, ...]:
        """The inlined subroutines whose code contains `rel`, innermost first (empty when DWARF
        has none, or is missing or unreadable)."""
        return self.dwarf.inlined(rel) if self.dwarf is not None else ()


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
def module_symbols(path: str, roots: tuple[str, ...] = ("/",)) -> ModuleSymbols:
    return ModuleSymbols(path, roots)


class Symbolizer:
    """Symbolizes guest addresses using the memory map's list of loaded modules."""

    def __init__(self, mem, sysroot: str | None = None):
        self.mem = mem
        # Where separate debug files are looked for: the guest's root first.
        self.roots = (sysroot, "/") if sysroot else ("/",)

    def frame(self, addr: int, is_return_address: bool = False) -> Frame:
        mod = self.mem.module_at(addr)
        if mod is None:
            return Frame(addr)
        syms = module_symbols(mod.path, self.roots)
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
            return Frame(addr, None, 0, 0, mod.path, file, lineno, module_offset=rel)
        name, off, size = hit
        return Frame(addr, demangle(name), off, size, mod.path, file, lineno, module_offset=rel)

    def frames(self, addr: int, is_return_address: bool = False) -> list[Frame]:
        """frame(), preceded by the functions inlined at that address, innermost first (as
        addr2line -i gives them): each inlined frame has the source line inside that function,
        and each outer frame the line of its call to the inner one (DW_AT_call_line)."""
        real = self.frame(addr, is_return_address)
        mod = self.mem.module_at(addr)
        if mod is None:
            return [real]
        rel = addr - mod.base
        probe = rel - 1 if is_return_address else rel
        try:
            chain = module_symbols(mod.path, self.roots).inlined(probe)
        except Exception:
            chain = ()
        if not chain:
            return [real]
        out = []
        file, line = real.file, real.line           # the line table's row: innermost location
        for inl in chain:
            out.append(Frame(addr, inl.function, 0, 0, mod.path, file, line, inlined=True, module_offset=rel))
            file, line = inl.call_file, inl.call_line
        out.append(dataclasses.replace(real, file=file, line=line))
        return out

    def stack(self, addrs: list[int], first_is_pc: bool = True) -> list[Frame]:
        """Symbolized frames, innermost first, with inlined frames expanded."""
        out: list[Frame] = []
        for i, a in enumerate(addrs):
            out += self.frames(a, is_return_address=not (first_is_pc and i == 0))
        return out
