"""The kernel's KFENCE KUnit cases (mm/kfence/kfence_test.c), ported to userspace in
tests/guest/kfence_cases.c, run under --mode kfence with deterministic sampling
(--sample-interval 1: every allocation of at most a page is a KFENCE object) on x86-64 and arm64.

As kfence_test's report_matches() does, each expected report is checked on its title line
(`BUG: KFENCE: <type> in <function>`) and on the next line naming the address
(`Out-of-bounds read at 0x...`, `Invalid free of 0x...`...); every case must produce exactly
the reports it expects and no other."""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import EXIT_REPORT, build, emsan, run_report, source_line

CASES = ["out_of_bounds_read", "out_of_bounds_write", "use_after_free_read", "double_free", "invalid_addr_free",
         "corruption", "free_bulk", "kmalloc_aligned_oob_read", "kmalloc_aligned_oob_write", "invalid_access",
         "gfpzero", "krealloc", "mixed"]
# Reports each case must produce (kfence_test's expectations); the guest prints the addresses.
COUNTS = {"out_of_bounds_read": 2, "corruption": 2, "free_bulk": 0, "gfpzero": 0, "mixed": 0}
# Each report's access, offset from the object, and the marked source lines of its first frames
# (tests/guest/kfence_cases.c): corruption is found by the free in test_free(), called from the case.
WHERE = {
    "out_of_bounds_read": [("read", -1, ["oob_read.left"]), ("read", 32, ["oob_read.right"])],
    "out_of_bounds_write": [("write", -1, ["oob_write"])],
    "use_after_free_read": [("read", 0, ["uaf_read"])],
    "double_free": [("free", 0, ["double_free"])],
    "invalid_addr_free": [("free", 1, ["invalid_addr_free"])],
    "corruption": [("free", 32, ["test_free", "corruption.left"]), ("free", -1, ["test_free", "corruption.right"])],
    "kmalloc_aligned_oob_read": [("read", 73 + 16, ["aligned_oob_read"])],
    "kmalloc_aligned_oob_write": [("free", 73, ["test_free", "aligned_oob_write"])],
    "invalid_access": [("read", None, ["invalid_access"])],
    "krealloc": [("read", 0, ["krealloc"])],
}


