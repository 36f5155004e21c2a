"""Direct tests of the pure functions the subprocess tests reach only through whole runs: bug-type
classification (the kernel's rules), the shadow window, frame descriptors, KFENCE's lines and
caches, string-variant names, candidate frames, seeds, the mode table, and locating the
instruction of an access seen without its PC (encodings from the GNU assembler's listing)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from emsan.arch import ARCHES
from emsan.machine import Machine
from emsan.report.model import KfenceObject, KfenceReport, Task, cache_name
from emsan.report.text import kfence_description
from emsan.sanitizer.entrypoints import (_aranges, direct_callees, function_symbols, has_symtab, imported_functions,
                                        libc_functions, string_function)
from emsan.sanitizer.mode import Capabilities, stream_seed
from emsan.sanitizer.modes import HOMES, mode_class, mode_names
from emsan.sanitizer.modes.compiler import parse_frame_descr
from emsan.sanitizer.modes.tags import tag_bug_type
from emsan.sanitizer.shadow import accessible, first_bad_addr, shadow_bug_type, shadow_window
from emsan.sanitizer.stacks import CANDIDATE_FRAME, confirm_candidate


def shadow_of(cells: dict[int, int], default: int | None = 0):
    """A shadow_byte lookup: cells maps granule addresses to shadow bytes."""
    return lambda addr: cells.get(addr & ~7, default)


# --- generic KASAN: the kernel's get_shadow_bug_type() and find_first_bad_addr() ----------------
@pytest.mark.parametrize("code, bug", [
    (0xFC, "slab-out-of-bounds"), (0xFE, "slab-out-of-bounds"), (0xFB, "slab-use-after-free"),
    (0xFA, "slab-use-after-free"), (0xFF, "use-after-free"), (0xF9, "global-out-of-bounds"),
    (0xF1, "stack-out-of-bounds"), (0xF2, "stack-out-of-bounds"), (0xF3, "stack-out-of-bounds"),
    (0xCA, "alloca-out-of-bounds"), (0xCB, "alloca-out-of-bounds"), (0xF8, "vmalloc-out-of-bounds"),
    (0xE0, "unknown-crash"), (0x00, "out-of-bounds"),
])
def test_shadow_bug_type_of_each_code(code, bug):
    assert shadow_bug_type(shadow_of({0x1000: code}), 0x1000) == bug


def test_shadow_bug_type_looks_past_a_partial_granule():
    # 5 accessible bytes, then a redzone: an access at byte 6 is a slab out-of-bounds
    assert shadow_bug_type(shadow_of({0x1000: 5, 0x1008: 0xFC}), 0x1006) == "slab-out-of-bounds"
    # ... and when what follows is accessible (a partial granule inside a live object), plain OOB
    assert shadow_bug_type(shadow_of({0x1000: 5, 0x1008: 0}), 0x1006) == "out-of-bounds"
    assert shadow_bug_type(shadow_of({}, default=None), 0x1000) == "wild-memory-access"


def test_first_bad_addr():
    shadow = shadow_of({0x1010: 0xFC})
    assert first_bad_addr(shadow, 0x1000, 32) == 0x1010          # the first poisoned granule
    assert first_bad_addr(shadow, 0x1004, 8) == 0x100B           # none in range: the access's last byte
    assert first_bad_addr(shadow, 0x1010, 0) == 0x1010


def test_accessible():
    shadow = shadow_of({0x1008: 5, 0x1010: 0xFC})           # 13 accessible bytes from 0x1000
    assert accessible(shadow, 0x1000, 13) and accessible(shadow, 0x1009, 4) and accessible(shadow, 0x1004, 8)
    assert not accessible(shadow, 0x1000, 14) and not accessible(shadow, 0x100D, 1)
    assert not accessible(shadow, 0x1010, 1) and not accessible(shadow_of({}, default=None), 0x1000, 1)
    assert not accessible(shadow_of({0x1000: 5}), 0x1000, 16)   # a partial granule before an accessible one


def test_shadow_window_rows():
    rows = shadow_window(shadow_of({0x2040: 0xFB}), 0x2045)
    assert [start for start, _ in rows] == [0x1F00, 0x1F80, 0x2000, 0x2080, 0x2100]
    assert all(len(cells) == 16 for _, cells in rows)
    assert rows[2][1][8] == 0xFB and rows[2][1][7] == 0
    tags = shadow_window(lambda a: 0xF3 if a == 0x4010 else None, 0x4010, granule=16)
    assert [start for start, _ in tags][2] == 0x4000 and tags[2][1][:2] == [None, 0xF3]


# --- tag-based modes: the bug type from the stack ring ------------------------------------------
def test_tag_bug_type():
    p = 0xAB00_0000_1000_0000
    assert tag_bug_type(p, 8, "free", large=False) == "slab-use-after-free"
    assert tag_bug_type(p, 8, "free", large=True) == "use-after-free"
    assert tag_bug_type(p, 8, "alloc", large=False) == "slab-out-of-bounds"
    assert tag_bug_type(p, 8, "none", large=False) == "invalid-access"
    assert tag_bug_type(p, 2**64 - 1, "alloc", large=False) == "out-of-bounds"   # a negative size


# --- compiler-assisted mode: the compiler's frame descriptor --------------------------------------
def test_parse_frame_descr():
    objs = parse_frame_descr("2 32 10 11 stack_array:40 64 8 5 array")
    assert [(o.start, o.end, o.name) for o in objs] == [(32, 42, "stack_array"), (64, 72, "array")]
    assert parse_frame_descr("1 16 4 1 x") [0].name == "x"
    assert parse_frame_descr("") == [] and parse_frame_descr("2 32 10") == [] and parse_frame_descr("x") == []


# --- KFENCE: the lines kfence_test matches, and the caches ----------------------------------------
def kfence_report(kind, access, addr, obj_start=0x7000, index=17, size=32, corrupted=()):
    obj = KfenceObject(index, obj_start, size, "allocated", [], [], 0.0, 0.0) if index is not None else None
    return KfenceReport("kfence", kind, access, addr, 0, Task("t", 1), [], True, obj, 0.0, list(corrupted))


def test_kfence_description():
    assert kfence_description(kfence_report("out-of-bounds", "read", 0x6FFF)) == \
        "Out-of-bounds read at 0x6fff (1B left of kfence-#17):"
    assert kfence_description(kfence_report("out-of-bounds", "write", 0x7040)) == \
        "Out-of-bounds write at 0x7040 (64B right of kfence-#17):"
    assert kfence_description(kfence_report("use-after-free", "read", 0x7008)) == \
        "Use-after-free read at 0x7008 (in kfence-#17):"
    assert kfence_description(kfence_report("memory corruption", "free", 0x7020, corrupted=[0x2A, None])) == \
        "Corrupted memory at 0x7020 [ 0x2a . ] (in kfence-#17):"
    assert kfence_description(kfence_report("invalid", "read", 0x5000, index=None)) == "Invalid read at 0x5000:"
    assert kfence_description(kfence_report("invalid free", "free", 0x7001)) == \
        "Invalid free of 0x7001 (in kfence-#17):"
    assert kfence_report("out-of-bounds", "read", 0).bug_type == "out-of-bounds read"
    assert kfence_report("memory corruption", "free", 0).bug_type == "memory corruption"


@pytest.mark.parametrize("size, cache", [(1, "kmalloc-8"), (8, "kmalloc-8"), (9, "kmalloc-16"), (65, "kmalloc-96"),
                                         (97, "kmalloc-128"), (129, "kmalloc-192"), (4096, "kmalloc-4096"),
                                         (4097, "kmalloc-large")])
def test_kmalloc_cache_of_a_size(size, cache):
    assert cache_name(size) == cache


# --- interceptors: glibc's variant names ---------------------------------------------------------
@pytest.mark.parametrize("name, fn", [
    ("strlen", "STRLEN"), ("__strlen_avx2", "STRLEN"), ("__memmove_avx_unaligned_erms", "MEMMOVE"),
    ("__memcpy_generic", "MEMCPY"), ("bcmp", "MEMCMP"), ("__memcmpeq_evex", "MEMCMP"), ("__stpncpy_sse2", "STPNCPY"),
    ("strnlen", "STRNLEN"), ("strlen_ifunc", None),
    ("strlenx", None), ("my_strlen", None), ("strlen_utf8", None), ("memcpy_foo", None), ("strcasecmp_l", "STRCASECMP"),
    # _FORTIFY_SOURCE's checked variants of the copying functions (glibc's names only)
    ("__memcpy_chk", "MEMCPY_CHK"), ("__memmove_chk_avx_unaligned_erms", "MEMMOVE_CHK"), ("__strncat_chk", "STRNCAT_CHK"),
    ("memcpy_chk", None), ("__strlen_chk", None), ("__memcpy_chk_ifunc", None), ("wmemcpy_chk", None),
    # ... and of the wide ones (counts in wchar_t)
    ("__wmemcpy_chk", "WMEMCPY_CHK"), ("__wmemset_chk_avx2_unaligned", "WMEMSET_CHK"), ("__wcsncat_chk", "WCSNCAT_CHK"),
    # the wide family and the other narrow ones (issue 13), glibc's internal copies (__GI_), and
    # old helpers with their own signatures, which are no variants
    ("wcslen", "WCSLEN"), ("__wcsnlen_sse4_1", "WCSNLEN"), ("wcslenx", None),
    ("__GI_strlen", "STRLEN"), ("__strcasecmp_l_avx", "STRCASECMP"), ("__strstr_sse2_unaligned", "STRSTR"),
    ("__strspn_c2", None), ("__strcpy_small", None), ("__strcspn_g", None),
])
def test_string_function(name, fn):
    assert string_function(name) == fn


# --- which C library functions checked at entry a program calls (entrypoints.py) ---------------------
def test_aranges_parses_units():
    """Two DWARF 2 .debug_aranges units (4-byte header, 8-byte addresses, tuples 16-aligned)."""
    def unit(pairs):
        body = struct.pack("<HIBB", 2, 0, 8, 0) + b"\0" * 4 + b"".join(struct.pack("<QQ", a, n) for a, n in pairs)
        body += struct.pack("<QQ", 0, 0)
        return struct.pack("<I", len(body)) + body
    assert _aranges(unit([(0x401000, 0x20), (0x402000, 8)]) + unit([(0x500000, 4)])) == \
        [(0x401000, 0x20), (0x402000, 8), (0x500000, 4)]


def _nm(path: str, *flags: str) -> list[list[str]]:
    """nm's lines, split (a symbol's version dropped)."""
    out = subprocess.run(["nm", *flags, path], capture_output=True, text=True, check=True).stdout
    return [line.split("@")[0].split() for line in out.splitlines() if line.strip()]


def test_libc_callers_of_a_static_and_a_dynamic_program():
    """Oracles: nm (the imports; where each function is) and the guest's source (what it calls)."""
    from conftest import build
    exe = build("libc_checks", "x86_64", "static", ("-D_FORTIFY_SOURCE=2",))
    at = {f[2]: int(f[0], 16) for f in _nm(exe) if len(f) == 3 and f[1] in "TtWw"}
    called = direct_callees(exe, False)
    defs = libc_functions(exe, 0)
    assert called is not None and at["__sprintf_chk"] in called and at["__isoc99_sscanf"] in called
    assert at["vasprintf"] in defs and at["vasprintf"] not in called      # only glibc's own code calls it
    assert defs[at["__fgets_chk"]][0] == "FGETS_CHK" and "fgets_unlocked" in defs[at["fgets_unlocked"]][1]
    dyn = build("libc_checks", "x86_64", "dynamic", ("-D_FORTIFY_SOURCE=2",))
    assert imported_functions(dyn) == {f[-1] for f in _nm(dyn, "-D", "--undefined-only")}


