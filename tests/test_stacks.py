"""Stack collectors (--stacks fp|cfi|scs|none, --no-depot, --stats) on real guest programs
(tests/guest/stacks_chain.c, stacks_cxx.cc), x86-64 and arm64: each scenario ends in a
use-after-free at the bottom of a known call chain, and the JSON report's allocation, free and
access stacks are compared with the functions that were really on the stack."""
from __future__ import annotations

import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import build, emsan, run_report, source_line

FP = ("-O2",)
NOFP = ("-O2", "-fomit-frame-pointer")
COLLECTORS = ("fp", "cfi", "scs")
LOOP_LIBC = {"__libc_start_call_main", "__libc_start_main", "__libc_start_main_impl", "_start"}

def chain(fn: str, alloc: list[str] | None = None) -> dict[str, list[str]]:
    return {"alloc": alloc or ["alloc_c", "alloc_b", "alloc_a", fn, "main"], "free": ["free_b", "free_a", fn, "main"],
            "access": ["use_b", "use_a", fn, "main"]}


CHAIN = chain("chain")
EXPECTED = {
    "chain": CHAIN,
    "longjmp": CHAIN | {"alloc": ["alloc_c", "alloc_b", "alloc_a", "chain", "do_longjmp", "main"],
                        "free": ["free_b", "free_a", "chain", "do_longjmp", "main"],
                        "access": ["use_b", "use_a", "chain", "do_longjmp", "main"]},   # jump_a..c are gone
    "recursion": chain("recursion", ["alloc_c"] + ["rec"] * 10 + ["recursion", "main"]),   # rec(0) tail-calls
    "tailcall": chain("tailcall", ["alloc_c", "tail_b", "tailcall", "main"]),   # tail_a jumped to tail_b
    "deep": chain("deep_chain", ["alloc_c"] + ["deep"] * 63),                   # 500 frames, capped at 64
    "wrapped": chain("wrapped", ["wrapped", "main"]),                          # after xmalloc's tail jump
}
CXX = {"alloc": ["obj_c", "obj_b", "obj_a", "main"], "free": ["drop_b", "drop_a", "main"],
       "access": ["read_b", "read_a", "main"]}


SOURCES = {"stacks_chain": "stacks_chain.c", "stacks_cxx": "stacks_cxx.cc", "stacks_x18": "stacks_x18.c"}


def run(binary: str, collector: str, *args: str, extra: tuple[str, ...] = ()) -> tuple[dict, str, int]:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        p, reps = run_report(out, "--stacks", collector, "--stats", *extra, binary, *args, timeout=240, status=99)
        err = p.stderr.decode(errors="replace")
    assert len(reps) == 1, err
    r = reps[0]
    # every scenario ends in the same read of a freed object, at the marked line of its source
    src = SOURCES[os.path.basename(binary)]
    assert (r["bug_type"], r["access"], r["stack"][0]["line"]) == ("slab-use-after-free", "read",
                                                                   source_line(src, "use")), err
    return r, err, p.returncode


def names(frames: list[dict]) -> list[str]:
    """Function names up to and including main (what lies below main is the C library's)."""
    out = []
    for f in frames:
        out.append((f["function"] or "?").split("(")[0])
        if f["function"] == "main":
            break
    return out


def stacks(rep: dict) -> dict[str, list[str]]:
    obj = rep["object"]
    return {"alloc": names(obj["alloc_stack"]), "free": names(obj["free_stack"]), "access": names(rep["stack"])}


def stats(err: str) -> dict[str, str]:
    line = [ln for ln in err.splitlines() if ln.startswith("emsan: stats: ")][-1]
    return dict(kv.split("=", 1) for kv in line[len("emsan: stats: "):].split(", "))


def many(jobs):
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as ex:
        return list(ex.map(lambda j: j[0](*j[1:]), jobs))


@pytest.mark.parametrize("fp", [True, False], ids=["frame-pointers", "no-frame-pointers"])
def test_chains(arch, fp):
    """With frame pointers every collector gives fp's frames, and the right ones; without them
    cfi and scs still do where fp cannot."""
    exe = build("stacks_chain", arch, "static", FP if fp else NOFP)
    cxx = build("stacks_cxx", arch, "static", FP if fp else NOFP, cxx=True)
    scenarios = list(EXPECTED) if fp else ["chain", "longjmp", "tailcall", "wrapped"]
    jobs = [(run, exe, c, s) for s in scenarios for c in COLLECTORS] + [(run, cxx, c) for c in COLLECTORS]
    results = iter(many(jobs))
    for s in scenarios + ["c++ exceptions"]:
        want = EXPECTED.get(s, CXX)
        got = {c: next(results) for c in COLLECTORS}
        for c in ("cfi", "scs"):
            assert stacks(got[c][0]) == want, (s, c, got[c][1])
            assert stats(got[c][1])["stacks"] == c
        if s == "deep":
            for c in COLLECTORS:
                assert len(got[c][0]["object"]["alloc_stack"]) == 64, c
        if fp:
            assert stacks(got["fp"][0]) == want, (s, "fp")
        else:
            assert stacks(got["fp"][0])["alloc"] != want["alloc"]     # what fp cannot do


