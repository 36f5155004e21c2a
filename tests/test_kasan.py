"""The kernel's KASAN KUnit cases, ported to userspace (tests/guest/kasan_cases.c), run under
generic mode with the memory-hook checks (--checks hook; tests/test_mmio_checks.py runs them with
the default MMIO checks) on x86-64 and arm64. Each report's bug type, access kind (as the kernel
prints it), size, offset from the object, first frame's function and source line (read from the
marker comment in the guest's source) are asserted, and so is the absence of any other report."""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import EXIT_REPORT, build, have, run_report, source_line, tail

SOOB, SUAF, UAF = "slab-out-of-bounds", "slab-use-after-free", "use-after-free"
LARGE = 8192
SRC = "kasan_cases.c"


def W(offset: int, marker: str, size: int = 1, bug: str = SOOB) -> tuple:
    return (bug, "write", size, offset, marker)


def R(offset: int, marker: str, size: int = 1, bug: str = SOOB) -> tuple:
    return (bug, "read", size, offset, marker)


def F(bug: str, offset: int, marker: str) -> tuple:
    return (bug, "free", 0, offset, marker)


# case -> [(bug type, access, size, offset of the access from the object's start, source marker)]
# Access kinds are the kernel's: atomic read-modify-writes and the atomic bitops are writes
# (instrument_atomic_read_write() and instrument_atomic_write() call kasan_check_write()).
EXPECTED: dict[str, list[tuple]] = {
    "kmalloc_oob_right": [W(115, "oob_right.1"), W(120, "oob_right.2"), R(128, "oob_right.3")],
    "kmalloc_oob_left": [R(-1, "oob_left")],
    "kmalloc_node_oob_right": [R(4096, "node_oob_right")],
    "kmalloc_track_caller_oob_right": [W(120, "track_caller.1"), W(120, "track_caller.2")],
    "kmalloc_big_oob_right": [W(LARGE - 256, "big_oob_right")],
    "kmalloc_large_oob_right": [W(LARGE + 10, "large_oob_right")],
    "kmalloc_large_uaf": [R(0, "large_uaf", bug=UAF)],
    "kmalloc_large_invalid_free": [F("invalid-free", 1, "large_invalid_free")],
    "page_alloc_uaf": [R(0, "page_alloc_uaf", bug=UAF)],
    "krealloc_more_oob": [W(235, "more.1"), W(240, "more.2")],
    "krealloc_less_oob": [W(o, f"less.{i}") for i, o in enumerate((201, 208, 218, 234, 235), 1)],
    "krealloc_large_more_oob": [W(LARGE + 235, "more.1"), W(LARGE + 240, "more.2")],
    "krealloc_large_less_oob": [W(LARGE + o, f"less.{i}") for i, o in enumerate((201, 208, 218, 234, 235), 1)],
    "krealloc_uaf": [R(0, "krealloc_uaf.1", bug=SUAF), R(0, "krealloc_uaf.2", bug=SUAF)],
    "kmalloc_oob_16": [W(8, "oob_16", 8)],
    "kmalloc_uaf_16": [R(0, "uaf_16", 8, SUAF)],
    "kmalloc_oob_in_memset": [W(0, "oob_in_memset", 128)],
    "kmalloc_oob_memset_2": [W(119, "memset_2", 2)],
    "kmalloc_oob_memset_4": [W(117, "memset_4", 4)],
    "kmalloc_oob_memset_8": [W(113, "memset_8", 8)],
    "kmalloc_oob_memset_16": [W(105, "memset_16", 16)],
    "kmalloc_memmove_negative_size": [R(4, "memmove_negative", 2**64 - 2, "out-of-bounds")],
    "kmalloc_memmove_invalid_size": [R(4, "memmove_invalid", 64)],
    "kmalloc_uaf": [R(8, "uaf", bug=SUAF)],
    "kmalloc_uaf_memset": [W(0, "uaf_memset", 33, SUAF)],
    "kmalloc_uaf2": [R(40, "uaf2", bug=SUAF)],
    "kmalloc_double_kzfree": [W(0, "kzfree.1", 16, SUAF), F("double-free", 0, "kzfree.2")],
    "ksize_unpoisons_memory": [R(115, "ksize.1"), R(120, "ksize.2")],
    "ksize_uaf": [R(0, "ksize_uaf.1", bug=SUAF), R(0, "ksize_uaf.2", bug=SUAF), R(120, "ksize_uaf.3", bug=SUAF)],
    "kmem_cache_oob": [R(200, "kmem_cache_oob")],
    "kmem_cache_double_free": [F("double-free", 0, "kmem_cache_double_free")],
    "kmem_cache_invalid_free": [F("invalid-free", 1, "kmem_cache_invalid_free")],
    "kmem_cache_accounted": [],
    "kmem_cache_bulk": [],
    "kasan_memchr": [R(0, "memchr", 25)],
    "kasan_memcmp": [R(0, "memcmp", 25)],
    "kasan_strings": [R(16, f"strings.{f}", n, SUAF) for f, n in (("strchr", 104), ("strrchr", 104), ("strcmp", 1),
                                                                   ("strncmp", 1), ("strlen", 104), ("strnlen", 1))],
    "kasan_bitops_generic": [W(8, f"bitops.{op}", 8) for op in ("set", "clear", "change", "test_and_set",
                                                                 "test_and_clear", "test_and_change")]
    + [R(8, "bitops.test", 8)],
    "kasan_atomics": [R(48, "atomics.read_once", 4), W(48, "atomics.write_once", 4), R(48, "atomics.load_acquire", 4),
                      W(48, "atomics.store_release", 4), W(48, "atomics.add", 4), W(48, "atomics.cmpxchg", 4),
                      W(48, "atomics.xchg", 4)],
    "copy_user_test_oob": [W(0, "copy_user.read", 121), R(0, "copy_user.write", 121)],
    "clean_run": [],
}
# Where a report's first frame is not the guest's own code: how many frames of the C library
# (interceptors, free, realloc; explicit_bzero calling memset) come before the guest's frame.
VIA = {m: 1 for m in ("large_invalid_free", "krealloc_uaf.1", "oob_in_memset", "memset_2", "memset_4", "memset_8",
                      "memset_16", "memmove_negative", "memmove_invalid", "uaf_memset", "kzfree.2", "ksize_uaf.1",
                      "kmem_cache_double_free", "kmem_cache_invalid_free", "memchr", "memcmp", "copy_user.read",
                      "copy_user.write")} | {f"strings.{f}": 1 for f in ("strchr", "strrchr", "strcmp", "strncmp",
                                                                          "strlen", "strnlen")} | {"kzfree.1": 2}
