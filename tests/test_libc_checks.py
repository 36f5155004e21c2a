"""Bad ranges passed to C library functions whose own code runs (tests/guest/libc_checks.c): the
number parsers, the printf family's strings and output buffers, sscanf's input, fputs/fwrite
buffers and _FORTIFY_SOURCE's checked reads, on x86-64 and arm64, static and dynamic, built plain
and with -D_FORTIFY_SOURCE=2.

Oracles: the guest's source gives what each call reads or writes (the sizes below are the
text's length and terminator, the output the format makes, the count passed) and the line a
report must point at (marker comments); the native run (x86-64) or qemu-aarch64 (arm64) shows
which fortified calls glibc aborts ("buffer overflow detected") and what the correct calls print.
emsan must report each at the caller, in the user's function, before the library's own code
touches the bad range."""
from __future__ import annotations

import pytest

from conftest import build, native, run_report, source_line, tail

SRC = "libc_checks.c"
FORTIFY = ("-D_FORTIFY_SOURCE=2",)
# case -> (access, size, object size, the reporting function, glibc aborts it when fortified)
EXPECTED = {
    "atoi": ("read", 4, 3, "via_atoi", False),                 # "123" and the byte after it
    "strtol": ("read", 5, 4, "via_strtol", False),             # "0x1f" and the byte after it
    "strtoull": ("read", 5, 4, "via_strtoull", False),         # " +77" and the byte after it
    "strtod": ("read", 6, 5, "via_strtod", False),             # "1.5e3" and the byte after it
    "strtol_endptr": ("write", 8, 4, "via_strtol_endptr", False),  # the char * stored at endptr
    "printf_s": ("read", 6, 5, "via_printf_s", False),         # "hello" and its missing NUL
    "puts": ("read", 6, 5, "via_puts", False),                 # printf("%s\n") is puts()
    "fprintf_s": ("read", 6, 5, "via_fprintf_s", False),       # %.9s: up to the missing NUL
    "sprintf": ("write", 10, 8, "via_sprintf", True),          # "12345-abc" and the NUL
    "sprintf_double": ("write", 6, 4, "via_sprintf_double", True),  # "3.142" and the NUL
    "sprintf_locale": ("write", 8, 4, "via_sprintf_locale", True),  # "1234567" (C locale) and the NUL
    "snprintf": ("write", 14, 8, "via_snprintf", True),        # 13 characters and the NUL (n = 16)
    "vsprintf": ("write", 11, 6, "format_into", False),        # "abc:beef:z" and the NUL
    "sscanf": ("read", 5, 4, "via_sscanf", False),             # the input "1234" and the byte after
    "fwrite": ("read", 12, 8, "via_fwrite", False),            # 1 * 12 bytes
    "fputs": ("read", 6, 5, "via_fputs", False),
    "read_chk": ("write", 16, 8, "via_read_chk", True),        # __read_chk: 16 bytes into 8
    "fread_chk": ("write", 16, 8, "via_fread_chk", True),      # __fread_chk: 1 * 16 bytes into 8
    # scanf's conversions, judged when the call returns (its result says which stored)
    "sscanf_s": ("write", 12, 4, "via_sscanf_s", False),       # "overflowing" and the NUL
    "sscanf_width": ("write", 7, 4, "via_sscanf_width", False),  # %6s: six characters and the NUL
    "sscanf_c": ("write", 6, 4, "via_sscanf_c", False),         # %6c: six characters, no NUL
    "sscanf_int": ("write", 4, 2, "via_sscanf_int", False),     # an int into a short
    "vsscanf": ("write", 4, 2, "scan_from", False),             # %[a-z]: "xyz" and the NUL
    # judged when the call returns (or glibc's check fails inside it): the input is LINE
    "fgets": ("write", 15, 8, "via_fgets", True),              # the 14-byte line and its NUL
    "fread": ("write", 12, 8, "via_fread", True),              # the 12 items read
    "fgets_late": ("write", 15, 8, "via_fgets_late", False),   # the second line, at a site used before
}
LINE = b"0123456789abc\n"
INPUT = {"fgets_late": b"abc\n" + LINE}
# __fgets_chk stops at the object's 8 bytes and fails: the plain fgets would store a 9th; so does
# __sprintf_chk at the 4-byte object's 5th
FORTIFIED_SIZE = {"fgets": 9, "sprintf_locale": 5}
# the plain build's calls that differ from the fortified build's (printf, not __printf_chk...)
PLAIN = ("atoi", "printf_s", "fprintf_s", "sprintf", "sprintf_double", "sprintf_locale", "snprintf", "vsprintf", "fgets",
         "fread", "fgets_late")
