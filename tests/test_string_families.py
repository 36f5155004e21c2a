"""The wide-character string functions and the span, search, case-insensitive and duplicating
ones (native/intercept.c) on heap strings, both architectures (tests/guest/string_families.c):

* correct use on strings of 1..300 elements gives the native (qemu-aarch64) results and no report;
* a call touching one element past the end of its object gives one report per call site, at the
  caller (its marked line), with the range the function was entitled to touch (ASan's ranges, the
  C semantics): its bug type, access kind and size, offset in the object and the function named
  in the note.
"""
from __future__ import annotations

import os
import re

import pytest

from conftest import EXIT_REPORT, build, emsan, native, run_report, source_line, tail

WIDE = ["wcslen", "wcsnlen", "wcschr", "wcsrchr", "wmemchr", "wcscmp", "wcsncmp", "wmemcmp", "wcscpy", "wcpcpy",
        "wcsncpy", "wcpncpy", "wcscat", "wcsncat", "wmemcpy", "wmemmove", "wmempcpy", "wmemset", "wcsdup"]
NARROW = ["strspn", "strcspn", "strpbrk", "strstr", "memmem", "strcasecmp", "strncasecmp", "strdup", "strndup"]
WRITES = {"wcscpy", "wcpcpy", "wcsncpy", "wcpncpy", "wcscat", "wcsncat", "wmemcpy", "wmemmove", "wmempcpy", "wmemset"}
LENGTHS = [1, 2, 15, 64, 299]


def expected(fn: str, n: int) -> tuple:
    """(access, size, offset, object size) of the one-past-the-end call on n elements: the
    function may touch n+1 elements from the object's start; strcat-like ones write the
    appended n - n//2 elements and the terminator after the n//2 already there."""
    elem = 4 if fn in WIDE else 1
    access = "write" if fn in WRITES else "read"
    if fn in ("wcscat", "wcsncat"):
        return access, elem * (n - n // 2 + 1), elem * (n // 2), elem * n
    return access, elem * (n + 1), 0, elem * n


# How the C library's functions are found: by name in a static program; in a dynamic one by
# name in the library's separate debug file when installed, else through its IFUNC resolvers
# and exported names (an empty EMSAN_DEBUG_FILE_DIRECTORY hides the debug files).
LINKS = ["static", "dynamic", "dynamic-no-debug-file"]


def setup(arch: str, link: str, tmp_path) -> tuple[str, dict | None]:
    exe = build("string_families", arch, link.split("-")[0], ("-fno-builtin",))
    env = {**os.environ, "EMSAN_DEBUG_FILE_DIRECTORY": str(tmp_path)} if link.endswith("no-debug-file") else None
    return exe, env


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("mode", ["generic", "sw-tags"])
def test_correct_use_matches_reference(arch, link, mode, tmp_path):
    if mode == "sw-tags" and (arch != "arm64" or link != "static"):
        pytest.skip("tag modes: arm64 only; one link kind is enough")
    exe, env = setup(arch, link, tmp_path)
    ref = native(exe, "ok", arch=arch)
    assert ref.returncode == 0 and len(ref.stdout.splitlines()) == 27
    got = emsan("run", "--mode", mode, exe, "ok", env=env, status=0)
    assert got.stderr == b"", tail(got)
    assert got.stdout == ref.stdout


@pytest.mark.parametrize("link", LINKS)
def test_one_past_the_end_reported_at_the_caller(arch, link, tmp_path):
    exe, env = setup(arch, link, tmp_path)
    # (the overflowed strings are left to the exit: leaks are not this test's subject)
    res, reports = run_report(tmp_path / "r.json", "--continue", "--no-leaks", exe, "over", env=env,
                              status=EXIT_REPORT)
    assert res.stdout == b"over done\n", tail(res)
    got = {}
    for r in reports:
        m = re.fullmatch(r"over_(\w+)_(\d+)", r["function"] or "")
        assert m, r["function"]
        key = (m.group(1), int(m.group(2)))
        assert key not in got, f"{key} reported twice"
        got[key] = r
    assert set(got) == {(fn, n) for fn in WIDE + NARROW for n in LENGTHS}
    for (fn, n), r in sorted(got.items()):
        access, size, offset, obj_size = expected(fn, n)
        assert (r["bug_type"], r["access"], r["size"], r["object"]["offset"], r["object"]["size"]) == \
            ("slab-out-of-bounds", access, size, offset, obj_size), (fn, n)
        assert f"The access was made by {fn}() on behalf of its caller." in r["notes"], (fn, r["notes"])
        # the interceptor's caller is the title, at the call's line
        assert r["stack"][1]["function"] == r["function"], (fn, n)
        assert r["stack"][1]["line"] == source_line("string_families.c", f"over.{fn}"), (fn, n)