def split_cases(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in text.splitlines():
        if line.startswith("CASE "):
            cur = out.setdefault(line[5:].strip(), [])
        else:
            cur.append(line)
    return out


_runs: dict[str, tuple[subprocess.CompletedProcess, list[dict]]] = {}


def run_all(arch: str, tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[dict]]:
    if arch not in _runs:
        exe = build("kfence_cases", arch)
        js = tmp_path_factory.mktemp("kfence") / "reports.json"
        # stderr into stdout: the guest's EXPECT lines and emsan's reports, in order
        _runs[arch] = run_report(js, "--mode", "kfence", "--sample-interval", "1", "--continue", "--seed", "1", exe,
                                 merge_stderr=True, status=EXIT_REPORT)
    return _runs[arch]


def reports_of(reports: list[dict], case: str) -> list[dict]:
    """The JSON reports of one case (they come in the order of CASES, COUNTS of each)."""
    i = 0
    for c in CASES:
        n = COUNTS.get(c, 1)
        if c == case:
            return reports[i:i + n]
        i += n
    raise KeyError(case)


@pytest.mark.parametrize("case", CASES)
def test_kfence_case(arch, case, tmp_path_factory):
    p, reports = run_all(arch, tmp_path_factory)
    text = p.stdout.decode(errors="replace")
    assert "DONE failures=0" in text, text[-3000:]
    lines = split_cases(text)[case]
    assert not [ln for ln in lines if ln.startswith("FAIL")], "\n".join(lines)
    expects = [ln[len("EXPECT "):].split("|") for ln in lines if ln.startswith("EXPECT ")]
    titles = [i for i, ln in enumerate(lines) if ln.startswith("BUG: KFENCE: ")]
    assert len(expects) == COUNTS.get(case, 1)
    assert len(titles) == len(expects), "\n".join(lines)
    for (title, fn, second), i in zip(expects, titles):
        # report_matches(): the title up to the '+' of the function's offset...
        assert lines[i].startswith(f"BUG: KFENCE: {title} in {fn}+"), lines[i]
        # ...and the first following line with "at 0x" or "of 0x" must contain the address line
        addr_line = next(ln for ln in lines[i + 1:] if "at 0x" in ln or "of 0x" in ln)
        assert second in addr_line, (second, addr_line)
        assert addr_line.endswith(":")
    mine = reports_of(reports, case)
    assert len(mine) == len(expects) == len(WHERE.get(case, []))
    for r, (title, fn, _), (access, offset, marks) in zip(mine, expects, WHERE.get(case, [])):
        assert (r["bug_type"], r["function"], r["access"]) == (title, fn, access)
        assert r.get("object", {}).get("offset") == offset
        fns = [fn, "test_" + case][:len(marks)]
        want = [(f, source_line("kfence_cases.c", m)) for f, m in zip(fns, marks)]
        assert [(f["function"], f["line"]) for f in r["stack"][:len(marks)]] == want, r["stack"][:3]


def test_kfence_report_details(tmp_path_factory):
    """The rest of the kernel's layout: distance and object index, the object line, the
    allocation and free stacks, corrupted bytes as the kernel shows them; and the JSON."""
    p, reps = run_all("x86_64", tmp_path_factory)
    text = p.stdout.decode(errors="replace")
    oob = split_cases(text)["out_of_bounds_read"]
    addr_lines = [ln for ln in oob if ln.startswith("Out-of-bounds read at")]
    assert re.fullmatch(r"Out-of-bounds read at 0x[0-9a-f]+ \(1B left of kfence-#\d+\):", addr_lines[0])
    assert re.fullmatch(r"Out-of-bounds read at 0x[0-9a-f]+ \(32B right of kfence-#\d+\):", addr_lines[1])
    idx = re.search(r"kfence-#(\d+)", addr_lines[0]).group(1)
    obj = next(ln for ln in oob if ln.startswith(f"kfence-#{idx}: "))
    assert re.fullmatch(rf"kfence-#{idx}: 0x[0-9a-f]+000-0x[0-9a-f]+01f, size=32, cache=kmalloc-32", obj)
    i = oob.index(next(ln for ln in oob if ln.startswith("allocated by task")))
    assert re.match(r"allocated by task \d+ on cpu 0 at \d+\.\d{6}s \(\d+\.\d{6}s ago\):", oob[i])
    assert oob[i + 1].startswith(" test_alloc+") and oob[i + 2].startswith(" test_out_of_bounds_read+")

    uaf = split_cases(text)["use_after_free_read"]
    freed = uaf.index(next(ln for ln in uaf if ln.startswith("freed by task")))
    assert uaf[freed + 1].startswith(" test_free+") and uaf[freed + 2].startswith(" test_use_after_free_read+")

    corr = [ln for ln in split_cases(text)["corruption"] if ln.startswith("Corrupted memory")]
    # LEFT object, byte after it: the bad byte then 15 intact canary bytes
    assert re.fullmatch(r"Corrupted memory at 0x[0-9a-f]+ \[ 0x2a( \.){15} \] \(in kfence-#\d+\):", corr[0])
    # RIGHT object, byte before it: shown up to the object's start only
    assert re.fullmatch(r"Corrupted memory at 0x[0-9a-f]+ \[ 0x2a \] \(in kfence-#\d+\):", corr[1])

    kinds = [r["bug_type"] for r in reps]
    assert kinds.count("memory corruption") == 3 and kinds.count("invalid free") == 2
    assert all(r["mode"] == "kfence" for r in reps)
    r = next(r for r in reps if r["bug_type"] == "use-after-free read")
    assert r["function"] == "test_use_after_free_read" and r["access"] == "read"
    assert r["object"]["state"] == "freed" and r["object"]["size"] == 32 and r["object"]["offset"] == 0
    assert r["object"]["free_stack"][0]["function"] == "test_free"
    assert r["description"].startswith(f"Use-after-free read at {r['address']} (in kfence-#")
    c = next(r for r in reps if r["bug_type"] == "memory corruption")
    assert c["corrupted_bytes"] == [42] + [None] * 15


def test_kfence_stops_at_first_report(tmp_path):
    """Without --continue the first report ends the run with status 99."""
    exe = build("kfence_cases", "x86_64")
    p = emsan("run", "--mode", "kfence", "--sample-interval", "1", "--seed", "3", exe, "use_after_free_read",
              "double_free", status=99)
    err = p.stderr.decode()
    assert err.count("BUG: KFENCE: ") == 1
    assert re.search(r"^BUG: KFENCE: use-after-free read in test_use_after_free_read\+0x[0-9a-f]+/0x[0-9a-f]+ "
                     rf"kfence_cases.c:{source_line('kfence_cases.c', 'uaf_read')}$", err, re.M), err
    assert "CASE double_free" not in p.stdout.decode()


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_kfence_uaf_at_either_edge_of_the_page(arch):
    """A freed object's page is closed however the object sits in it: the seeds place it at the left or
    the right edge at random, and every run reports the read after free (tests/guest/threads.c "uaf":
    one thread writes the object, another frees it, a third reads it, so the guest's TLB holds the
    object's page when it is freed). The engine's TLB pages are 1 KiB on arm64: closing the page must
    drop each of its four entries, not the first one only."""
    exe = build("threads", arch, "dynamic")
    for seed in range(1, 7):
        p = emsan("run", "--mode", "kfence", "--sample-interval", "1", "--seed", str(seed), exe, "uaf",
                  env={"PATH": "/usr/bin:/bin"})
        assert p.returncode == 99 and "BUG: KFENCE: use-after-free read in reader_thread" in p.stderr.decode(), seed


@pytest.mark.parametrize("sampling", [["--sample-interval", "3"], ["--sample-instructions", "20000"]])
def test_kfence_mixed_with_libc(arch, sampling):
    """Sampled and unsampled objects side by side: calloc, aligned_alloc, posix_memalign,
    realloc across the pool, the spill arena and libc; same output as the program alone."""
    exe = build("kfence_cases", arch)
    p = emsan("run", "--mode", "kfence", *sampling, "--seed", "5", "--stats", exe, "mixed", status=0)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert "mixed checksum 9553386" in out and "DONE failures=0" in out
    assert "BUG:" not in err
    line = err.split("emsan: stats: ")[1].splitlines()[0]
    stats = dict(kv.strip().split("=", 1) for kv in line.split(","))
    assert int(stats["total_allocs"]) > 50        # objects really went through the pool
    assert int(stats["spilled"]) > 0              # and some were realloc'ed out of it
