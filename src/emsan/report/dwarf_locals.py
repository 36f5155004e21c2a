"""A function's local variables and parameters from DWARF, as places in its frame: those whose
DW_AT_location is DW_OP_fbreg N (for the whole function, a lexical block, an inlined subroutine,
or one entry of a location list), so each is [frame base + N, frame base + N + size). The frame
base is DW_OP_call_frame_cfa (what GCC emits on x86-64 and arm64) or a register (clang's: the
frame pointer, or the stack pointer), which the caller relates to the CFA through the CFI.
Anything else -- another frame base, a location in a register or composed of pieces, a type
whose size is not a constant (a VLA) -- is left out: no object, so no report about it."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:       # pyelftools is imported only to decode (objects_at reads a cached table)
    from elftools.dwarf.dwarf_expr import DWARFExprParser

_WRAPPERS = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type",
             "DW_TAG_atomic_type")
_VARS = ("DW_TAG_variable", "DW_TAG_formal_parameter")
_SCOPES = ("DW_TAG_lexical_block", "DW_TAG_inlined_subroutine")
_LOCLIST_FORMS = ("DW_FORM_sec_offset", "DW_FORM_data4", "DW_FORM_data8", "DW_FORM_loclistx")
FB = -2                 # a place relative to the frame base (DW_OP_fbreg), not to a register


def _origin(die):
    """The DIE holding a variable's name and type: itself, or its abstract origin."""
    for _ in range(4):
        at = die.attributes
        if "DW_AT_name" in at or "DW_AT_type" in at or "DW_AT_abstract_origin" not in at:
            return die
        die = die.get_DIE_from_attribute("DW_AT_abstract_origin")
    return die


def type_size(die, depth: int = 0) -> int | None:
    """Bytes of a type DIE, None if not a constant (a VLA, an incomplete type)."""
    if die is None or depth > 16:
        return None
    at = die.attributes
    if die.tag in _WRAPPERS:
        return type_size(die.get_DIE_from_attribute("DW_AT_type"), depth + 1) if "DW_AT_type" in at else None
    if die.tag == "DW_TAG_array_type":
        elem = type_size(die.get_DIE_from_attribute("DW_AT_type"), depth + 1) if "DW_AT_type" in at else None
        if "DW_AT_byte_size" in at and isinstance(at["DW_AT_byte_size"].value, int):
            return at["DW_AT_byte_size"].value
        if elem is None:
            return None
        n = 1
        for sub in die.iter_children():
            if sub.tag != "DW_TAG_subrange_type":
                continue
            sa = sub.attributes
            if "DW_AT_count" in sa and sa["DW_AT_count"].form.startswith(("DW_FORM_data", "DW_FORM_udata", "DW_FORM_sdata", "DW_FORM_implicit")):
                n *= sa["DW_AT_count"].value
            elif "DW_AT_upper_bound" in sa and sa["DW_AT_upper_bound"].form.startswith(("DW_FORM_data", "DW_FORM_udata", "DW_FORM_sdata")):
                lower = sa["DW_AT_lower_bound"].value if "DW_AT_lower_bound" in sa else 0
                n *= sa["DW_AT_upper_bound"].value - lower + 1
            else:
                return None          # a VLA, or an array of unknown bound
        return elem * n
    size = at.get("DW_AT_byte_size")
    if size is None or not isinstance(size.value, int):
        return None
    return size.value


def _fbreg(parser: DWARFExprParser, expr) -> tuple[int, int] | None:
    """(base, N) if the expression is exactly DW_OP_fbreg N (base FB) or DW_OP_bregR N (base R)."""
    try:
        ops = parser.parse_expr(expr)
    except Exception:
        return None
    if len(ops) != 1:
        return None
    name = ops[0].op_name
    if name == "DW_OP_fbreg":
        return FB, ops[0].args[0]
    if name.startswith("DW_OP_breg") and name[10:].isdigit():
        return int(name[10:]), ops[0].args[0]
    return None


