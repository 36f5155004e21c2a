"""No report for correct code, and the right report for the bug next to it.

* Unaligned loads that end at a heap object's end: through the MMIO view the engine performs them
  as the aligned loads around them, which reach past the object; emsan judges the instruction's
  own bytes (both --checks modes, both architectures).
"""
from __future__ import annotations

import os

import pytest

from conftest import EXIT_REPORT, build, emsan, native, run_report, source_line, tail


@pytest.mark.parametrize("checks", ["inline", "mmio", "hook"])
def test_unaligned_loads_at_an_objects_end(arch, checks, tmp_path):
    exe = build("unaligned_loads", arch, "static")
    ref = native(exe, "inbounds", arch=arch)
    assert ref.returncode == 0
    got = emsan("run", "--checks", checks, exe, "inbounds", status=0)
    assert got.stderr == b"", tail(got)
    assert got.stdout == ref.stdout
    for size in (2, 4, 8, 16):
        res, reports = run_report(tmp_path / f"{size}.json", "--checks", checks, exe, "over", str(size),
                                  status=EXIT_REPORT)
        (rep,) = reports
        # A memory hook sees a 16-byte load as 8-byte pieces; the MMIO view decodes the instruction.
        want = 8 if checks == "hook" and size == 16 else size
        assert (rep["bug_type"], rep["access"], rep["size"], rep["object"]["offset"]) == \
            ("slab-out-of-bounds", "read", want, 61), tail(res)
        assert rep["function"] == "load"
        assert rep["stack"][0]["line"] == source_line("unaligned_loads.c", f"load.{size}", arch)


# Read-ahead (README, "Read-ahead"): ld.so's own strcmp/strchr/strlen, which dlopen() runs on
# its argument, are not intercepted when no debug file names them (an empty
# EMSAN_DEBUG_FILE_DIRECTORY hides libc6-dbg; Debian's arm64 cross root has none).
def no_debug_files(tmp_path) -> dict:
    return {**os.environ, "EMSAN_DEBUG_FILE_DIRECTORY": str(tmp_path)}


@pytest.mark.parametrize("checks", ["inline", "mmio", "hook"])
def test_readahead_of_uncovered_string_code_is_not_reported(arch, checks, tmp_path):
    """Names of 1..200 characters, each in an object of exactly its size: every alignment of
    the NUL against the routines' 16-byte vectors and 64-byte loops."""
    exe = build("readahead_dlopen", arch, "dynamic")
    ref = native(exe, "terminated", arch=arch)
    got = emsan("run", "--checks", checks, exe, "terminated", env=no_debug_files(tmp_path), status=0)
    assert got.stderr == b"", tail(got)
    assert got.stdout == ref.stdout == b"loaded 0 of 200\n" and ref.returncode == 0


@pytest.mark.parametrize("checks", ["inline", "mmio", "hook"])
def test_real_overflow_through_the_same_code_is_reported(arch, checks, tmp_path):
    """The same routines on a name with no NUL in its object: they read on past it, and the
    loads past the object hold no terminator, so the read-ahead rule does not excuse them."""
    exe = build("readahead_dlopen", arch, "dynamic")
    res, reports = run_report(tmp_path / "r.json", "--checks", checks, exe, "unterminated",
                              env=no_debug_files(tmp_path), status=EXIT_REPORT)
    (rep,) = reports
    assert (rep["bug_type"], rep["access"], rep["object"]["size"]) == ("slab-out-of-bounds", "read", 90), tail(res)
    assert rep["size"] in (8, 16) and 74 < rep["object"]["offset"] < 90      # a load reaching past byte 89
    assert rep["stack"][0]["module"].split("/")[-1].startswith("ld-linux")    # ld.so's own routine
    caller = next(f for f in rep["stack"] if f["function"] == "open_name")
    assert caller["line"] == source_line("readahead_dlopen.c", "dlopen")
