"""Line tables and inlined subroutines from DWARF, read lazily: a report needs a few addresses,
so only the compile units (and, for inlines, the functions) that contain them are decoded, and
what is decoded is cached on disk by the file's build-id. A 23 MB libpython takes tens of
seconds to decode whole with pyelftools; one compile unit takes a fraction of a second, and a
cached one a few milliseconds.

Cache entries (JSON, in ~/.cache/emsan/symbols/<key>/): `units` (address ranges -> compile
unit offset), `lines-<cu>` (that unit's line table), `subs-<cu>` (its functions' address
ranges), `inl-<die>` (the inlined subroutines inside one function), `objects-<die>` (one
function's frame base and local variables, dwarf_locals.py). The DWARF is guest input:
anything malformed costs the lookup its answer, never the run."""
from __future__ import annotations

import bisect
import os

from emsan.cache import cache_dir, load_json, store_json
from emsan.lazyclass import dataclass
from emsan.report.dwarf_locals import objects_at
from emsan.report.elfsections import open_sections

CACHE_VERSION = "dwarf-1"
_ADDR_FORMS = ("DW_FORM_addr", "DW_FORM_addrx", "DW_FORM_addrx1", "DW_FORM_addrx2", "DW_FORM_addrx3",
               "DW_FORM_addrx4", "DW_FORM_GNU_addr_index")
_SCOPES = ("DW_TAG_namespace", "DW_TAG_module")      # where functions nest below a unit


@dataclass(frozen=True)
class Inline:
    """One DW_TAG_inlined_subroutine: the inlined function and where it was inlined."""
    function: str
    call_file: str | None
    call_line: int | None


