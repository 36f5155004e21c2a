"""Address -> function+offset/size (and file:line when DWARF has it), cached per module."""
from __future__ import annotations

import bisect
import dataclasses
import os
from dataclasses import dataclass
from functools import lru_cache

from elftools.dwarf.ranges import BaseAddressEntry, RangeEntry
from emsan.report.elfsections import open_sections


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

    def __str__(self) -> str:
        if self.inlined:
            # As the kernel's decode_stacktrace.sh / syzbot print them: an inlined function has
            # no symbol of its own, so no +offset/size.
            s = self.function or "??"
            if self.file:
                s += f" {self.file}:{self.line}"
            return s + " (inlined)"
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
                "size": self.size, "module": self.module, "file": self.file, "line": self.line,
                "inlined": self.inlined}


@dataclass(frozen=True)
class Inline:
    """One DW_TAG_inlined_subroutine: the inlined function and where it was inlined."""
    function: str
    call_file: str | None
    call_line: int | None


class ModuleSymbols:
    """Symbols and line table of one ELF file, addresses relative to its link address."""

    def __init__(self, path: str):
        self.path = path
        self.starts: list[int] = []
        self.syms: list[tuple[int, int, str]] = []
        self._lines: tuple[list[int], list[tuple[str, int]]] | None = None
        self._inlines: tuple[list[int], list[tuple[Inline, ...]]] | None = None
        self._dwarf_ok = True
        try:
            self._f = open(path, "rb")
            self.elf = open_sections(self._f, path)
        except Exception:
            self.elf = None
        if self.elf is None:                # no readable section table: addresses, no names
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


    def inlined(self, rel: int) -> tuple[Inline, ...]:
        """The inlined subroutines whose code contains `rel`, innermost first (empty when DWARF
        has none, or is missing or unreadable)."""
        if self._inlines is None:
            try:
                self._inlines = self._load_inlines()
            except Exception:
                self._inlines = ([], [])
        starts, chains = self._inlines
        i = bisect.bisect_right(starts, rel) - 1
        return chains[i] if i >= 0 else ()

    def _load_inlines(self) -> tuple[list[int], list[tuple[Inline, ...]]]:
        """DW_TAG_inlined_subroutine DIEs as elementary address intervals, each with its chain of
        nested inlines (innermost first)."""
        if self.elf is None or not self.elf.has_dwarf_info():
            return [], []
        dwarf = self.elf.get_dwarf_info()
        intervals: list[tuple[int, int, int, Inline]] = []     # lo, hi, depth, what
        for cu in dwarf.iter_CUs():
            try:
                self._cu_inlines(dwarf, cu, intervals)
            except Exception:
                continue                    # one bad CU loses its own inline info only
        if not intervals:
            return [], []
        # Sweep the interval boundaries: between two consecutive boundaries the set of
        # enclosing inlines is constant.
        events: dict[int, list[tuple[int, int, int, Inline]]] = {}
        for iv in intervals:
            events.setdefault(iv[0], [])
            events.setdefault(iv[1], [])
        bounds = sorted(events)
        by_lo: dict[int, list[tuple[int, int, int, Inline]]] = {}
        for iv in intervals:
            by_lo.setdefault(iv[0], []).append(iv)
        active: list[tuple[int, int, int, Inline]] = []
        starts: list[int] = []
        chains: list[tuple[Inline, ...]] = []
        for b in bounds:
            active = [iv for iv in active if iv[1] > b] + by_lo.get(b, [])
            chain = tuple(iv[3] for iv in sorted(active, key=lambda iv: -iv[2]))
            if chains and chains[-1] == chain:
                continue
            starts.append(b)
            chains.append(chain)
        return starts, chains

    def _cu_inlines(self, dwarf, cu, out: list) -> None:
        top = cu.get_top_DIE()
        lp = dwarf.line_program_for_CU(cu)
        files = lp["file_entry"] if lp is not None else []
        base = 1 if (lp is None or lp.header["version"] < 5) else 0
        cu_low = top.attributes.get("DW_AT_low_pc")
        cu_base = cu_low.value if cu_low is not None else 0
        names: dict[int, str] = {}

        def file_name(idx) -> str | None:
            i = idx - base
            if 0 <= i < len(files):
                return os.path.basename(files[i].name.decode(errors="replace"))
            return None

        # Depth-first over the CU's DIE tree, counting inlined_subroutine ancestors.
        stack = [(top, 0)]
        while stack:
            die, depth = stack.pop()
            for child in die.iter_children():
                if child.tag == "DW_TAG_inlined_subroutine":
                    try:
                        name = self._origin_name(child, names)
                        at = child.attributes
                        cf = at.get("DW_AT_call_file")
                        cl = at.get("DW_AT_call_line")
                        what = Inline(name, file_name(cf.value) if cf is not None else None,
                                      cl.value if cl is not None else None)
                        for lo, hi in self._die_ranges(dwarf, cu, child, cu_base):
                            if hi > lo:
                                out.append((lo, hi, depth + 1, what))
                    except Exception:
                        pass
                    stack.append((child, depth + 1))
                elif child.has_children:
                    stack.append((child, depth))

    @staticmethod
    def _origin_name(die, cache: dict[int, str]) -> str:
        """DW_AT_abstract_origin (then DW_AT_specification) to the subprogram's name, demangled
        when there is a linkage name."""
        key = die.offset
        if key in cache:
            return cache[key]
        d = die
        name = None
        for _ in range(8):
            at = d.attributes
            for a in ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name"):
                if a in at:
                    name = demangle(at[a].value.decode(errors="replace"))
                    break
            if name is None and "DW_AT_name" in at:
                name = at["DW_AT_name"].value.decode(errors="replace")
            if name is not None:
                break
            nxt = next((a for a in ("DW_AT_abstract_origin", "DW_AT_specification") if a in at), None)
            if nxt is None:
                break
            d = d.get_DIE_from_attribute(nxt)
        name = name or "??"
        cache[key] = name
        return name

    @staticmethod
    def _die_ranges(dwarf, cu, die, cu_base: int) -> list[tuple[int, int]]:
        at = die.attributes
        if "DW_AT_low_pc" in at:
            lo = at["DW_AT_low_pc"].value
            hi_at = at.get("DW_AT_high_pc")
            if hi_at is None:
                return [(lo, lo + 1)]
            # DWARF 4+: a constant-class high_pc is a length, an address-class one is the end.
            hi = hi_at.value if hi_at.form in ("DW_FORM_addr", "DW_FORM_addrx", "DW_FORM_addrx1",
                                               "DW_FORM_addrx2", "DW_FORM_addrx3", "DW_FORM_addrx4",
                                               "DW_FORM_GNU_addr_index") else lo + hi_at.value
            return [(lo, hi)]
        if "DW_AT_ranges" in at:
            rl = dwarf.range_lists()
            if rl is None:
                return []
            # pyelftools resolves DW_FORM_rnglistx to an offset into .debug_rnglists.
            entries = rl.get_range_list_at_offset(at["DW_AT_ranges"].value, cu=cu)
            base, out = cu_base, []
            for e in entries:
                if isinstance(e, BaseAddressEntry):
                    base = e.base_address
                elif isinstance(e, RangeEntry):
                    if e.is_absolute:
                        out.append((e.begin_offset, e.end_offset))
                    else:
                        out.append((base + e.begin_offset, base + e.end_offset))
            return out
        return []


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
            chain = module_symbols(mod.path).inlined(probe)
        except Exception:
            chain = ()
        if not chain:
            return [real]
        out = []
        file, line = real.file, real.line           # the line table's row: innermost location
        for inl in chain:
            out.append(Frame(addr, inl.function, 0, 0, mod.path, file, line, inlined=True))
            file, line = inl.call_file, inl.call_line
        out.append(dataclasses.replace(real, file=file, line=line))
        return out

    def stack(self, addrs: list[int], first_is_pc: bool = True) -> list[Frame]:
        """Symbolized frames, innermost first, with inlined frames expanded."""
        out: list[Frame] = []
        for i, a in enumerate(addrs):
            out += self.frames(a, is_return_address=not (first_is_pc and i == 0))
        return out
