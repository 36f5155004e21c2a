"""Stack collectors for allocation and free stacks (--stacks), and the per-module tables they use.

fp    the frame-pointer chain, read at each allocation and free (depot.c);
cfi   unwinding from .eh_frame/.debug_frame rows (native/unwind.c), for code without frame pointers;
scs   a shadow call stack emsan keeps in native code while the guest runs (native/scs.c): a block
      hook and a per-module table of call/ret/indirect-jump block ends from a linear sweep;
x18   the arm64 guest's own shadow call stack (-fsanitize=shadow-call-stack), read at [x18];
none  no allocation or free stacks (reports still show the access's call trace).

Tables are made once per module file and cached on disk (~/.cache/emsan, or $EMSAN_CACHE_DIR),
keyed by the file's identity (emsan.cache.file_identity: device, inode, size, modification and
change times).
"""
from __future__ import annotations

import struct
import sys
from typing import TYPE_CHECKING

from emsan.report.elfsections import open_sections

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

from emsan.errors import EmsanError
from emsan.sanitizer.entrypoints import STT_FUNC, function_symbols

COLLECTORS = ("auto", "fp", "cfi", "scs", "x18", "none")
# Block-end kinds of the shadow call stack (native/scs.c), at the address after the instruction; K_FUNC
# at a function's start (symbols and direct call targets); K_LOCAL at an address only a conditional
# branch reaches (its target or fall-through, a rep-prefixed instruction repeating itself): a block
# starting there follows no call, return or indirect jump, and its start needs no hook. Beside the
# kinds, each direct call's (return address, target) as link-address offsets: calls to a function
# emsan stands in for need no hook at either end (native/scs.c).
K_CALL, K_RET, K_JMP, K_FUNC, K_LOCAL = 1, 2, 4, 8, 32
CALL = struct.Struct("<II")
ROW = struct.Struct("<QiiiB3x")     # emsan_cfi_row


def _cached(path: str, what: str, make) -> bytes:
    """make() -> bytes, cached on disk per (file, what, this module's code): emsan.cache.per_file_bytes."""
    from emsan.cache import per_file_bytes
    return per_file_bytes(path, what, __file__, make)


def _exec_sections(elf: ELFFile) -> list:
    return [s for s in elf.iter_sections()
            if s["sh_flags"] & 4 and s["sh_type"] == "SHT_PROGBITS" and s["sh_size"]]


def exec_range(elf: ELFFile) -> tuple[int, int] | None:
    secs = _exec_sections(elf)
    if not secs:
        return None
    return min(s["sh_addr"] for s in secs), max(s["sh_addr"] + s["sh_size"] for s in secs)


# --- scs: block-end kinds -------------------------------------------------------------------------
def _kinds(path: str, arm64: bool) -> bytes:
    """kinds[i] for link address lo + i, then the direct calls (CALL: return address - lo, target - lo;
    sorted by target). Header: lo, hi, the number of calls, as three u64."""
    with open(path, "rb") as f:
        elf = open_sections(f, path)
        rng = exec_range(elf) if elf is not None else None
        if rng is None:
            return struct.pack("<QQQ", 0, 0, 0)
        lo, hi = rng
        kinds = bytearray(hi - lo + 1)
        calls: list[tuple[int, int]] = []
        for sec in _exec_sections(elf):
            data, addr = sec.data(), sec["sh_addr"]
            (_sweep_arm64 if arm64 else _sweep_x86)(data, addr - lo, kinds, calls)
        for secname in (".symtab", ".dynsym"):
            sec = elf.get_section_by_name(secname)
            if sec is None:
                continue
            for sym in sec.iter_symbols():
                v = sym["st_value"]
                if sym["st_info"]["type"] == "STT_FUNC" and lo <= v < hi:
                    kinds[v - lo] |= K_FUNC
    calls = sorted((t, r) for r, t in calls if 0 <= t < hi - lo and r < hi - lo)
    return (struct.pack("<QQQ", lo, hi, len(calls)) + bytes(kinds[:hi - lo])
            + b"".join(CALL.pack(r, t) for t, r in calls))