def frame_base(parser: DWARFExprParser, die) -> int | None:
    """-1 for DW_OP_call_frame_cfa, the DWARF register number for DW_OP_regN, else None."""
    fb = die.attributes.get("DW_AT_frame_base")
    if fb is None or fb.form not in ("DW_FORM_exprloc", "DW_FORM_block1", "DW_FORM_block"):
        return None
    try:
        ops = parser.parse_expr(fb.value)
    except Exception:
        return None
    if len(ops) != 1:
        return None
    if ops[0].op_name == "DW_OP_call_frame_cfa":
        return -1
    if ops[0].op_name.startswith("DW_OP_reg") and ops[0].op_name[9:].isdigit():
        return int(ops[0].op_name[9:])
    if ops[0].op_name == "DW_OP_regx":
        return ops[0].args[0]
    return None


def _locations(dwarf, cu, die, parser, cu_base: int) -> list[list[int | None]] | None:
    """[lo, hi, base, N] places of a variable (lo = hi = None: wherever it is in scope; base: FB
    or a register), or None."""
    attr = die.attributes.get("DW_AT_location")
    if attr is None:
        return None
    if attr.form in ("DW_FORM_exprloc", "DW_FORM_block1", "DW_FORM_block"):
        off = _fbreg(parser, attr.value)
        return [[None, None, *off]] if off is not None else None
    if attr.form not in _LOCLIST_FORMS:
        return None
    lists = dwarf.location_lists()
    if lists is None:
        return None
    from elftools.dwarf.locationlists import BaseAddressEntry, LocationEntry, LocationExpr, LocationParser
    loc = LocationParser(lists).parse_from_attribute(attr, cu["version"], die)
    if isinstance(loc, LocationExpr):
        off = _fbreg(parser, loc.loc_expr)
        return [[None, None, *off]] if off is not None else None
    out: list[list[int | None]] = []
    base = cu_base
    for entry in loc:
        if isinstance(entry, BaseAddressEntry):
            base = entry.base_address
        elif isinstance(entry, LocationEntry):
            off = _fbreg(parser, entry.loc_expr)
            if off is None:
                continue
            lo, hi = (entry.begin_offset, entry.end_offset) if getattr(entry, "is_absolute", False) else \
                (base + entry.begin_offset, base + entry.end_offset)
            out.append([lo, hi, *off])
    return out or None


def function_locals(dwarf, cu, func, cu_base: int, die_ranges) -> dict:
    """The objects of one DW_TAG_subprogram: {"entry": its first instruction or None, "base":
    its frame base (frame_base()), "vars": [[name, size, scopes, places]]}: scopes the pc
    ranges of the innermost lexical block or inlined subroutine holding the variable (None:
    the whole function), places as _locations()."""
    from elftools.dwarf.dwarf_expr import DWARFExprParser
    parser = DWARFExprParser(cu.structs)
    at = func.attributes
    entry = at["DW_AT_low_pc"].value if "DW_AT_low_pc" in at else \
        at["DW_AT_entry_pc"].value if "DW_AT_entry_pc" in at else None
    out: dict = {"entry": entry, "base": frame_base(parser, func), "vars": []}
    stack: list[tuple[object, list | None]] = [(func, None)]
    while stack:
        die, scopes = stack.pop()
        for child in die.iter_children():
            if child.tag in _VARS:
                try:
                    places = _locations(dwarf, cu, child, parser, cu_base)
                    if places is None:
                        continue
                    named = _origin(child)
                    na = named.attributes
                    name = na["DW_AT_name"].value.decode(errors="replace") if "DW_AT_name" in na else "?"
                    size = type_size(named.get_DIE_from_attribute("DW_AT_type")) if "DW_AT_type" in na else None
                    if size:
                        out["vars"].append([name, size, scopes, places])
                except Exception:
                    continue             # one malformed variable: no object for it
            elif child.tag in _SCOPES and child.has_children:
                try:
                    rng = die_ranges(dwarf, cu, child, cu_base)
                except Exception:
                    continue
                stack.append((child, [list(r) for r in rng] if rng else scopes))
    return out


def objects_at(locs: dict, rel: int) -> list[tuple[int, int, int, str]]:
    """The objects function_locals() found that are in place at `rel`: (base, lo, hi, name), lo
    and hi relative to base (FB, the frame base, or a register's value at `rel`)."""
    out = []
    for name, size, scopes, places in locs["vars"]:
        if scopes is not None and not any(lo <= rel < hi for lo, hi in scopes):
            continue
        for lo, hi, base, off in places:
            if lo is None or lo <= rel < hi:
                out.append((base, off, off + size, name))
                break
    return out