# arm64's read-modify-writes run in libgcc's outline atomics (__aarch64_ldadd4_acq_rel...), called
# from the marked line.
OUTLINE_ATOMICS = ("__aarch64_",)
ARM64_OUTLINE = {f"bitops.{op}" for op in ("set", "clear", "change", "test_and_set", "test_and_clear",
                                           "test_and_change")} | {"atomics.add", "atomics.cmpxchg", "atomics.xchg"}
# The function of the guest frame, where not the case itself.
FUNCTION = {"krealloc_more_oob": "krealloc_more", "krealloc_large_more_oob": "krealloc_more",
            "krealloc_less_oob": "krealloc_less", "krealloc_large_less_oob": "krealloc_less"}
# The report's title names the guest frame, except: explicit_bzero's memset (the caller of the
# interceptor), a system call's buffer (the libc wrapper making the call), outline atomics.
TITLES = {"kzfree.1": "explicit_bzero", "copy_user.read": "read", "copy_user.write": "write"}
ANY_WORD = {"kmalloc_uaf_16"}               # x86: the compiler picks which half it loads first


def via(arch: str, marker: str) -> int:
    """Frames before the guest's in a report of this marker, for the binary gcc builds."""
    return 1 if arch == "arm64" and marker in ARM64_OUTLINE else VIA.get(marker, 0)