def _mark(kinds: bytearray, at: int, kind: int) -> None:
    if 0 <= at < len(kinds):
        kinds[at] |= kind


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def _sweep_arm64(data: bytes, off: int, kinds: bytearray, calls: list[tuple[int, int]]) -> None:
    words = [w for (w,) in struct.iter_unpack("<I", data[:len(data) & ~3])]
    for i, w in enumerate(words):
        top = w >> 24
        at = off + 4 * i
        if top & 0x7E == 0x34 or top & 0x7E == 0x36 or w & 0xFF000010 == 0x54000000:
            # cbz/cbnz, tbz/tbnz, b.cond: the target and the fall-through
            rel = _signed((w >> 5) & 0x3FFF, 14) if top & 0x7E == 0x36 else _signed((w >> 5) & 0x7FFFF, 19)
            _mark(kinds, at + 4 * rel, K_LOCAL)
            _mark(kinds, at + 4, K_LOCAL)
        elif top & 0xFC == 0x94:                            # bl
            kinds[off + 4 * i + 4] |= K_CALL
            _mark(kinds, at + 4 * _signed(w & 0x3FFFFFF, 26), K_FUNC)
            calls.append((at + 4, at + 4 * _signed(w & 0x3FFFFFF, 26)))
        elif top == 0xD6:
            op = w & 0xFFFFFC1F
            if op == 0xD63F0000 or w & 0xFFFFF800 == 0xD63F0800:        # blr, blraa/blrab(z)
                kinds[off + 4 * i + 4] |= K_CALL
            elif op == 0xD65F0000 or w in (0xD65F0BFF, 0xD65F0FFF):     # ret, retaa, retab
                # After `add sp, sp, xN` or `mov sp, xN` the ret is a jump into another frame
                # (the unwinder's __builtin_eh_return lands in a handler in the frame of a live
                # call, libunwind's resume), or a very large frame's return: never checked.
                prev = words[i - 1] if i else 0
                stack_switch = (prev & 0xFFE0FFFF == 0x8B2063FF or prev & 0xFFFFFC1F == 0x9100001F)
                kinds[off + 4 * i + 4] |= K_JMP if stack_switch else K_RET
            elif (op == 0xD61F0000 or w & 0xFFFFF800 == 0xD61F0800) and (w >> 5) & 31 not in (16, 17):
                kinds[off + 4 * i + 4] |= K_JMP     # br, braa/brab(z); not x16/x17 (PLT stubs, veneers)


def _sweep_x86(data: bytes, off: int, kinds: bytearray, calls: list[tuple[int, int]]) -> None:
    import capstone
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    for addr, size, mnem, ops in md.disasm_lite(data, 0):
        c = mnem[:1]
        if c not in "crjnbl":
            continue
        end = off + addr + size
        if "call" in mnem:
            kinds[end] |= K_CALL
            if ops.startswith("0x"):
                _mark(kinds, off + int(ops, 16), K_FUNC)
                calls.append((end, off + int(ops, 16)))
        elif mnem.endswith("ret") or mnem.startswith("ret"):
            kinds[end] |= K_RET
        elif mnem.endswith("jmp"):
            if not ops.startswith("0x"):
                kinds[end] |= K_JMP
        elif c == "j" or mnem.startswith("loop"):            # jcc, jrcxz, loop: target and fall-through
            kinds[end] |= K_LOCAL
            if ops.startswith("0x"):
                _mark(kinds, off + int(ops, 16), K_LOCAL)
        elif mnem.startswith("rep"):                         # rep movs/stos/...: each round a block of its own
            kinds[off + addr] |= K_LOCAL