# --- symbol tables read with struct, against pyelftools ------------------------------------------
ELF_FILES = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/aarch64-linux-gnu/lib/libc.so.6", sys.executable]


@pytest.mark.parametrize("path", ELF_FILES)
def test_function_symbols_match_pyelftools(path):
    """The start-up path's struct reader finds the .symtab/.dynsym functions pyelftools finds."""
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection
    want = set()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab") is not None
        for name in (".symtab", ".dynsym"):
            sec = elf.get_section_by_name(name)
            if isinstance(sec, SymbolTableSection):
                want |= {(s["st_value"], s["st_size"], s.name.split("@")[0]) for s in sec.iter_symbols()
                         if s["st_info"]["type"] in ("STT_FUNC", "STT_LOOS", "STT_GNU_IFUNC") and s["st_value"]
                         and s["st_shndx"] != "SHN_UNDEF"}
    got = {(v, size, name) for v, size, _kind, name in function_symbols(path)}
    assert got == want and want
    assert has_symtab(path) == symtab


def test_symbol_reader_refuses_non_elf(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + b"\xff" * 60)
    assert function_symbols(str(junk)) == () and not has_symtab(str(junk))
    assert not has_symtab(str(tmp_path / "missing"))


# --- stacks: a leaf function's unsaved return address ---------------------------------------------
def test_confirm_candidate():
    stack = [0x1000, 0x2000 | CANDIDATE_FRAME, 0x3000]
    assert confirm_candidate(stack, lambda pc, ret: True) == [0x1000, 0x2000, 0x3000]
    assert confirm_candidate(stack, lambda pc, ret: False) == [0x1000, 0x3000]
    dup = [0x1000, 0x3000 | CANDIDATE_FRAME, 0x3000]          # already the next frame: kept once
    assert confirm_candidate(dup, lambda pc, ret: True) == [0x1000, 0x3000]
    assert confirm_candidate([0x1000, 0x2000], lambda pc, ret: False) == [0x1000, 0x2000]