class DwarfIndex:
    """Address -> source line and inline chain for one ELF file with DWARF."""

    def __init__(self, path: str, key: str, demangle=lambda s: s):
        self.path = path
        self.demangle = demangle
        self._dir = cache_dir("symbols", CACHE_VERSION, key)
        self._dwarf = None
        self._file = None
        self._units: tuple[list[int], list[tuple[int, int, int]]] | None = None
        self._lines: dict[int, tuple[list[int], list[tuple[str, int]]]] = {}
        self._subs: dict[int, tuple[list[int], list[tuple[int, int, int]]]] = {}
        self._inlines: dict[int, list[tuple[int, int, int, str, str | None, int | None]]] = {}
        self._names: dict[int, str] = {}
        self._locals: dict[int, dict | None] = {}

    # --- queries -------------------------------------------------------------------------------
    def line(self, rel: int) -> tuple[str, int] | None:
        cu = self._unit_at(rel)
        if cu is None:
            return None
        addrs, rows = self._lines_of(cu)
        i = bisect.bisect_right(addrs, rel) - 1
        return rows[i] if i >= 0 and rows[i][1] else None

    def inlined(self, rel: int) -> tuple[Inline, ...]:
        """The inlined subroutines whose code contains `rel`, innermost first."""
        cu = self._unit_at(rel)
        if cu is None:
            return ()
        starts, subs = self._subs_of(cu)
        i = bisect.bisect_right(starts, rel) - 1
        for j in range(i, max(i - 8, -1), -1):      # nested functions: an earlier, enclosing range
            if subs[j][0] <= rel < subs[j][1]:
                break
        else:
            return ()
        chain = [iv for iv in self._inlines_of(subs[j][2]) if iv[0] <= rel < iv[1]]
        chain.sort(key=lambda iv: -iv[2])
        return tuple(Inline(iv[3], iv[4], iv[5]) for iv in chain)

    def frame_objects(self, rel: int) -> tuple[int | None, int | None, list[tuple[int, int, int, str]]] | None:
        """The function containing `rel`: its first instruction, its frame base
        (dwarf_locals.frame_base: -1 the CFA, a register, None: one emsan does not follow) and
        the objects in place at `rel` (dwarf_locals.objects_at); None when DWARF has no such
        function."""
        cu = self._unit_at(rel)
        if cu is None:
            return None
        starts, subs = self._subs_of(cu)
        i = bisect.bisect_right(starts, rel) - 1
        for j in range(i, max(i - 8, -1), -1):
            if subs[j][0] <= rel < subs[j][1]:
                break
        else:
            return None
        die = subs[j][2]
        if die not in self._locals:
            self._locals[die] = self._cached(f"objects-{die}", lambda: self._make_locals(die)) or None
        locs = self._locals[die]
        if not locs or "base" not in locs:
            return None
        return locs["entry"], locs["base"], objects_at(locs, rel)

    # --- the three lazily built tables -------------------------------------------------------------
    def _unit_at(self, rel: int) -> int | None:
        if self._units is None:
            units = self._cached("units", self._make_units)
            units.sort()
            self._units = ([u[0] for u in units], [tuple(u) for u in units])
        starts, units = self._units
        i = bisect.bisect_right(starts, rel) - 1
        # Units do not overlap; a gap between them belongs to none.
        return units[i][2] if i >= 0 and rel < units[i][1] else None

    def _lines_of(self, cu: int) -> tuple[list[int], list[tuple[str, int]]]:
        if cu not in self._lines:
            t = self._cached(f"lines-{cu}", lambda: self._make_lines(cu))
            files, flat = t["files"], t["rows"]
            addrs = flat[0::3]
            rows = [(files[f] if f >= 0 else "", ln) for f, ln in zip(flat[1::3], flat[2::3])]
            self._lines[cu] = (addrs, rows)
        return self._lines[cu]

    def _subs_of(self, cu: int) -> tuple[list[int], list[tuple[int, int, int]]]:
        if cu not in self._subs:
            subs = sorted(tuple(s) for s in self._cached(f"subs-{cu}", lambda: self._make_subs(cu)))
            self._subs[cu] = ([s[0] for s in subs], subs)
        return self._subs[cu]

    def _inlines_of(self, die: int):
        if die not in self._inlines:
            self._inlines[die] = [tuple(iv) for iv in self._cached(f"inl-{die}", lambda: self._make_inlines(die))]
        return self._inlines[die]

    def _cached(self, name: str, make):
        value = load_json(self._dir, name)
        if value is None:
            try:
                value = make()
            except Exception:           # malformed or unsupported DWARF: no answer from it
                return {"files": [], "rows": []} if name.startswith("lines-") else []
            store_json(self._dir, name, value)
        return value

    # --- decoding (pyelftools) ----------------------------------------------------------------------
    def _open(self):
        if self._dwarf is None:
            self._file = open(self.path, "rb")
            elf = open_sections(self._file, self.path)
            if elf is None:
                raise ValueError(f"{self.path}: no usable section table")
            self._dwarf = elf.get_dwarf_info()
        return self._dwarf

    def _make_units(self) -> list[list[int]]:
        """Unit address ranges from .debug_aranges, and from the unit's own DIE for the units
        it leaves out (parsing every unit's DIE costs seconds on a big library)."""
        dwarf = self._open()
        out = []
        covered = set()
        aranges = dwarf.get_aranges()
        for e in aranges.entries if aranges is not None else ():
            if e.length:
                out.append([e.begin_addr, e.begin_addr + e.length, e.info_offset])
                covered.add(e.info_offset)
        for cu in dwarf.iter_CUs():
            if cu.cu_offset in covered:
                continue
            try:
                top = cu.get_top_DIE()
                low = top.attributes.get("DW_AT_low_pc")
                for lo, hi in die_ranges(dwarf, cu, top, low.value if low is not None else 0):
                    if hi > lo:
                        out.append([lo, hi, cu.cu_offset])
            except Exception:
                continue                # one bad unit loses its own lines only
        return out

    def _make_lines(self, cu_off: int) -> dict:
        dwarf = self._open()
        lp = dwarf.line_program_for_CU(dwarf.get_CU_at(cu_off))
        if lp is None:
            return {"files": [], "rows": []}
        entries = lp["file_entry"]
        base = 1 if lp.header["version"] < 5 else 0
        files: list[str] = []
        index: dict[int, int] = {}
        rows: list[tuple[int, int, int, int]] = []
        for e in lp.get_entries():
            st = e.state
            if st is None:
                continue
            if st.end_sequence:
                rows.append((st.address, 0, -1, 0))
                continue
            f = index.get(st.file)
            if f is None:
                i = st.file - base
                name = entries[i].name.decode(errors="replace") if 0 <= i < len(entries) else "?"
                f = index[st.file] = len(files)
                files.append(os.path.basename(name))
            rows.append((st.address, 1, f, st.line))
        rows.sort(key=lambda r: (r[0], r[1]))     # a sequence's end before the next one's start
        flat: list[int] = []
        for addr, _order, f, ln in rows:
            flat += (addr, f, ln)
        return {"files": files, "rows": flat}

    def _make_subs(self, cu_off: int) -> list[list[int]]:
        dwarf = self._open()
        cu = dwarf.get_CU_at(cu_off)
        top = cu.get_top_DIE()
        low = top.attributes.get("DW_AT_low_pc")
        base = low.value if low is not None else 0
        out: list[list[int]] = []
        scopes = [top]
        while scopes:
            for die in scopes.pop().iter_children():
                if die.tag == "DW_TAG_subprogram":
                    for lo, hi in die_ranges(dwarf, cu, die, base):
                        if hi > lo:
                            out.append([lo, hi, die.offset])
                elif die.tag in _SCOPES and die.has_children:
                    scopes.append(die)
        return out

    def _make_inlines(self, die_off: int) -> list[list]:
        """DW_TAG_inlined_subroutine DIEs below one function, with their depth of nesting."""
        dwarf = self._open()
        cu = dwarf.get_CU_containing(die_off)
        top = cu.get_top_DIE()
        low = top.attributes.get("DW_AT_low_pc")
        base = low.value if low is not None else 0
        lp = dwarf.line_program_for_CU(cu)
        files = lp["file_entry"] if lp is not None else []
        fbase = 1 if (lp is None or lp.header["version"] < 5) else 0

        def file_name(idx: int) -> str | None:
            i = idx - fbase
            return os.path.basename(files[i].name.decode(errors="replace")) if 0 <= i < len(files) else None

        out: list[list] = []
        stack = [(dwarf.get_DIE_from_refaddr(die_off, cu), 0)]
        while stack:
            die, depth = stack.pop()
            for child in die.iter_children():
                if child.tag == "DW_TAG_inlined_subroutine":
                    try:
                        at = child.attributes
                        cf, cl = at.get("DW_AT_call_file"), at.get("DW_AT_call_line")
                        name = self._origin_name(child)
                        for lo, hi in die_ranges(dwarf, cu, child, base):
                            if hi > lo:
                                out.append([lo, hi, depth + 1, name, file_name(cf.value) if cf is not None else None,
                                            cl.value if cl is not None else None])
                    except Exception:
                        pass
                    stack.append((child, depth + 1))
                elif child.has_children:
                    stack.append((child, depth))
        return out

    def _make_locals(self, die_off: int) -> dict:
        from emsan.report.dwarf_locals import function_locals     # pyelftools: only to decode
        dwarf = self._open()
        cu = dwarf.get_CU_containing(die_off)
        low = cu.get_top_DIE().attributes.get("DW_AT_low_pc")
        return function_locals(dwarf, cu, dwarf.get_DIE_from_refaddr(die_off, cu), low.value if low is not None else 0,
                               die_ranges)

    def _origin_name(self, die) -> str:
        """DW_AT_abstract_origin (then DW_AT_specification) to the subprogram's name, demangled
        when there is a linkage name."""
        key = die.offset
        if key in self._names:
            return self._names[key]
        d, name = die, None
        for _ in range(8):
            at = d.attributes
            for a in ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name"):
                if a in at:
                    name = self.demangle(at[a].value.decode(errors="replace"))
                    break
            if name is None and "DW_AT_name" in at:
                name = at["DW_AT_name"].value.decode(errors="replace")
            if name is not None:
                break
            nxt = next((a for a in ("DW_AT_abstract_origin", "DW_AT_specification") if a in at), None)
            if nxt is None:
                break
            d = d.get_DIE_from_attribute(nxt)
        self._names[key] = name = name or "??"
        return name


def die_ranges(dwarf, cu, die, cu_base: int) -> list[tuple[int, int]]:
    """The address ranges a DIE covers (DW_AT_low_pc/high_pc, or DW_AT_ranges)."""
    at = die.attributes
    if "DW_AT_low_pc" in at and "DW_AT_ranges" not in at:
        lo = at["DW_AT_low_pc"].value
        hi_at = at.get("DW_AT_high_pc")
        if hi_at is None:
            return [(lo, lo + 1)]
        # DWARF 4+: a constant-class high_pc is a length, an address-class one is the end.
        return [(lo, hi_at.value if hi_at.form in _ADDR_FORMS else lo + hi_at.value)]
    if "DW_AT_ranges" in at:
        from elftools.dwarf.ranges import BaseAddressEntry, RangeEntry
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
                out.append((e.begin_offset, e.end_offset) if e.is_absolute
                           else (base + e.begin_offset, base + e.end_offset))
        return out
    return []
