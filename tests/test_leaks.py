"""Leak detection (`--leaks`, on by default in the modes with emsan's allocator): kmemleak's scan
over tests/guest/leaks.c's scenarios on both architectures, in kmemleak's text layout and in
JSON, and against Valgrind memcheck's --leak-check=full on the same x86-64 program.

What a case must leak is read from the guest's source (sizes, allocation sites by marker, which
objects lose their last pointer); Valgrind is the independent oracle for the byte and block
counts of definitely and indirectly lost memory."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import build, emsan, have, native, run_report, source_line

NODE = 32                      # sizeof(struct node): a pointer and 24 bytes, on both architectures
# case: the groups of direct leaks, largest total first, as (allocating function, the case's own
# function on the stack, objects, bytes, objects reachable only through them, their bytes)
CASES: dict[str, list[tuple[str, str, int, int, int, int]]] = {
    "lost": [("alloc_lost", "lost_object", 1, 40, 0, 0)],
    "list": [("alloc_node", "lost_list", 1, NODE, 9, 9 * NODE)],        # the head; the rest through it
    "cycle": [("alloc_node", "lost_cycle", 1, NODE, 1, NODE)],          # led by its older object
    "self": [("alloc_node", "self_reference", 1, NODE, 0, 0)],
    "mangled": [("alloc_lost", "mangled", 1, 104, 0, 0)],               # an XOR-hidden pointer is none
    "many": [("alloc_lost", "many", 100, 100 * 112, 0, 0)],             # one report, with its count
    "two-sites": [("alloc_lost", "two_sites", 3, 3 * 120, 0, 0), ("alloc_node", "two_sites", 2, 2 * NODE, 0, 0)],
    "large": [("alloc_lost", "large", 1, 100000, 0, 0)],
    "before-main": [("alloc_lost", "before_main", 1, 160, 0, 0)],
    # reachable: from .bss, .data, a pointer into the middle, another live object, main's stack
    # frame, a callee-saved register at exit, a chain of calloc/aligned_alloc/posix_memalign
    # objects; freed and realloc'ed objects; a zero-sized object
    "global": [], "data": [], "middle": [], "inside": [], "stack": [], "register": [], "chain": [],
    "correct": [], "zero": [], "none": [],
}
SUMMARY = re.compile(rb"^emsan: kmemleak: (\d+) new suspected memory leaks? \((\d+) bytes from (\d+) allocation "
                     rb"stacks?(?:; (\d+) more objects? \((\d+) bytes\) referenced only from them)?\)$", re.M)
TITLE = re.compile(rb"^unreferenced object 0x([0-9a-f]+) \(size (\d+)\):$", re.M)


def check_case(case: str, arch: str, exe: str, tmp_path, *opts: str) -> list[dict]:
    want = CASES[case]
    res, reports = run_report(tmp_path / "r.json", *opts, exe, case, status=99 if want else 0)
    direct = [r for r in reports if not r["indirect"]]
    assert all(r["bug_type"] == "memory-leak" for r in reports)
    assert [(r["function"], r["count"], r["bytes"], r["indirect_count"], r["indirect_bytes"]) for r in direct] == \
        [(fn, n, b, ni, nb) for fn, _, n, b, ni, nb in want], res.stderr.decode(errors="replace")
    # the indirect ones (JSON only) are exactly those counted under the direct ones
    assert sum(r["count"] for r in reports if r["indirect"]) == sum(w[4] for w in want)
    titles = TITLE.findall(res.stderr)
    assert [(int(a, 16), int(s)) for a, s in titles] == [(int(r["address"], 16), r["size"]) for r in direct]
    for r, (fn, caller, n, b, *_ind) in zip(direct, want):
        top = r["stack"][0]
        assert (top["function"], top["file"], top["line"]) == (fn, "leaks.c", source_line("leaks.c", fn)), top
        assert caller in [f["function"] for f in r["stack"][1:4]], r["stack"]
        assert r["size"] * n == b and len(r["objects"]) == n
        assert r["task"]["comm"] == "leaks"
    m = SUMMARY.search(res.stderr)
    if not want:
        assert m is None and b"unreferenced object" not in res.stderr
        return reports
    assert m is not None, res.stderr.decode(errors="replace")
    ind_n, ind_b = sum(w[4] for w in want), sum(w[5] for w in want)
    assert [int(x) if x else 0 for x in m.groups()] == [sum(w[2] for w in want), sum(w[3] for w in want),
                                                       len(want), ind_n, ind_b]
    return reports


@pytest.mark.parametrize("case", list(CASES))
def test_leak_cases(arch, case, tmp_path):
    check_case(case, arch, build("leaks", arch, flags=("-pthread",)), tmp_path)


def test_report_layout(arch, tmp_path):
    """kmemleak's print_unreferenced(): title, comm/pid/jiffies line, a hex dump of the first 32
    bytes (the string the guest stored), the symbolized allocation stack."""
    exe = build("leaks", arch, flags=("-pthread",))
    res = emsan("run", exe, "lost", status=99)
    text = res.stderr.decode()
    lines = text[text.index("unreferenced object"):].splitlines()
    assert re.fullmatch(r"unreferenced object 0x[0-9a-f]{8,} \(size 40\):", lines[0])
    assert re.fullmatch(r'  comm "leaks", pid \d+, jiffies \d+ \(age \d+\.\d{3}s\)', lines[1])
    assert lines[2] == "  hex dump (first 32 bytes):"
    assert lines[3] == "    " + " ".join(f"{b:02x}" for b in b"leaked by lost_o") + "  leaked by lost_o"
    assert lines[4] == "    " + " ".join(f"{b:02x}" for b in b"bject" + bytes(11)) + "  bject..........."
    assert lines[5] == "  backtrace:"
    assert re.fullmatch(rf"    alloc_lost\+0x[0-9a-f]+/0x[0-9a-f]+ leaks\.c:{source_line('leaks.c', 'alloc_lost')}",
                        lines[6])
    assert native(exe, "lost", arch=arch).returncode == 0


def valgrind_lost(exe: str, case: str) -> tuple[int, int, int, int]:
    """Valgrind memcheck's definitely and indirectly lost (bytes, blocks)."""
    res = subprocess.run(["valgrind", "--leak-check=full", exe, case], capture_output=True, timeout=120)
    err = res.stderr.decode()
    out = []
    for kind in ("definitely", "indirectly"):
        m = re.search(rf"{kind} lost: ([\d,]+) bytes in ([\d,]+) blocks", err)
        out += [int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))] if m else [0, 0]
    assert "All heap blocks were freed" in err or "LEAK SUMMARY" in err, err[-2000:]
    return out[0], out[1], out[2], out[3]