GLIBC_ABORT = b"*** buffer overflow detected ***: terminated"


def check_case(exe: str, case: str, arch: str, tmp_path, fortified: bool) -> None:
    access, size, obj_size, fn, aborts = EXPECTED[case]
    if fortified:
        size = FORTIFIED_SIZE.get(case, size)
        ref = native(exe, case, arch=arch, input=INPUT.get(case, LINE))
        assert (ref.returncode == -6 and GLIBC_ABORT in ref.stderr) == aborts, (case, ref.returncode, ref.stderr)
    res, reports = run_report(tmp_path / f"{case}.json", exe, case, status=99, input=INPUT.get(case, LINE))
    assert [r["bug_type"] for r in reports] == ["slab-out-of-bounds"], (case, tail(res))
    r = reports[0]
    assert r["function"] == fn, (case, r["function"], r["stack"][:3])
    assert (r["access"], r["size"]) == (access, size), (case, r["access"], r["size"])
    o = r["object"]
    assert o["offset"] == 0 and o["size"] == obj_size, (case, o)
    caller = [f for f in r["stack"] if f["function"] == fn]
    assert caller and caller[0]["line"] == source_line(SRC, case), (case, r["stack"][:4])
    assert GLIBC_ABORT not in res.stderr, case              # reported before glibc's own check


@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_fortified_calls_reported_at_the_caller(arch, link, tmp_path):
    exe = build("libc_checks", arch, link, FORTIFY)
    for case in EXPECTED:
        check_case(exe, case, arch, tmp_path, True)


def test_plain_calls_reported_at_the_caller(arch, tmp_path):
    exe = build("libc_checks", arch, "dynamic")
    for case in PLAIN:
        check_case(exe, case, arch, tmp_path, False)


@pytest.mark.parametrize("flags", [(), FORTIFY], ids=["plain", "fortified"])
def test_correct_calls_no_report_native_output(arch, flags, tmp_path):
    exe = build("libc_checks", arch, "static" if flags else "dynamic", flags)
    ref = native(exe, "correct", arch=arch)
    assert ref.returncode == 0 and ref.stdout.endswith(b"correct: done\n"), ref.stdout
    res, reports = run_report(tmp_path / "c.json", exe, "correct")
    assert reports == [] and res.stdout == ref.stdout, tail(res)
    # fgets and fread whose bound exceeds the buffer, with lines that fit: judged at each
    # return (the same call site twice), no report
    lines = b"abc\nde\n"
    ref = native(exe, "fgets_short", arch=arch, input=lines)
    assert ref.returncode == 0 and ref.stdout.endswith(b"fgets_short: done\n"), ref.stdout
    res, reports = run_report(tmp_path / "f.json", exe, "fgets_short", input=lines)
    assert reports == [] and res.stdout == ref.stdout, tail(res)


def test_continue_one_report_per_call(arch, tmp_path):
    """With --continue the library's own code then touches the bad range itself (strtol's parse,
    printf's strlen, sprintf's stores): still one report, at the caller, and the program runs on."""
    exe = build("libc_checks", arch, "dynamic", FORTIFY)
    for case in ("atoi", "printf_s", "fwrite", "vsprintf", "sscanf_s"):
        res, reports = run_report(tmp_path / f"{case}.json", "--continue", exe, case, status=99, input=LINE)
        _access, size, _obj, fn, _aborts = EXPECTED[case]
        assert [(r["function"], r["size"]) for r in reports] == [(fn, size)], (case, tail(res))
