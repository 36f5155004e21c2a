"""Allocation errors and C++'s allocation contract (tests/guest/alloc_errors.c, alloc_contract.cc), on x86-64
and arm64, static and dynamic.

Oracles: the guest's source for what each call asks (sizes, counts, alignments) and where the
report must point (marker comments); ASan's bug types for the names (the issue's choice: the
kernel's allocators only WARN); the native run (x86-64) or qemu-aarch64 (arm64) for what the
program prints and its exit status, which emsan must keep (a run with --continue that reported
exits with --error-exitcode, 99): after a report with --continue, and with --allocator-errors null
without one, every refused call fails as the C library makes it fail (NULL and errno, posix_memalign's code, std::bad_alloc through libstdc++'s new-handler
loop, the nothrow variants' NULL)."""
from __future__ import annotations

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from conftest import ARM64_SYSROOT, build, native, run_report, source_line, tail

C, CXX = "alloc_errors.c", "alloc_contract.cc"
HALF = 2**63
# case -> (bug type, the call as the report names it, what the request says)
C_EXPECTED = {
    "malloc_too_big": ("allocation-size-too-big", "malloc", dict(size=2**41)),
    "calloc_overflow": ("calloc-overflow", "calloc", dict(count=HALF, size=2)),
    "reallocarray_overflow": ("reallocarray-overflow", "reallocarray", dict(count=HALF, size=4)),
    "realloc_too_big": ("allocation-size-too-big", "realloc", dict(size=2**64 - 1)),
    "pvalloc_overflow": ("pvalloc-overflow", "pvalloc", dict(size=2**64 - 1)),
    "memalign_alignment": ("invalid-allocation-alignment", "memalign", dict(size=16, alignment=3)),
    "aligned_alloc_alignment": ("invalid-aligned-alloc-alignment", "aligned_alloc", dict(size=24, alignment=3)),
    "posix_memalign_alignment": ("invalid-posix-memalign-alignment", "posix_memalign", dict(size=16, alignment=4)),
    "posix_memalign_too_big": ("allocation-size-too-big", "posix_memalign", dict(size=2**41, alignment=64)),
}
TOO_BIG = 2**63 - 1
CXX_EXPECTED = {
    "new_too_big": ("allocation-size-too-big", "operator new[](unsigned long)", dict(size=TOO_BIG)),
    "aligned_new_alignment": ("invalid-allocation-alignment", "operator new(unsigned long, std::align_val_t)",
                              dict(size=64, alignment=3)),
    "nothrow_new_too_big": ("allocation-size-too-big", "operator new[](unsigned long, std::nothrow_t const&)",
                            dict(size=TOO_BIG)),
    "nothrow_aligned_new_too_big": ("allocation-size-too-big",
                                    "operator new(unsigned long, std::align_val_t, std::nothrow_t const&)",
                                    dict(size=TOO_BIG, alignment=64)),
    "new_handler_loop": ("allocation-size-too-big", "operator new[](unsigned long)", dict(size=TOO_BIG)),
    # sizeof(Base) is 4, sizeof(Derived) 32; the object was asked aligned to 64
    "sized_delete_wrong_size": ("new-delete-type-mismatch", "operator delete(void*, unsigned long)", dict(size=4)),
    "aligned_delete_wrong_alignment": ("new-delete-type-mismatch", "operator delete(void*, std::align_val_t)",
                                       dict(alignment=32)),
}
OBJECTS = {"sized_delete_wrong_size": (32, None), "aligned_delete_wrong_alignment": (64, 64)}


def check_reports(reports: list[dict], expected: dict, src: str, arch: str, cxx: bool) -> None:
    assert [r["bug_type"] for r in reports] == [v[0] for v in expected.values()], [r["bug_type"] for r in reports]
    for (case, (bug, call, request)), r in zip(expected.items(), reports):
        fn = case + "()" if cxx else case
        # the title and the first frame after the allocator's entry: the caller, at the marked line
        assert r["function"] == fn, (case, r["function"])
        assert r["stack"][1]["function"] == fn and r["stack"][1]["line"] == source_line(src, case, arch), \
            (case, r["stack"][:3])
        q = r["request"]
        assert q["function"] == call, (case, q)
        for k, v in request.items():
            assert q[k] == v, (case, k, q)
        if bug == "new-delete-type-mismatch":
            o = r["object"]
            size, align = OBJECTS[case]
            assert r["access"] == "free" and o["offset"] == 0 and o["size"] == size and o["alignment"] == align
            assert o["state"] == "allocated" and o["alloc_stack"][0]["function"] == fn, (case, o)
        else:
            assert r["access"] == "allocate" and "object" not in r, (case, r)


def libc_file(exe: str, arch: str, link: str) -> str:
    return exe if link == "static" else ("/lib/x86_64-linux-gnu/libc.so.6" if arch == "x86_64"
                                         else ARM64_SYSROOT + "/lib/libc.so.6")


def same_function(path: str, a: str, b: str) -> bool:
    """Do symbols a and b name one function in this ELF file (its symbol tables, read here)?"""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        found: dict[str, set[int]] = {a: set(), b: set()}
        for sec in elf.iter_sections():
            if isinstance(sec, SymbolTableSection):
                for sym in sec.iter_symbols():
                    name = sym.name.split("@")[0]
                    if name in found and sym["st_value"]:
                        found[name].add(sym["st_value"])
    return bool(found[a] & found[b])