# --- cfi: unwind rows --------------------------------------------------------------------------------
def _cfi_rows(path: str, arm64: bool) -> bytes:
    from elftools.dwarf.callframe import FDE, RegisterRule
    ra_reg, fp_reg, sp_reg = (30, 29, 31) if arm64 else (16, 6, 7)
    rows: list[tuple[int, int, int, int, int, int]] = []
    with open(path, "rb") as f:
        elf = open_sections(f, path)
        if elf is None or not elf.has_dwarf_info():
            return b""
        dw = elf.get_dwarf_info(relocate_dwarf_sections=False)
        if dw.has_EH_CFI():
            entries = dw.EH_CFI_entries()
        elif dw.has_CFI():
            entries = dw.CFI_entries()
        else:
            return b""
        for e in entries:
            if not isinstance(e, FDE):
                continue
            start = e["initial_location"]
            end = start + e["address_range"]
            rows.append((end, 0, 0, 0, 0, 0))           # no information past the FDE
            try:
                table = e.get_decoded().table
            except Exception:       # a malformed FDE: leave its range without rows
                continue
            for r in table:
                cfa = r["cfa"]
                if cfa.expr is not None or cfa.reg not in (sp_reg, fp_reg):
                    reg = 0
                else:
                    reg = 1 if cfa.reg == sp_reg else 2
                ra = r.get(ra_reg)
                ra_off = ra.arg if ra is not None and ra.type == RegisterRule.OFFSET else 0
                fpr = r.get(fp_reg)
                fp_off = fpr.arg if fpr is not None and fpr.type == RegisterRule.OFFSET else 0
                off = cfa.offset or 0
                if not all(-2**31 <= v < 2**31 for v in (off, ra_off, fp_off)):
                    reg, off, ra_off, fp_off = 0, 0, 0, 0
                rows.append((r["pc"], 1, reg, off, ra_off, fp_off))
    rows.sort()
    out = bytearray()
    last = None
    for pc, _real, reg, off, ra_off, fp_off in rows:
        if last is not None and last == pc and not _real:
            continue
        out += ROW.pack(pc, off, ra_off, fp_off, reg)
        last = pc
    return bytes(out)


def cfi_rows(path: str, arm64: bool) -> bytes:
    """The module's CFI rows (emsan_cfi_row, link addresses, sorted by pc), cached on disk."""
    return _cached(path, f"cfi-{arm64}", lambda: _cfi_rows(path, arm64))


def _relocate_rows(data: bytes, bias: int) -> bytes:
    if not bias:
        return data
    out = bytearray(data)
    for i in range(0, len(out), ROW.size):
        pc = struct.unpack_from("<Q", out, i)[0]
        struct.pack_into("<Q", out, i, (pc + bias) & 0xFFFFFFFFFFFFFFFF)
    return bytes(out)


# --- frame pointers: does a module keep them? ---------------------------------------------------
def keeps_frame_pointers(path: str, arm64: bool) -> bool:
    """Do most of the module's functions set up a frame record? (sampled prologues)"""
    def measure() -> bytes:
        with open(path, "rb") as f:
            elf = open_sections(f, path)
            if elf is None:
                return b"0"
            secs = _exec_sections(elf)
            funcs = {value for value, size, kind, _name in function_symbols(path) if kind == STT_FUNC and size >= 24}
            yes = total = 0
            for addr in sorted(funcs):
                for s in secs:
                    a = s["sh_addr"]
                    if a <= addr < a + s["sh_size"]:
                        code = s.data()[addr - a:addr - a + 16]
                        total += 1
                        yes += _fp_prologue(code, arm64)
                        break
            return b"1" if total and yes * 10 >= total * 9 else b"0"
    return _cached(path, f"fp-{arm64}", measure) == b"1"


def _fp_prologue(code: bytes, arm64: bool) -> bool:
    if arm64:
        words = [w for (w,) in struct.iter_unpack("<I", code[:16])]
        while words and words[0] in (0xD503233F, 0xD503245F, 0xD503247F, 0xD503249F, 0xD503201F):
            words = words[1:]                   # paciasp, bti, nop
        return any(w == 0x910003FD for w in words[:3])           # mov x29, sp
    if code.startswith(b"\xf3\x0f\x1e\xfa"):
        code = code[4:]
    return code.startswith(b"\x55\x48\x89\xe5")                  # push rbp; mov rbp, rsp