def blamed(arch: str, case: str, rep: dict, marker: str, src: str = SRC,
           lost: frozenset = frozenset(), frames_before=via) -> tuple[str | None, int | None]:
    """Checks the frames before the guest's (library code, not the guest's source), returns the
    guest frame's function and line. Markers in `lost`: the trace is known to miss the guest's
    frame (None, None)."""
    n = frames_before(arch, marker)
    stack = rep["stack"]
    assert len(stack) > n, stack
    for f in stack[:n]:
        assert not (f["file"] or "").endswith(src), (marker, stack[:n + 1])
    if n and marker in ARM64_OUTLINE and frames_before is via:
        assert stack[0]["function"].startswith(OUTLINE_ATOMICS), stack[0]
    if marker in lost:
        assert rep["function"] == TITLES.get(marker) and stack[n]["function"] != FUNCTION.get(case, case), stack
        return None, None
    g = stack[n]
    assert (g["file"] or "").endswith(src), (marker, g)
    real = next(f for f in stack[n:] if not f["inlined"])          # the title names no inlined frame
    outline = n and arch == "arm64" and marker in ARM64_OUTLINE and frames_before is via
    title = stack[0]["function"] if outline else TITLES.get(marker, real["function"])
    assert rep["function"] == title, (marker, rep["function"], title)
    return g["function"], g["line"]


def shape(arch: str, case: str, rep: dict, marker: str, src: str = SRC, lost: frozenset = frozenset(),
          frames_before=via) -> tuple:
    """What a report says, in the terms of EXPECTED (marker turned into the function and line)."""
    fn, line = blamed(arch, case, rep, marker, src, lost, frames_before)
    offset = rep["object"]["offset"] if "object" in rep else None
    return rep["bug_type"], rep["access"], rep["size"], offset, fn, line


def wanted(case: str, want: tuple, src: str = SRC, lost: frozenset = frozenset()) -> tuple:
    bug, access, size, offset, marker = want
    if marker in lost:
        return bug, access, size, offset, None, None
    return bug, access, size, offset, FUNCTION.get(case, case), source_line(src, marker)


def summary(reports: list[dict]) -> list[tuple]:
    """The reports as a line each, for assertion messages."""
    return [(r["bug_type"], r["access"], r["size"], r.get("object", {}).get("offset"),
             [(f["function"], f["line"]) for f in r["stack"][:3]]) for r in reports]


def check_case(arch: str, case: str, res, reports: list[dict], want: list[tuple], src: str = SRC,
               lost: frozenset = frozenset(), frames_before=via) -> None:
    """The reports of one case are exactly `want`, in order, each pointing at its marked line
    (after frames_before(arch, marker) frames of library code)."""
    if case in ANY_WORD and arch == "x86_64":      # one or both 8-byte halves, whichever is loaded first
        assert 1 <= len(reports) <= 2, summary(reports)
        want = [want[0][:3] + (r.get("object", {}).get("offset"),) + want[0][4:] for r in reports]
        assert {w[3] for w in want} <= {0, 8}, summary(reports)
    assert len(reports) == len(want), (summary(reports), tail(res))
    got = [shape(arch, case, r, w[4], src, lost, frames_before) for r, w in zip(reports, want)]
    assert got == [wanted(case, w, src, lost) for w in want], (summary(reports), tail(res))
    for r in reports:
        assert "object" in r and r["object"]["alloc_stack"], "allocation stack missing"
        if r["bug_type"] in (SUAF, UAF, "double-free"):
            assert r["object"]["state"] == "freed" and r["object"]["free_stack"]


def run_case(exe: str, case: str, tmp_path, *options: str, status: int = 0) -> tuple[object, list[dict]]:
    return run_report(tmp_path / f"{case}.json", *options, "--continue", exe, case, status=status)


def status_after(want) -> int:
    """The exit status of a --continue run that must report `want` (ends with the error status
    when anything was reported, as Valgrind's --error-exitcode)."""
    return EXIT_REPORT if want else 0


