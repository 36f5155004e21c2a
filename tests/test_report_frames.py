"""Frames as tools outside emsan can use them, and the exit status CI sees.

* A frame with no symbol is `module+offset`, the offset addr2line takes for that file (checked
  with addr2line on the unstripped twin of a stripped program), in text and JSON.
* Separate debug files are found by build-id and by .gnu_debuglink, as gdb finds them.
* DWARF is indexed per compile unit, lazily, and cached on disk by build-id: the lines match
  addr2line, and a cached index answers without the file.
* --continue ends with the error status when anything was reported (Valgrind's --error-exitcode).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conftest import EXIT_REPORT, build, emsan, have, run_report, source_line

TOOLS = {"x86_64": ("strip", "objcopy", "addr2line"),
         "arm64": ("aarch64-linux-gnu-strip", "aarch64-linux-gnu-objcopy", "aarch64-linux-gnu-addr2line")}


def tools(arch: str) -> tuple[str, str, str]:
    for t in TOOLS[arch]:
        if not have(t):
            pytest.skip(f"{t} is not installed")
    return TOOLS[arch]


def addr2line(arch: str, exe: str, offsets: list[int]) -> list[tuple[str, str]]:
    out = subprocess.run([tools(arch)[2], "-f", "-e", exe, *[hex(o) for o in offsets]], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return [(fn, os.path.basename(loc.split()[0]).rsplit(":", 1)[0]) for fn, loc in zip(out[::2], out[1::2])]


def report(exe: str, tmp_path, *opts: str, case: str = "kmalloc_oob_right") -> tuple[dict, str]:
    res, reports = run_report(tmp_path / "r.json", *opts, exe, case, status=EXIT_REPORT)
    return reports[0], res.stderr.decode(errors="replace")


def test_frames_without_symbols_have_module_offsets(arch, tmp_path):
    """A stripped PIE: every frame of the program is `kasan_cases+0x...` with the offset that
    addr2line maps, in the unstripped file, to the function and source file the frame is in."""
    strip = tools(arch)[0]
    exe = build("kasan_cases", arch, "pie", ("-fno-builtin",))
    stripped = str(tmp_path / "kasan_cases")
    shutil.copy(exe, stripped)
    subprocess.run([strip, stripped], check=True)
    rep, text = report(stripped, tmp_path)
    own = [f for f in rep["stack"] if f["module"] == stripped]
    assert len(own) >= 2 and all(f["function"] is None for f in own)
    offsets = [int(f["module_offset"], 16) for f in own]
    assert all(int(f["addr"], 16) - o == int(own[0]["addr"], 16) - offsets[0] for f, o in zip(own, offsets))
    # Return addresses: the call is the byte before (as the symbolizer looks them up).
    probes = [o - (0 if i == 0 and f is rep["stack"][0] else 1) for i, (f, o) in enumerate(zip(own, offsets))]
    where = addr2line(arch, exe, probes)
    assert where[0] == ("kmalloc_oob_right", "kasan_cases.c")
    assert ("main", "kasan_cases.c") in where
    assert f"BUG: KASAN: slab-out-of-bounds in kasan_cases+{offsets[0]:#x}" in text
    trace = text.splitlines()[text.splitlines().index("Call Trace:") + 1:]
    assert trace[0] == f" kasan_cases+{offsets[0]:#x}"


@pytest.mark.parametrize("how", ["build-id", "debuglink"])
def test_separate_debug_file(how, tmp_path):
    """The stripped program's names and lines come from its debug file, found as gdb finds it."""
    strip, objcopy, _ = tools("x86_64")
    exe = build("kasan_cases", "x86_64", "dynamic", ("-fno-builtin", "-Wl,--build-id"))   # malloc from libc
    root = tmp_path / "root"
    prog = tmp_path / "bin" / "kasan_cases"
    prog.parent.mkdir()
    shutil.copy(exe, prog)
    debug = tmp_path / "kasan_cases.debug"
    subprocess.run([objcopy, "--only-keep-debug", exe, str(debug)], check=True)
    subprocess.run([strip, "--strip-all", str(prog)], check=True)
    opts: tuple[str, ...] = ()
    if how == "build-id":
        note = subprocess.run(["readelf", "-n", str(prog)], capture_output=True, text=True).stdout
        bid = re.search(r"Build ID: ([0-9a-f]+)", note).group(1)
        place = root / "usr/lib/debug/.build-id" / bid[:2] / (bid[2:] + ".debug")
        place.parent.mkdir(parents=True)
        shutil.copy(debug, place)
        opts = ("--sysroot", str(root))         # the guest's root: /usr/lib/debug is looked for there
    else:
        subprocess.run([objcopy, f"--add-gnu-debuglink={debug}", str(prog)], check=True, cwd=tmp_path)
        shutil.copy(debug, prog.parent / "kasan_cases.debug")
    rep, text = report(str(prog), tmp_path, *opts)
    assert rep["function"] == "kmalloc_oob_right"
    assert rep["stack"][0]["file"] == "kasan_cases.c"
    assert rep["stack"][0]["line"] == source_line("kasan_cases.c", "oob_right.1")
    assert "BUG: KASAN: slab-out-of-bounds in kmalloc_oob_right+0x" in text


def test_lazy_line_index_matches_addr2line_and_is_cached(tmp_path, monkeypatch):
    from emsan.report.dwarf import DwarfIndex
    from emsan.report.symbolize import ModuleSymbols

    exe = build("kasan_cases", "x86_64", "static", ("-fno-builtin",))
    monkeypatch.setenv("EMSAN_CACHE_DIR", str(tmp_path / "cache"))
    syms = ModuleSymbols(exe)
    funcs = [(a, s, n) for a, s, n in syms.syms if s > 8 and n.startswith(("kmalloc", "kasan", "krealloc", "main"))]
    assert len(funcs) > 20
    probes = [a + s // 2 for a, s, _ in funcs]
    want = addr2line("x86_64", exe, probes)
    got = [syms.line(p) for p in probes]
    assert [(n, os.path.basename(g[0]) if g else "??") for (_, _, n), g in zip(funcs, got)] == want
    lines = [int(ln.split()[0].split(":")[-1]) for ln in subprocess.run(
        ["addr2line", "-e", exe, *[hex(p) for p in probes]], capture_output=True, text=True).stdout.splitlines()]
    assert [g[1] for g in got] == lines
    cached = list((tmp_path / "cache").rglob("lines-*"))
    assert cached and len(list((tmp_path / "cache").rglob("units"))) == 1
    # A fresh index with the same key answers from the cache alone: the file is not read again.
    gone = DwarfIndex(str(tmp_path / "no-such-file"), syms.dwarf._dir.name)
    assert [gone.line(p) for p in probes] == got


def test_continue_exits_with_error_status_after_a_report(tmp_path):
    exe = build("kasan_cases", "x86_64", "static", ("-fno-builtin",))
    res = emsan("run", "--continue", exe, "kmalloc_oob_right", status=EXIT_REPORT)   # the guest itself exits 0
    assert res.stderr.decode().count("BUG: KASAN:") == 3                # the kernel test makes 3
    emsan("run", "--continue", "--error-exitcode", "7", exe, "kmalloc_uaf", status=7)
    clean = build("hello", "x86_64", "static")
    res = emsan("run", "--continue", clean, "a", "5", status=5)         # no report: the guest's status
    assert b"BUG:" not in res.stderr