class Stacks:
    """Sets up the chosen collector on the runtime and feeds it every module as it loads."""

    def __init__(self, machine, runtime, arm64: bool, collector: str, no_depot: bool, timed: bool = False,
                 ret_checks: bool = False):
        """timed: measure the collectors' time (stats' stack_collector_us; --stats only, it costs two
        clock reads per trace). ret_checks: --stack-checks ret (the shadow call stack
        compares every return)."""
        self.machine, self.runtime, self.arm64 = machine, runtime, arm64
        self.lib, self.ffi = runtime.lib, runtime.ffi
        self.collector = collector
        self.no_depot = no_depot
        self.timed = timed
        self._hooked = False
        self.ret_checks = ret_checks
        self.checks_name = "ret"            # "full" when the stack objects are checked too
        if collector == "x18" and not arm64:
            raise EmsanError("--stacks x18 needs an arm64 guest (built with -fsanitize=shadow-call-stack)")
        self.set(collector)

    def set(self, collector: str) -> None:
        self.collector = collector
        mode = getattr(self.lib, "EMSAN_STACKS_" + collector.upper())
        self.lib.emsan_set_stacks(self.runtime.rt, mode, int(self.no_depot), int(self.timed))
        if self.ret_checks:
            self.lib.emsan_scs_set_ret_checks(self.runtime.rt, 1)
        if (collector == "scs" or self.ret_checks) and not self._hooked:
            self._hooked = True
            h = self.machine.hook_block_native(self.ffi.addressof(self.lib, "emsan_scs_block_cb"), self.runtime.rt)
            self.machine.filter_block_hook(h, self.ffi.addressof(self.lib, "emsan_scs_block_filter"), self.runtime.rt)

    def module_loaded(self, path: str, bias: int) -> None:
        try:
            self._module_loaded(path, bias)
        except Exception as e:          # a module we cannot read: its frames fall back to fp
            print(f"emsan: stacks: no {self.collector} table for {path}: {e}", file=sys.stderr)

    def _module_loaded(self, path: str, bias: int) -> None:
        if self.collector == "scs" or self.ret_checks:
            data = _cached(path, f"kinds-{self.arm64}", lambda: _kinds(path, self.arm64))
            lo, hi, ncalls = struct.unpack_from("<QQQ", data)
            if hi > lo:
                buf = self.ffi.cast("uint8_t *", self.ffi.from_buffer(data, require_writable=False))
                self.lib.emsan_scs_add_module(self.runtime.rt, lo + bias, hi + bias, buf + 24, buf + 24 + hi - lo,
                                              ncalls)
        if self.collector == "cfi":
            data = _relocate_rows(cfi_rows(path, self.arm64), bias)
            n = len(data) // ROW.size
            if n:
                with open(path, "rb") as f:
                    elf = open_sections(f, path)
                    rng = exec_range(elf) if elf is not None else None
                lo, hi = rng if rng else (0, 0)
                rows = self.ffi.from_buffer("emsan_cfi_row[]", bytearray(data))
                self.lib.emsan_cfi_add_module(self.runtime.rt, lo + bias, hi + bias + 1, rows, n)

    def stats(self) -> dict[str, int | str]:
        st = self.ffi.new("emsan_stack_stats *")
        self.lib.emsan_get_stack_stats(self.runtime.rt, st)
        out: dict[str, int | str] = {"stacks": self.collector, "depot": int(not self.no_depot),
                                     "stack_traces": st.saves, "stack_unique": st.unique,
                                     "stack_depot_bytes": st.bytes, "stack_collector_us": st.collector_ns // 1000}
        if self.collector == "scs" or self.ret_checks:
            out.update(scs_pushes=st.scs_pushes, scs_pops=st.scs_pops, scs_resyncs=st.scs_resyncs,
                       scs_memo_hits=st.scs_memo_hits)
        out["stack_checks"] = self.checks_name if self.ret_checks else "none"
        if self.ret_checks:
            out.update(ret_checks=st.ret_checks, ret_mismatches=st.ret_mismatches)
        return out


def choose(paths: list[str], arm64: bool) -> str:
    """The default collector: fp when every module keeps frame pointers (no block hook, which
    compute-bound code pays for), else scs: on allocation-heavy code the cheapest of the complete
    collectors under emulation, cfi the dearest (bench/stacks.py)."""
    if all(keeps_frame_pointers(p, arm64) for p in paths):
        return "fp"
    return "scs"


CANDIDATE_FRAME = 1 << 63      # EMSAN_CANDIDATE_FRAME: stack[1] may be a leaf function's caller


def confirm_candidate(stack: list[int], is_call_return) -> list[int]:
    """Keep the candidate return address stack[1] only if a call really returns there."""
    if len(stack) > 1 and stack[1] & CANDIDATE_FRAME:
        ret = stack[1] & ~CANDIDATE_FRAME
        keep = is_call_return(stack[0], ret) and ret not in stack[2:3]
        stack = [stack[0]] + ([ret] if keep else []) + stack[2:]
    return stack
