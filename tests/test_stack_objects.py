"""--stack-checks full: stack objects from DWARF in unmodified -g binaries (tests/guest/stack_dwarf.c),
x86-64 and arm64, -O0 and -O2, with and without frame pointers.

Oracles: the guest's source says which variable each case overruns, how large it is, what the
libc function or system call touches and where (its marker); the guest prints the variable's
address before the call. Correct programs doing the tricky things (struct copies, arrays of
structs, alloca, VLAs, inlined locals, recursion, a signal handler's frame, libc calling back,
by-value struct parameters, longjmp) must print what the native run prints and report nothing."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import BUILD, GUEST, build, emsan, have, native, run_report, source_line
from test_stacks import many

CONFIGS = {"O0": ("-O0",), "O2": ("-O2",), "O0-nofp": ("-O0", "-fomit-frame-pointer"),
           "O2-nofp": ("-O2", "-fomit-frame-pointer")}
LONG_TEXT = 95
# case: (variable, its size, access, bytes touched, offset of the access in the variable)
CASES = {
    "over_memcpy": ("dest", 12, "write", 13, 0),
    "over_strcpy": ("name", 8, "write", 13, 0),
    "over_memset": ("vals", 16, "write", 20, 0),
    "over_read": ("line", 6, "write", 10, 0),                  # read(2) of 10 bytes
    "over_strncat": ("path", 16, "write", 11, 9),              # 10 bytes and a NUL after "/usr/lib/"
    "over_inlined": ("tmp", 5, "write", 7, 0),                 # in an always_inline function's frame
    "under_memcpy": ("s", 32, "write", 13, -4),                # from 4 bytes below the struct
    "smash": ("dest", 8, "write", LONG_TEXT + 1, 0),
}
FRAME = {"over_inlined": "over_inlined"}                       # the frame is the function it was inlined into
SUBSET = ("over_memcpy", "over_read", "over_inlined", "under_memcpy")   # for the O2 and O0-nofp builds


def guest(arch: str, config: str, flags: tuple[str, ...] = (), link: str = "static") -> str:
    return build("stack_dwarf", arch, link, (*CONFIGS[config], "-fno-stack-protector", *flags))


def check_case(exe: str, case: str, tmp, *extra: str) -> str:
    """One bug case: exactly one report, the variable, its frame, the access."""
    var, var_size, access, size, var_off = CASES[case]
    p, reps = run_report(tmp / f"{case}.json", "--stack-checks", "full", *extra, exe, case, status=99)
    err = p.stderr.decode(errors="replace")
    assert len(reps) == 1, (case, err)
    r = reps[0]
    obj = int(re.search(rb"obj (0x[0-9a-f]+)", p.stdout).group(1), 16)
    assert (r["bug_type"], r["access"], r["size"]) == ("stack-out-of-bounds", access, size), (case, err)
    assert int(r["address"], 16) == obj + var_off, (case, err)
    v = r["variable"]
    assert (v["name"], v["size"], v["offset"]) == (var, var_size, var_off), (case, err)
    so = r["stack_object"]
    func = FRAME.get(case, case)
    assert so["frame"]["function"] == func, (case, err)
    named = {o["name"]: (o["start"], o["end"]) for o in so["objects"]}
    assert named[var][1] - named[var][0] == var_size and so["offset"] == named[var][0] + var_off, (case, err)
    lines = [f["line"] for f in r["stack"] if f["function"] in (func, "copy_name")]
    assert source_line("stack_dwarf.c", case) in lines, (case, err)
    assert f"[{named[var][0]}, {named[var][1]}) '{var}' <== Memory access at offset {so['offset']}" in err, err
    assert "The buggy address belongs to stack of task stack_dwarf/" in err and f" {func}+" in err, err
    return case


def correct_run(exe: str, arch: str, tmp) -> None:
    ref = native(exe, "correct", arch=arch)
    assert ref.returncode == 0, ref
    p, reps = run_report(tmp / "correct.json", "--stack-checks", "full", "--stats", exe, "correct", status=0)
    err = p.stderr.decode(errors="replace")
    assert reps == [] and p.stdout == ref.stdout, err
    st = dict(kv.split("=", 1) for kv in re.search(r"emsan: stats: (.*)", err).group(1).split(", "))
    # the stack ranges were really looked at, in many frames
    assert st["stack_checks"] == "full" and int(st["stack_frames_checked"]) > 30, st


@pytest.mark.parametrize("config", list(CONFIGS))
def test_overruns_named(arch, config, tmp_path):
    """Each overrun through memcpy, strcpy, memset, strncat, read(2), into an inlined function's
    local, an underwrite, and a smash past the frame: reported as stack-out-of-bounds naming the
    variable, its size, the access and the frame; the correct program reports nothing."""
    exe = guest(arch, config)
    cases = list(CASES) if config in ("O0", "O2-nofp") else list(SUBSET)
    jobs = [(check_case, exe, c, tmp_path) for c in cases] + [(correct_run, exe, arch, tmp_path)]
    many(jobs)


def test_without_dwarf_frame_bounds(arch, tmp_path):
    """Built without -g: no variable to name, but a copy running past the frame's saved return
    address (x86-64) or into its caller's frame record (arm64) is still reported, before the
    return; one that stays in the frame is not (nothing to check it against)."""
    exe = guest(arch, "O2", ("-g0",))
    p, reps = run_report(tmp_path / "r.json", "--stack-checks", "full", exe, "smash", status=99)
    err = p.stderr.decode(errors="replace")
    assert len(reps) == 1 and reps[0]["bug_type"] == "stack-out-of-bounds", err
    r = reps[0]
    obj = int(re.search(rb"obj (0x[0-9a-f]+)", p.stdout).group(1), 16)
    assert int(r["address"], 16) == obj and r["size"] == LONG_TEXT + 1 and "variable" not in r, err
    assert "no DWARF for it" in err and "runs past the frame's end" in err, err
    assert r["stack_object"]["frame"]["function"] == "smash", err
    p, reps = run_report(tmp_path / "o.json", "--stack-checks", "full", exe, "over_memcpy", status=0)
    assert reps == [], p.stderr.decode(errors="replace")


def test_dynamic_and_modes(tmp_path):
    """Dynamically linked (libc's interceptors behind the PLT), x86-64: the variable is named.
    --stack-checks none and ret do not look at stack objects; the default (auto, with the scs
    collector these programs get: libc has no frame pointers) is full, --stacks fp's is none."""
    exe = guest("x86_64", "O2", link="dynamic")
    check_case(exe, "over_memcpy", tmp_path)
    correct_run(exe, "x86_64", tmp_path)
    for extra in (("--stack-checks", "none"), ("--stack-checks", "ret"), ("--stacks", "fp")):
        p = emsan("run", "--stats", *extra, exe, "over_memcpy", status=0)
        err = p.stderr.decode(errors="replace")
        assert "BUG:" not in err and "stack_range_checks" not in err, err
    p = emsan("run", "--stats", exe, "over_memcpy", status=99)
    assert b"stack_checks=full" in p.stderr and b"'dest' <== Memory access" in p.stderr, p.stderr
    p = emsan("run", "--mode", "kfence", "--stack-checks", "full", exe, "correct")
    assert p.returncode not in (0, 99) and b"--stack-checks full needs a KASAN mode" in p.stderr


def test_objects_at_scopes_and_places():
    """dwarf_locals.objects_at: a variable counts where its scope (lexical block, inlined
    subroutine) and one of its places (the single expression, or a location-list entry) cover the
    address; elsewhere it is no object."""
    from emsan.report.dwarf_locals import objects_at
    from emsan.report.dwarf_locals import FB
    locs = {"entry": 0x1000, "base": -1, "vars": [
        ["whole", 16, None, [[None, None, FB, -32]]],                  # all of the function
        ["block", 8, [[0x1010, 0x1020]], [[None, None, FB, -48]]],      # a lexical block
        ["listed", 4, None, [[0x1000, 0x1008, FB, -52], [0x1018, 0x1030, 7, 8]]],   # a location list
    ]}
    assert objects_at(locs, 0x1004) == [(FB, -32, -16, "whole"), (FB, -52, -48, "listed")]
    assert objects_at(locs, 0x1014) == [(FB, -32, -16, "whole"), (FB, -48, -40, "block")]
    assert objects_at(locs, 0x101c) == [(FB, -32, -16, "whole"), (FB, -48, -40, "block"), (7, 8, 12, "listed")]
    assert objects_at(locs, 0x1040) == [(FB, -32, -16, "whole")]


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_clang_register_frame_base(opt, tmp_path):
    """clang's DWARF: frame bases and places in a register (rbp, rsp), related to the CFA by the
    CFI rule at the call. x86-64, static: every case named as with GCC, and nothing on the
    correct program."""
    if not have("clang"):
        pytest.skip("clang is not installed")
    out = BUILD / f"clang-x86_64-static{opt}" / "stack_dwarf"
    src = GUEST / "stack_dwarf.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["clang", "--target=x86_64-linux-gnu", opt, "-g", "-static", "-fno-stack-protector",
                        "-o", f"{out}.tmp", str(src)], check=True, capture_output=True)
        os.replace(f"{out}.tmp", out)
    many([(check_case, str(out), c, tmp_path) for c in CASES] + [(correct_run, str(out), "x86_64", tmp_path)])


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_row_at_finds_what_a_scan_finds(arch):
    """stackobjects.row_at (a binary search over the packed CFI rows) gives, for addresses before,
    at, between and after libc's rows, the row a linear scan of the unpacked rows gives."""
    from emsan.sanitizer.stackobjects import row_at
    from emsan.sanitizer.stacks import ROW, cfi_rows

    libc = {"x86_64": "/lib/x86_64-linux-gnu/libc.so.6", "arm64": "/usr/aarch64-linux-gnu/lib/libc.so.6"}[arch]
    if not os.path.exists(libc):
        pytest.skip(f"no {libc}")
    data = cfi_rows(libc, arch == "arm64")
    rows = list(ROW.iter_unpack(data))
    assert len(rows) > 1000 and [r[0] for r in rows] == sorted(r[0] for r in rows)

    def scan(pc):
        found = None
        for r in rows:
            if r[0] > pc:
                break
            found = r
        return found
    step = max(1, len(rows) // 300)
    probes = [0, rows[0][0] - 1, rows[-1][0], rows[-1][0] + 12345]
    probes += [p for r in rows[::step] for p in (r[0] - 1, r[0], r[0] + 1)]
    for pc in probes:
        assert row_at(data, pc) == scan(pc), hex(pc)
    assert row_at(b"", 0x1000) is None