def c_expected(exe: str, arch: str, link: str) -> dict:
    """glibc before 2.38 makes aligned_alloc an alias of memalign: one function, memalign's
    rules (the library's symbol table says whether it does)."""
    if not same_function(libc_file(exe, arch, link), "aligned_alloc", "memalign"):
        return C_EXPECTED
    shared = "memalign/aligned_alloc"
    return {**C_EXPECTED, "memalign_alignment": ("invalid-allocation-alignment", shared, dict(size=16, alignment=3)),
            "aligned_alloc_alignment": ("invalid-allocation-alignment", shared, dict(size=24, alignment=3))}


def _same_output(res, ref) -> None:
    assert res.stdout == ref.stdout, (res.stdout.decode(), ref.stdout.decode(), tail(res))


@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_c_allocation_errors(arch, link, tmp_path):
    """Each refused request is reported at its caller with what it asked, and (--continue) then
    fails exactly as natively; --allocator-errors null fails them the same way, silently."""
    exe = build("alloc_errors", arch, link)
    ref = native(exe, "errors", arch=arch)
    assert ref.returncode == 0 and b"NULL" in ref.stdout
    res, reports = run_report(tmp_path / "r.json", "--continue", exe, "errors", status=99)
    check_reports(reports, c_expected(exe, arch, link), C, arch, cxx=False)
    _same_output(res, ref)
    res, reports = run_report(tmp_path / "n.json", "--allocator-errors", "null", exe, "errors")
    assert reports == [], tail(res)
    _same_output(res, ref)


def test_c_out_of_memory(arch, tmp_path):
    """Under RLIMIT_AS: out-of-memory, at the caller, and the allocation that fits still works.
    The oracle is the x86-64 native run on both architectures: qemu-user ignores RLIMIT_AS."""
    ref = native(build("alloc_errors", "x86_64", "dynamic"), "out_of_memory")
    assert ref.stdout == b"malloc 96M: NULL errno=12\nmalloc 8M: ptr errno=0\n", ref.stdout
    exe = build("alloc_errors", arch, "dynamic")
    res, reports = run_report(tmp_path / "r.json", "--continue", exe, "out_of_memory", status=99)
    assert [r["bug_type"] for r in reports] == ["out-of-memory"], tail(res)
    r = reports[0]
    assert r["function"] == "out_of_memory" and r["stack"][1]["line"] == source_line(C, "out_of_memory")
    q = r["request"]
    assert q["function"] == "malloc" and q["size"] == 96 << 20 and 8 << 20 < q["limit"] < 64 << 20, q
    _same_output(res, ref)


def test_c_first_report_stops(arch, tmp_path):
    """By default a refused request stops the run, as every report does (ASan's default is to
    report these too: allocator_may_return_null=0)."""
    exe = build("alloc_errors", arch, "static")
    res, reports = run_report(tmp_path / "r.json", exe, "errors", status=99)
    assert [r["bug_type"] for r in reports] == ["allocation-size-too-big"] and res.stdout == b"", tail(res)
    text = res.stderr.decode()
    assert "\nAllocation of size 2199023255552 by task alloc_errors/" in text, text
    assert "\nmalloc() asked for 0x20000000000 bytes, more than the largest allocation emsan supports" in text


@pytest.mark.parametrize("src,cxx", [("alloc_errors", False), ("alloc_contract", True)])
def test_correct_calls_no_report(arch, src, cxx, tmp_path):
    exe = build(src, arch, "dynamic", cxx=cxx)
    ref = native(exe, "correct", arch=arch)
    assert ref.returncode == 0 and ref.stdout.endswith(b"correct: done\n")
    res, reports = run_report(tmp_path / "r.json", exe, "correct")
    assert reports == [], tail(res)
    _same_output(res, ref)


@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_cxx_allocation_contract(arch, link, tmp_path):
    """Throwing new reports, then throws std::bad_alloc through libstdc++ (the new-handler is
    called as natively); nothrow new returns NULL; sized and aligned delete are checked."""
    exe = build("alloc_contract", arch, link, cxx=True)
    ref = native(exe, "errors", arch=arch)
    assert ref.returncode == 0 and b"new-handler: called 3 times, then bad_alloc" in ref.stdout, ref.stdout
    res, reports = run_report(tmp_path / "r.json", "--continue", exe, "errors", status=99)
    check_reports(reports, CXX_EXPECTED, CXX, arch, cxx=True)
    _same_output(res, ref)
    # no allocation errors then, but the deletes are bugs of another kind
    res, reports = run_report(tmp_path / "n.json", "--allocator-errors", "null", "--continue", exe, "errors", status=99)
    assert [r["bug_type"] for r in reports] == ["new-delete-type-mismatch"] * 2, tail(res)
    _same_output(res, ref)


def test_cxx_uncaught_bad_alloc(arch, tmp_path):
    """Uncaught, std::bad_alloc ends the program through std::terminate and abort (SIGABRT: 134)
    as natively; by default the report stops it first."""
    exe = build("alloc_contract", arch, "dynamic", cxx=True)
    ref = native(exe, "new_uncaught", arch=arch)
    terminate = b"terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n"
    assert ref.returncode == -6 and ref.stderr.startswith(terminate), ref.stderr
    res, reports = run_report(tmp_path / "n.json", "--allocator-errors", "null", exe, "new_uncaught", status=134)
    assert reports == [] and res.stderr.startswith(terminate), tail(res)
    res, reports = run_report(tmp_path / "r.json", exe, "new_uncaught", status=99)
    assert [(r["bug_type"], r["function"]) for r in reports] == [("allocation-size-too-big", "new_uncaught()")]
    assert reports[0]["stack"][1]["line"] == source_line(CXX, "new_uncaught")
    assert reports[0]["request"] == {"function": "operator new[](unsigned long)", "size": (2**63 - 1) & ~7,
                                     "count": None, "alignment": None, "limit": None, "in_use": None}