def case_results(tmp_path_factory, *options: str):
    """get(arch) -> {case: (process, reports)}: every case run once per arch with `options`."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            exe = build("kasan_cases", arch, "static", ("-fno-builtin",))
            tmp = tmp_path_factory.mktemp(f"kasan-{arch}")
            with ThreadPoolExecutor(2) as pool:
                futs = {c: pool.submit(run_case, exe, c, tmp, *options, status=status_after(EXPECTED[c]))
                        for c in EXPECTED}
                cache[arch] = {c: f.result() for c, f in futs.items()}
        return cache[arch]
    return get


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return case_results(tmp_path_factory, "--checks", "hook")


# Unicorn syncs no PC before x86's atomic read-modify-writes: a memory hook sees the last PC it
# synced. Where several such instructions after it touch the same word, emsan cannot tell which
# made the access and says so in the report; each of them must then be either reported exactly
# or named among the candidates of a report with the same bug, kind and size.
X86_HOOK_AMBIGUOUS = {"kasan_bitops_generic", "kasan_atomics"}


def addr2line(exe: str, pcs: list[str]) -> list[int]:
    if not have("addr2line"):
        pytest.skip("addr2line is not installed")
    out = subprocess.run(["addr2line", "-e", exe, *pcs], capture_output=True, text=True, check=True).stdout
    return [int(loc.rsplit(":", 1)[1].split()[0]) for loc in out.splitlines()]


def check_ambiguous(exe: str, case: str, res, reports: list[dict]) -> None:
    want = [wanted(case, w) for w in EXPECTED[case]]
    got = [shape("x86_64", case, r, "", SRC) for r in reports]
    assert set(got) <= set(want) and got == sorted(got, key=want.index), tail(res)   # each right, in order
    named = {}
    for r in reports:
        notes = [n for n in r["notes"] if "did not say which instruction" in n]
        if notes:
            pcs = notes[0].split(" at ")[1].split(", which")[0].split(", ")
            assert pcs[0] == r["pc"], notes
            for line in addr2line(exe, pcs):
                named[line] = r
    for w in want:
        if w in got:
            continue
        r = named.get(w[5])
        assert r is not None, f"line {w[5]} neither reported nor named: {tail(res)}"
        assert (r["bug_type"], r["access"], r["size"]) == w[:3]


@pytest.mark.parametrize("case", list(EXPECTED))
def test_kasan_case(arch, case, results):
    res, reports = results(arch)[case]
    if arch == "x86_64" and case in X86_HOOK_AMBIGUOUS:
        check_ambiguous(build("kasan_cases", arch, "static", ("-fno-builtin",)), case, res, reports)
    else:
        check_case(arch, case, res, reports, EXPECTED[case])


def test_report_text_layout_and_exit_status():
    from conftest import emsan
    exe = build("kasan_cases", "x86_64", "static", ("-fno-builtin",))
    res = emsan("run", exe, "kmalloc_oob_right", status=99)          # stops at the first report by default
    text = res.stderr.decode()
    lines = text.splitlines()
    i = lines.index("=" * 66)
    assert lines[i + 1].startswith("BUG: KASAN: slab-out-of-bounds in kmalloc_oob_right+0x")
    assert lines[i + 1].endswith(f" kasan_cases.c:{source_line(SRC, 'oob_right.1')}")
    assert lines[i + 2].startswith("Write of size 1 at addr ") and " by task kasan_cases/" in lines[i + 2]
    trace = lines[lines.index("Call Trace:") + 1:]
    assert trace[0].startswith(" kmalloc_oob_right+0x") and trace[1].startswith(" main+0x")
    assert "Allocated by task" in text
    assert " which belongs to the cache kmalloc-128 of size 128" in text
    assert "The buggy address is located 0 bytes to the right of\n allocated 115-byte region [" in text
    assert "Memory state around the buggy address:" in text
    marker = [ln for ln in lines if ln.startswith(">")][0]
    caret = lines[lines.index(marker) + 1]
    assert caret.strip() == "^" and marker[caret.index("^"):caret.index("^") + 2] == "03"
    assert text.count("BUG: KASAN:") == 1
    res = emsan("run", "--error-exitcode", "42", exe, "kmalloc_uaf", status=42)
    assert "BUG: KASAN: slab-use-after-free in kmalloc_uaf+0x" in res.stderr.decode()


@pytest.mark.parametrize("case,expected", [
    ("new_then_free", "alloc-dealloc-mismatch"), ("new_array_then_delete", "alloc-dealloc-mismatch"),
    ("malloc_then_delete_array", "alloc-dealloc-mismatch"), ("matched", None)])
def test_alloc_dealloc_mismatch(case, expected, tmp_path):
    exe = build("kasan_mismatch", "x86_64", "static", cxx=True)
    res, reports = run_report(tmp_path / "r.json", "--continue", exe, case, status=status_after(expected))
    assert [r["bug_type"] for r in reports] == ([expected] if expected else []), tail(res)
    text = res.stderr.decode()
    if expected:
        (r,) = reports
        assert r["function"] == case + "()" and r["access"] == "free"        # demangled
        # the deallocation call, in the guest's source
        assert r["stack"][1]["function"] == case + "()"
        assert r["stack"][1]["line"] == source_line("kasan_mismatch.cc", case)
        assert text.startswith("=" * 66 + f"\nBUG: KASAN: alloc-dealloc-mismatch in {case}()+0x")
        assert "The object was allocated with " in text
    else:
        assert text == ""


@pytest.mark.parametrize("arch_name", ["x86_64", "arm64"])
def test_without_frame_pointers_first_frame_is_right(arch_name, tmp_path):
    """-O2 -fomit-frame-pointer: the unwinder must neither crash nor hang, and frame 0 is exact."""
    exe = build("kasan_cases", arch_name, "static", ("-fno-builtin", "-O2", "-fomit-frame-pointer"))
    for case, marker, offset in (("kmalloc_oob_right", "oob_right.1", 115), ("kmalloc_uaf", "uaf", 8)):
        res, reports = run_report(tmp_path / "r.json", exe, case, status=99, timeout=120)
        rep = reports[0]
        assert rep["stack"][0]["function"] == case and rep["function"] == case
        assert rep["stack"][0]["line"] == source_line(SRC, marker)
        assert rep["object"]["offset"] == offset


ACCESS_SHAPES = {
    "unaligned_straddle": [R(13, "unaligned_straddle", 8)],
    "simd_load": [R(24, "simd_load", 8)],          # Unicorn's hooks get 16-byte loads as two 8-byte halves
    "string_insn_store": [W(16, "string_insn_store")],
    # one word each, so that every instruction is known exactly even to the memory hook
    "atomic_rmw": [W(8 * i, f"atomic_rmw.{i}", 8 if i < 3 else 4, SUAF) for i in range(6)],
    "in_bounds_shapes": [],
}
# The inline and MMIO checks decode the instruction: the 16-byte load is one access, as the kernel
# reports it.
ACCESS_SHAPES_MMIO = {**ACCESS_SHAPES, "simd_load": [R(16, "simd_load", 16)]}


@pytest.mark.parametrize("checks", ["hook", "mmio", "inline"])
@pytest.mark.parametrize("case", list(ACCESS_SHAPES))
def test_access_shapes(arch, case, checks, tmp_path):
    exe = build("kasan_access", arch, "static")
    want = (ACCESS_SHAPES if checks == "hook" else ACCESS_SHAPES_MMIO)[case]
    res, reports = run_report(tmp_path / "r.json", "--checks", checks, "--continue", exe, case,
                              status=status_after(want))
    got = [(r["bug_type"], r["access"], r["size"], r["object"]["offset"], r["stack"][0]["function"],
            r["stack"][0]["line"]) for r in reports]
    assert got == [w[:4] + (case, source_line("kasan_access.c", w[4], arch)) for w in want], tail(res)
    assert all(r["function"] == case and not r["notes"] for r in reports)
