"""Overflows through _FORTIFY_SOURCE's checked string functions (tests/guest/fortify.c built with
-D_FORTIFY_SOURCE=2), on x86-64 and arm64, static and dynamic.

Oracles: the native run (x86-64) or qemu-aarch64 (arm64) shows that each overflow case goes
through a checked variant whose check fails (glibc aborts: "buffer overflow detected"), and is
what a correct program's run must print; the guest's source gives what each call writes or reads
(sizes, offsets) and the line the report must point at (marker comments). emsan must report the
overflow as it reports one through the plain function, at the caller, and otherwise leave glibc's
behaviour alone (an overflow of a member inside its allocation: no report, glibc's abort)."""
from __future__ import annotations

import pytest

from conftest import build, native, run_report, source_line, tail

SRC = "fortify.c"
FLAGS = ("-D_FORTIFY_SOURCE=2",)
# case -> (access, size, offset in the object, object size, glibc's check fails natively)
EXPECTED = {
    "memcpy_chk": ("write", 12, 0, 8, True),
    "memset_chk": ("write", 12, 0, 8, True),
    "strcpy_chk": ("write", 11, 0, 8, True),           # ten characters and the NUL
    "strncpy_chk": ("write", 12, 0, 8, True),          # strncpy pads to n
    "strcat_chk": ("write", 6, 3, 8, True),            # "defgh" and the NUL after "abc"
    "memcpy_chk_source": ("read", 8, 0, 4, False),     # the check passes: the plain function's checks
    # the wide twins: counts in wchar_t (4 bytes)
    "wmemcpy_chk": ("write", 24, 0, 16, True),         # six wide characters into four
    "wcscpy_chk": ("write", 44, 0, 16, True),          # ten and the NUL into four
    "wcscat_chk": ("write", 32, 12, 32, True),         # "defghij" and the NUL after "abc", into eight
}
GLIBC_ABORT = b"*** buffer overflow detected ***: terminated"


@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_fortified_overflows_reported_at_the_caller(arch, link, tmp_path):
    exe = build("fortify", arch, link, FLAGS)
    for case, (access, size, offset, obj_size, aborts) in EXPECTED.items():
        ref = native(exe, case, arch=arch)
        assert (ref.returncode == -6 and GLIBC_ABORT in ref.stderr) == aborts, (case, ref.returncode, ref.stderr)
        res, reports = run_report(tmp_path / f"{case}.json", exe, case, status=99)
        assert [r["bug_type"] for r in reports] == ["slab-out-of-bounds"], (case, tail(res))
        r = reports[0]
        fn = "via_" + case
        assert r["function"] == fn, (case, r["function"])
        assert r["access"] == access and r["size"] == size, (case, r["access"], r["size"])
        o = r["object"]
        assert o["offset"] == offset and o["size"] == obj_size and o["alloc_stack"][0]["function"] == fn, (case, o)
        caller = [f for f in r["stack"] if f["function"] == fn]
        assert caller and caller[0]["line"] == source_line(SRC, case), (case, r["stack"][:4])
        assert GLIBC_ABORT not in res.stderr, case          # the report stopped the run first


@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_fortified_check_alone_and_correct_calls(arch, link, tmp_path):
    """A member overflowed inside its allocation: only glibc's check knows (no report, its abort,
    as natively). The correct calls: no report, the native output."""
    exe = build("fortify", arch, link, FLAGS)
    ref = native(exe, "member_overflow", arch=arch)
    assert ref.returncode == -6 and GLIBC_ABORT in ref.stderr, ref.stderr
    res, reports = run_report(tmp_path / "m.json", exe, "member_overflow", status=134)
    assert reports == [] and GLIBC_ABORT in res.stderr, tail(res)
    ref = native(exe, "correct", arch=arch)
    assert ref.returncode == 0 and ref.stdout.endswith(b"correct: done\n"), ref.stdout
    res, reports = run_report(tmp_path / "c.json", exe, "correct")
    assert reports == [] and res.stdout == ref.stdout, tail(res)