def test_stream_seed():
    assert stream_seed(5, "tags") == stream_seed(5, "tags")
    assert stream_seed(5, "tags") != stream_seed(5, "kfence") != stream_seed(6, "kfence")
    assert 0 <= stream_seed(None, "tags") < 2**64


# --- the mode table ---------------------------------------------------------------------------------
def test_every_mode_declares_the_interface():
    assert set(mode_names()) == {"generic", "sw-tags", "hw-tags", "kfence", "compiler-assisted"}
    for name in mode_names():
        cls = mode_class(name)
        assert cls.name == name and isinstance(cls.caps, Capabilities)
        for method in ("module_loaded", "intercept", "check_range", "build", "report_key", "stats"):
            assert callable(getattr(cls, method)), (name, method)
        assert isinstance(cls.report_in_engine, bool), name
        if cls.caps.shadow:
            for method in ("shadow_byte", "shadow_mmap_area", "mapping_changed"):
                assert callable(getattr(cls, method)), (name, method)
    assert mode_class("sw-tags").caps.arches == ("arm64",)
    with pytest.raises(KeyError):
        mode_class("none")


def test_a_mode_is_found_without_importing_the_others():
    """`emsan run --mode M` imports M's module only: each mode lives in the module named after it
    or in its HOMES entry (checked in a fresh interpreter, where no mode module was imported)."""
    script = ("import sys; from emsan.sanitizer.modes import mode_class; cls = mode_class(sys.argv[1]); "
              "print(cls.__module__, *sorted(m for m in sys.modules if m.startswith('emsan.sanitizer.modes.')))")
    for name in mode_names():
        out = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True, check=True).stdout
        module, *loaded = out.split()
        assert module == f"emsan.sanitizer.modes.{HOMES.get(name, name.replace('-', '_'))}", name
        # generic.py is the others' base; no other mode's module comes with it
        assert set(loaded) - {module, "emsan.sanitizer.modes.generic"} == set(), (name, loaded)