@pytest.mark.skipif(not have("valgrind"), reason="valgrind is not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_same_as_valgrind(case, tmp_path):
    """The same dynamically linked x86-64 program under Valgrind and emsan: the same definitely
    lost and indirectly lost bytes and blocks."""
    exe = build("leaks", "x86_64", link="dynamic", flags=("-pthread",))
    vg = valgrind_lost(exe, case)
    res, reports = run_report(tmp_path / "r.json", exe, case, status=99 if vg[1] else 0)
    direct = [r for r in reports if not r["indirect"]]
    got = (sum(r["bytes"] for r in direct), sum(r["count"] for r in direct),
           sum(r["indirect_bytes"] for r in direct), sum(r["indirect_count"] for r in direct))
    assert got == vg, res.stderr.decode(errors="replace")


def test_tag_modes(tmp_path):
    """Tagged pointers reference objects whatever their tag: the list's nodes point at each
    other through tagged pointers, a global holds a tagged pointer into an object's middle."""
    exe = build("leaks", "arm64", flags=("-pthread",))
    for mode in ("sw-tags", "hw-tags"):
        for case in ("list", "cycle", "middle", "inside", "chain", "lost"):
            check_case(case, "arm64", exe, tmp_path, "--mode", mode)


def test_fatal_signal_scans(arch, tmp_path):
    """abort() (SIGABRT, a fatal signal) still gets its scan, as exit_group does."""
    exe = build("leaks", arch, flags=("-pthread",))
    res, reports = run_report(tmp_path / "r.json", exe, "abort", status=99)
    assert [(r["function"], r["size"]) for r in reports] == [("alloc_lost", 40)]


def test_no_scan_after_a_report(arch, tmp_path):
    """A KASAN report that stops the run is the run's result: no leak scan follows (the lost
    object of `then-bug` is not reported)."""
    exe = build("leaks", arch, flags=("-pthread",))
    res, reports = run_report(tmp_path / "r.json", exe, "then-bug", status=99)
    assert [r["bug_type"] for r in reports] == ["slab-use-after-free"]
    assert b"kmemleak" not in res.stderr


def test_suppressions(arch, tmp_path):
    """LeakSanitizer's suppression file: a function name, a glob on a function, a source file;
    suppressed leaks are counted on one line each and do not make the exit status."""
    exe = build("leaks", arch, flags=("-pthread",))
    sup = tmp_path / "leaks.supp"
    sup.write_text("# comment\n\nleak:alloc_l*\n")
    res, reports = run_report(tmp_path / "r.json", "--suppress", str(sup), exe, "two-sites", status=99)
    assert [(r["function"], r["count"]) for r in reports] == [("alloc_node", 2)]
    assert b"emsan: kmemleak: 3 leaks (360 bytes) suppressed by leak:alloc_l*" in res.stderr
    sup.write_text("leak:leaks.c\n")
    res, reports = run_report(tmp_path / "r.json", "--suppress", str(sup), exe, "two-sites", status=0)
    assert reports == [] and b"unreferenced object" not in res.stderr
    sup.write_text("leak:^alloc_node$\nleak:^lost_object\n")
    res, reports = run_report(tmp_path / "r.json", "--suppress", str(sup), exe, "two-sites", status=99)
    assert [(r["function"], r["count"]) for r in reports] == [("alloc_lost", 3)]
    sup.write_text("leek:x\n")
    res = emsan("run", "--suppress", str(sup), exe, "none", status=2)
    assert res.stderr.decode().strip().splitlines() == [f"emsan: --suppress {sup}:1: expected leak:PATTERN, got 'leek:x'"]


def test_ignore_before_main(arch, tmp_path):
    """--leaks-ignore-before-main: what constructors leaked before main is not reported."""
    exe = build("leaks", arch, flags=("-pthread",))
    res, reports = run_report(tmp_path / "r.json", "--leaks-ignore-before-main", exe, "before-main", status=0)
    assert reports == []
    check_case("lost", arch, exe, tmp_path, "--leaks-ignore-before-main")


def test_scan_during_run(arch, tmp_path):
    """--leaks-scan-every N: the object lost before the busy loop is reported by a scan during
    it; the exit scan reports only the one lost after."""
    exe = build("leaks", arch, flags=("-pthread",))
    res, reports = run_report(tmp_path / "r.json", "--leaks-scan-every", "1000000", exe, "during-run", status=99)
    assert [(r["function"], r["size"]) for r in reports] == [("alloc_lost", 144), ("alloc_node", NODE)]
    scans = json.loads((tmp_path / "r.json").read_text())["leak_scans"]
    assert len(scans) >= 3 and scans[-1]["new"] == 1
    assert [s["new"] for s in scans].count(1) == 2 and sum(s["new"] for s in scans) == 2
    assert len(SUMMARY.findall(res.stderr)) == 2


def test_off_and_kfence(tmp_path):
    """--no-leaks turns the scan off; --mode kfence (the guest's own allocator for most objects)
    has no scan by default and refuses --leaks with a one-line error."""
    exe = build("leaks", "x86_64", flags=("-pthread",))
    res, reports = run_report(tmp_path / "r.json", "--no-leaks", exe, "lost", status=0)
    assert reports == [] and b"kmemleak" not in res.stderr
    res = emsan("run", "--mode", "kfence", exe, "lost", status=0)
    assert b"kmemleak" not in res.stderr
    res = emsan("run", "--mode", "kfence", "--leaks", exe, "lost", status=2)
    assert len(res.stderr.strip().splitlines()) == 1 and b"--leaks needs emsan's allocator" in res.stderr


def test_no_allocation_at_all(tmp_path):
    """A program that never calls malloc (gzip compresses in static buffers): the scan has an
    empty heap to index."""
    if not have("gzip"):
        pytest.skip("gzip is not installed")
    res = emsan("run", "gzip", "-c", input=b"x" * 1000, status=0)
    assert res.stderr == b"" and subprocess.run(["gzip", "-dc"], input=res.stdout, capture_output=True).stdout == \
        b"x" * 1000