def test_none_and_depot(arch):
    """--stacks none keeps no allocation/free stacks (the access's call trace stays); --no-depot
    stores every trace: same frames, more traces and bytes; --stats names the collector."""
    exe = build("stacks_chain", arch, "static", FP)
    (none, e_none, _), (dep, e_dep, _), (nodep, e_nodep, _), (auto, e_auto, _) = many([
        (run, exe, "none", "boot", "40"), (run, exe, "fp", "boot", "40"),
        (lambda: run(exe, "fp", "boot", "40", extra=("--no-depot",)),), (run, exe, "auto", "boot", "40")])
    assert none["object"]["alloc_stack"] == [] and none["object"]["free_stack"] == []
    assert names(none["stack"]) == CHAIN["access"]
    assert stacks(dep) == stacks(nodep) == stacks(auto) == CHAIN
    s_none, s_dep, s_nodep, s_auto = stats(e_none), stats(e_dep), stats(e_nodep), stats(e_auto)
    assert s_none["stacks"] == "none" and int(s_none["stack_traces"]) <= 1
    assert s_dep["depot"] == "1" and s_nodep["depot"] == "0"
    assert s_dep["stack_traces"] == s_nodep["stack_traces"]
    assert int(s_nodep["stack_unique"]) == int(s_nodep["stack_traces"])
    assert int(s_dep["stack_unique"]) * 4 < int(s_nodep["stack_unique"])
    assert int(s_dep["stack_depot_bytes"]) < int(s_nodep["stack_depot_bytes"])
    assert s_auto["stacks"] in ("fp", "cfi", "scs")
    for s in (s_none, s_dep, s_nodep, s_auto):
        assert re.fullmatch(r"\d+", s["stack_collector_us"])


def test_scs_memo(arch):
    """scs remembers a trace by its top entry's id instead of hashing it again: 'boot' allocates
    from 28 chain depths and one call site; the distinct traces it keeps must be those fp and cfi
    find (independent walks of this frame-pointer build), with most traces found by the memo."""
    exe = build("stacks_chain", arch, "static", FP)
    got = many([(run, exe, c, "boot", "60") for c in COLLECTORS])
    st = {c: stats(g[1]) for c, g in zip(COLLECTORS, got)}
    for c, g in zip(COLLECTORS, got):
        assert stacks(g[0]) == CHAIN, (c, g[1])
    assert st["scs"]["stack_unique"] == st["fp"]["stack_unique"] == st["cfi"]["stack_unique"], st
    assert st["scs"]["stack_traces"] == st["fp"]["stack_traces"], st
    assert int(st["scs"]["scs_memo_hits"]) * 2 > int(st["scs"]["stack_traces"]), st


def test_x18_shadow_call_stack():
    """arm64 built with -fsanitize=shadow-call-stack: --stacks x18 reads the guest's own shadow
    call stack and gives the frames fp and scs give."""
    import shutil
    import subprocess
    from conftest import BUILD, GUEST
    if not shutil.which("clang") or not shutil.which("aarch64-linux-gnu-gcc"):
        pytest.skip("clang and the aarch64 cross toolchain are needed")
    src, out = GUEST / "stacks_x18.c", BUILD / "arm64-static-scs" / "stacks_x18"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["clang", "--target=aarch64-linux-gnu", "-O2", "-g", "-fno-omit-frame-pointer",
                            "-fsanitize=shadow-call-stack", "-ffixed-x18", "-static", "-o", str(out), str(src)],
                           capture_output=True)
        if p.returncode:
            pytest.skip("clang cannot build -fsanitize=shadow-call-stack for aarch64 here")
    want = {"alloc": ["alloc_c", "alloc_b", "alloc_a"] + ["rec"] * 5 + ["chain", "main"],   # rec(0) tail-calls
            "free": ["free_b", "free_a", "chain", "main"], "access": ["use_b", "use_a", "chain", "main"]}
    got = many([(run, str(out), c) for c in ("x18", "fp", "scs")])
    for (rep, err, _), c in zip(got, ("x18", "fp", "scs")):
        assert stacks(rep) == want, (c, err)
        assert stats(err)["stacks"] == c
    p = emsan("run", "--stacks", "x18", build("stacks_chain", "x86_64", "static", FP), status=2)
    assert b"arm64" in p.stderr