# --- locating the instruction of an access seen without its PC (--checks mmio) ---------------------
CODE, DATA = 0x10000, 0x200000
X86_BLOCK = bytes.fromhex(
    "b807000000"        # 0x00 mov eax, 7
    "894304"            # 0x05 mov [rbx+4], eax
    "8b4b08"            # 0x08 mov ecx, [rbx+8]
    "f30f6f4310"        # 0x0b movdqu xmm0, [rbx+16]
    "f0480104cb"        # 0x10 lock add [rbx+rcx*8], rax
    "c3")               # 0x15 ret
ARM64_BLOCK = struct.pack("<6I",
                          0x38626820,   # 0x00 ldrb w0, [x1, x2]
                          0xA9411023,   # 0x04 ldp x3, x4, [x1, #16]
                          0x3D800820,   # 0x08 str q0, [x1, #32]
                          0xB8E50026,   # 0x0c ldaddal w5, w6, [x1]
                          0xC8077C28,   # 0x10 stxr w7, x8, [x1]
                          0xD65F03C0)   # 0x14 ret


def machine_with(arch: str, code: bytes) -> Machine:
    m = Machine(arch)
    m.map(CODE, 0x1000, 7)
    m.write(CODE, code)
    return m


def x86_regs(**vals) -> dict[str, int]:
    return {r: vals.get(r, 0) for r in ARCHES["x86_64"].gprs}


def arm64_regs(**vals) -> dict[str, int]:
    return {r: vals.get(r, 0) for r in ARCHES["arm64"].gprs}


def test_x86_64_locate():
    arch = ARCHES["x86_64"]
    m = machine_with("x86_64", X86_BLOCK)
    regs = x86_regs(rbx=DATA, rcx=3)
    # the candidate is the access, or the instruction after it
    assert arch.locate(m, [CODE + 0x05], CODE, regs, DATA + 4, True) == (CODE + 0x05, DATA + 4, 4)
    assert arch.locate(m, [CODE + 0x0B], CODE, regs, DATA + 8, False) == (CODE + 0x08, DATA + 8, 4)
    # a 16-byte access seen as one 8-byte piece is reported whole; a lock-prefixed RMW is a write
    assert arch.locate(m, [CODE + 0x0B], CODE, regs, DATA + 24, False) == (CODE + 0x0B, DATA + 16, 16)
    assert arch.locate(m, [], CODE, regs, DATA + 24 + 4, True) == (CODE + 0x10, DATA + 24, 8)
    # no candidate covers it: decoded on from the PC Unicorn last synced, up to the block's end
    assert arch.locate(m, [CODE + 0x15], CODE, regs, DATA + 4, True) == (CODE + 0x05, DATA + 4, 4)
    assert arch.locate(m, [], CODE, regs, DATA + 0x100, False) is None


def test_x86_64_locate_a_piece_of_an_unaligned_load():
    """QEMU performs an unaligned 8-byte load from MMIO as the two aligned 8-byte loads around
    it: either piece locates the instruction, with the operand's own address and size."""
    arch = ARCHES["x86_64"]
    m = machine_with("x86_64", bytes.fromhex("488b4333" "c3"))      # mov rax, [rbx+0x33]; ret
    regs = x86_regs(rbx=DATA)
    for piece in (DATA + 0x30, DATA + 0x38):
        assert arch.locate(m, [CODE], CODE, regs, piece, False, 8) == (CODE, DATA + 0x33, 8)
    assert arch.locate(m, [CODE], CODE, regs, DATA + 0x40, False, 8) is None
    assert arch.locate(m, [CODE], CODE, regs, DATA + 0x28, False, 8) is None


def test_arm64_locate():
    arch = ARCHES["arm64"]
    m = machine_with("arm64", ARM64_BLOCK)
    regs = arm64_regs(x1=DATA | (0x5A << 56), x2=7)        # a tagged base: the address is untagged
    assert arch.locate(m, [CODE], CODE, regs, DATA + 7, False) == (CODE, DATA + 7, 1)
    assert arch.locate(m, [CODE + 0x08], CODE, regs, DATA + 24, False) == (CODE + 0x04, DATA + 16, 16)
    assert arch.locate(m, [CODE + 0x08], CODE, regs, DATA + 40, True) == (CODE + 0x08, DATA + 32, 16)
    assert arch.locate(m, [], CODE, regs, DATA, True) == (CODE + 0x0C, DATA, 4)       # an atomic RMW writes
    found = arch.locate(m, [CODE + 0x10], CODE + 0x10, regs, DATA, True)
    assert found == (CODE + 0x10, DATA, 8)             # stxr: the status register is not the data


def test_runtime_on_an_engine_a_harness_made():
    """The runtime needs only a Machine, which may wrap the harness's own Uc."""
    import unicorn
    from emsan.sanitizer.runtime import Runtime

    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    m = Machine("x86_64", uc)
    uc.reg_write(unicorn.x86_const.UC_X86_REG_R12, 0x1234)
    assert m.uc is uc and m.reg("r12") == 0x1234
    rt = Runtime(m, ARCHES["x86_64"])
    assert rt.pending() == [] and rt.stack(0) == [] and rt.queued() == 0
