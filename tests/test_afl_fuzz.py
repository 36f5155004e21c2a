"""`emsan fuzz` (AFL++ with emsan as the sanitizer) and `emsan triage` on its crashes.

tests/guest/fuzz_target.c hides a heap overflow behind a 4-byte magic and a use-after-free behind
a length check. AFL++ must find both within a fixed budget of executions (CmpLog solves the magic,
a seeded random generator makes the run repeatable), and triage must group the crashes into
exactly those two bugs. The oracle is the same source built natively with ASan, run on each
group's smallest input: its bug kind, function and line must match emsan's report.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ForkServerClient, build, emsan, have, native, source_line

pytestmark = pytest.mark.skipif(not have("afl-fuzz"), reason="AFL++ (afl-fuzz) is not installed")

ASAN_KIND = {"heap-buffer-overflow": "slab-out-of-bounds", "heap-use-after-free": "slab-use-after-free"}
BUDGET = ["-E", "1500", "-V", "60", "-s", "1", "-t", "5000"]     # executions, seconds, AFL++ seed, ms per input


def seeds(tmp_path) -> str:
    d = tmp_path / "seeds"
    d.mkdir()
    (d / "hello").write_bytes(b"hello!!!")
    return str(d)


def asan_oracle(data: bytes) -> tuple[str, str, int]:
    """(emsan's name for the bug kind, function, line) as natively built ASan reports them."""
    exe = build("fuzz_target", "x86_64", "dynamic", flags=("-fsanitize=address",))
    p = subprocess.run([exe], input=data, capture_output=True, timeout=60)
    err = p.stderr.decode(errors="replace")
    kind = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", err).group(1)
    frame = re.search(r"#0 0x[0-9a-f]+ in (\w+) \S*fuzz_target\.c:(\d+)", err)
    return ASAN_KIND[kind], frame.group(1), int(frame.group(2))


def test_fuzz_finds_both_bugs_and_triage_groups_them(arch, tmp_path):
    exe = build("fuzz_target", arch)
    out = tmp_path / "out"
    p = emsan("fuzz", *BUDGET, "--quiet", "-i", seeds(tmp_path), "-o", str(out), "--", exe, timeout=240, status=99)
    err = p.stderr.decode()
    crashes = sorted(f for f in os.listdir(out / "default" / "crashes") if f.startswith("id:") and ".emsan." not in f)
    assert crashes, err
    for c in crashes:                   # each crash has its report beside it, text and JSON
        text = (out / "default" / "crashes" / (c + ".emsan.txt")).read_text()
        doc = json.loads((out / "default" / "crashes" / (c + ".emsan.json")).read_text())
        assert text.startswith("=" * 66) and "BUG: KASAN: " in text
        assert doc["reports"][0]["bug_type"] in text
    assert "first crash after" in err

    tj, ts = tmp_path / "triage.json", tmp_path / "triage.sarif"
    p = emsan("triage", "--quiet", "--json", str(tj), "--sarif", str(ts), str(out), timeout=240, status=99)
    err = p.stderr.decode()
    summary = json.loads(tj.read_text())
    assert summary["inputs"] == len(crashes) and not summary["not_reproduced"]
    got = {(b["bug_type"], b["report"]["function"]) for b in summary["bugs"]}
    assert got == {("slab-out-of-bounds", "parse_header"), ("slab-use-after-free", "parse_records")}, got
    for bug in summary["bugs"]:
        data = open(bug["smallest"]["input"], "rb").read()
        kind, fn, line = asan_oracle(data)
        top = bug["report"]["stack"][0]
        assert (bug["bug_type"], top["function"], top["line"]) == (kind, fn, line)
        marker = {"parse_header": "overflow", "parse_records": "uaf"}[fn]
        assert line == source_line("fuzz_target.c", marker)
        assert bug["key"][1:] == [fn, "parse", "main"]
        assert bug["smallest"]["size"] == min(i["size"] for i in bug["inputs"])
    # the table: one row per bug with its location, input count and smallest input
    rows = [ln for ln in err.splitlines() if "parse_header" in ln or "parse_records" in ln]
    assert len(rows) == 2 and "2 distinct bugs" in err
    assert len(json.loads(ts.read_text())["runs"][0]["results"]) == 2


def test_fuzz_input_through_an_argument(tmp_path):
    """--input arg: @@ is replaced by the input itself (up to its first NUL) in the guest's argv."""
    exe = build("fuzz_target", "x86_64")
    out = tmp_path / "out"
    emsan("fuzz", *BUDGET, "--quiet", "--input", "arg", "-i", seeds(tmp_path), "-o", str(out), "--", exe,
          "-d", "@@", timeout=240, status=99)
    bugs = set()
    for c in os.listdir(out / "default" / "crashes"):
        if c.endswith(".emsan.json"):
            bugs.add(json.loads((out / "default" / "crashes" / c).read_text())["reports"][0]["function"])
    assert "parse_records" in bugs          # the UAF: an argument longer than 32 bytes
    cfg = json.loads((out / "emsan-fuzz.json").read_text())
    assert cfg["input"] == "arg" and cfg["args"] == ["-d", "@@"]


def test_fuzz_refuses_what_it_cannot_run(tmp_path):
    exe = build("fuzz_target", "x86_64")
    empty = tmp_path / "empty"
    empty.mkdir()
    p = emsan("fuzz", "-i", str(empty), "-o", str(tmp_path / "o1"), "--", exe, status=2)
    assert b"no seed files" in p.stderr
    p = emsan("fuzz", "--entry", "no_such_function", "-i", seeds(tmp_path), "-o", str(tmp_path / "o2"), "--", exe,
              status=2)
    assert b"no function 'no_such_function'" in p.stderr
    p = emsan("fuzz", "--input", "file", "-i", str(tmp_path / "seeds"), "-o", str(tmp_path / "o3"), "--", exe,
              status=2)
    assert b"put @@" in p.stderr


def test_persistent_mode(arch, tmp_path):
    """--persistent handle: handle(buf, len) once per input, the input in emsan's heap with an exact
    redzone (a one-byte over-read of it is caught), memory restored between inputs (the guest
    crashes on a second call in one process if its global counter survives)."""
    exe = build("fuzz_persistent", arch)
    out = tmp_path / "out"
    p = emsan("fuzz", "-E", "3000", "-V", "60", "-s", "1", "--quiet", "--persistent", "handle",
              "-i", seeds(tmp_path), "-o", str(out), "--", exe, timeout=240, status=99)
    err = p.stderr.decode()
    crash_dir = out / "default" / "crashes"
    crashes = [c for c in os.listdir(crash_dir) if c.startswith("id:") and ".emsan." not in c]
    execs = int(re.search(r"(\d+) executions", err).group(1))
    assert crashes and execs > 2 * len(crashes)          # many inputs ran in children that did not crash
    for c in crashes:
        data = (crash_dir / c).read_bytes()
        rep = json.loads((crash_dir / (c + ".emsan.json")).read_text())["reports"][0]   # never a SIGSEGV
        assert (rep["bug_type"], rep["access"], rep["function"]) == ("slab-out-of-bounds", "read", "handle")
        assert rep["stack"][0]["line"] == source_line("fuzz_persistent.c", "overread")
        # the object is the input itself: exactly its size, read just past its end or beyond
        assert rep["object"]["size"] == len(data) and rep["object"]["offset"] >= len(data)
        assert data[:4] == b"FUZZ" and 5 + data[4] > len(data)
    emsan("triage", "--quiet", "--json", str(tmp_path / "t.json"), str(out), timeout=240, status=99)
    (bug,) = json.loads((tmp_path / "t.json").read_text())["bugs"]
    assert bug["key"][:2] == ["slab-out-of-bounds", "handle"] and len(bug["inputs"]) == len(crashes)


# --- emsan's fork server driven input by input --------------------------------------------------

def fuzz_target(cfg: Path, input_path: Path) -> ForkServerClient:
    """emsan's fuzz target for a configuration, under a fork-server client."""
    return ForkServerClient([sys.executable, "-m", "emsan.session.fuzz", str(cfg), str(input_path)], input_path)


def fuzz_config(tmp_path, exe: str, *run_options: str, **kw) -> Path:
    """An `emsan fuzz` configuration (emsan-fuzz.json) for the target run by hand."""
    from emsan.session.fuzz import FuzzConfig
    out = tmp_path / "out"
    (out / ".emsan" / "reports").mkdir(parents=True, exist_ok=True)
    cfg = FuzzConfig(exe, [], kw.pop("input", "stdin"), list(run_options), out=str(out), **kw)
    path = out / "emsan-fuzz.json"
    path.write_text(json.dumps(cfg.__dict__))
    return path


def saved_report(cfg_path: Path, data: bytes) -> dict:
    """The report a child saved for the input that crashed it."""
    import hashlib
    path = cfg_path.parent / ".emsan" / "reports" / (hashlib.sha1(data).hexdigest() + ".emsan.json")
    return json.loads(path.read_text())["reports"][0]


ROLLBACK_MODES = {"x86_64": [("generic",), ("generic", "--checks", "hook"), ("kfence", "--sample-interval", "1")],
                  "arm64": [("generic",), ("sw-tags",), ("hw-tags",), ("kfence", "--sample-interval", "1")]}


@pytest.mark.parametrize("arch,mode", [(a, m) for a, ms in ROLLBACK_MODES.items() for m in ms],
                         ids=lambda v: v if isinstance(v, str) else "-".join(v).replace("--", ""))
def test_persistent_rollback(arch, mode, tmp_path):
    """Persistent mode puts emsan's own state back after every input: objects setup() allocated
    before the fork point, freed and replaced by one input, are setup()'s live objects again for
    the next (which holds their pointers again), with no false use-after-free or double free;
    objects an input leaves allocated do not pile up; a real bug is still reported. Oracle: the
    program natively, each input alone (what the guest sees at every input), and its source."""
    if arch == "arm64" and not have("aarch64-linux-gnu-gcc"):
        pytest.skip("no arm64 compiler")
    exe = build("fuzz_rollback", arch)
    inputs = [b"RU", b"U", b"RRU", b"LU", b"L", b"LLU", b"X" * 40, b"RLXU", b"U"]
    for data in inputs:                       # natively each input is fine on its own
        assert native(exe, arch=arch, input=data).returncode in (0, 1)
    cfg = fuzz_config(tmp_path, exe, "--mode", *mode, "--seed", "1", input="buffer", entry="serve",
                      persistent="handle", iterations=100)
    afl = fuzz_target(cfg, tmp_path / "cur")
    try:
        pids = set()
        for data in inputs * 3:
            pid, status = afl.run(data)
            assert status == 0, (data, status, (cfg.parent / ".emsan" / "errors.log").read_text()
                                 if (cfg.parent / ".emsan" / "errors.log").exists() else "")
            pids.add(pid)
        assert len(pids) == 1                  # one child ran them all: persistent
        pid, status = afl.run(b"RUB")
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
        rep = saved_report(cfg, b"RUB")
        kind = "use-after-free read" if mode[0] == "kfence" else "slab-use-after-free"     # KFENCE's title
        assert (rep["bug_type"], rep["access"], rep["function"]) == (kind, "read", "handle")
        assert rep["stack"][0]["line"] == source_line("fuzz_rollback.c", "bug")
        pid2, status = afl.run(b"U")           # a new child, from the fork point's state
        assert pid2 != pid and status == 0
    finally:
        afl.close()
    assert not (cfg.parent / ".emsan" / "errors.log").exists()


def test_kfence_samples_each_input_anew(tmp_path):
    """Under the fork server every input gets its own KFENCE sampling phase, derived from the
    campaign's --seed and the input: the one allocation after the fork point in
    fuzz_target.c's use-after-free path is sampled for about one input in --sample-interval
    (binomial: 48 inputs at 1/4 give between 1 and 47 crashes but with probability 1e-6), and
    the same input always gets the same verdict (triage reproduces it)."""
    exe = build("fuzz_target", "x86_64")
    cfg = fuzz_config(tmp_path, exe, "--mode", "kfence", "--sample-interval", "4", "--seed", "7")
    rng = random.Random(1)
    inputs = [bytes(rng.randrange(256) for _ in range(40)) for _ in range(48)]
    afl = fuzz_target(cfg, tmp_path / "cur")
    try:
        verdicts = [afl.run(d)[1] for d in inputs]
        again = [afl.run(d)[1] for d in inputs[:12]]
    finally:
        afl.close()
    crashed = [os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGABRT for s in verdicts]
    assert all(s == 0 or c for s, c in zip(verdicts, crashed)), verdicts
    assert 0 < sum(crashed) < len(inputs), crashed
    assert again == verdicts[:12]
    for data, c in zip(inputs, crashed):
        if c:
            rep = saved_report(cfg, data)
            assert (rep["bug_type"], rep["function"]) == ("use-after-free read", "parse_records")
            assert rep["stack"][0]["line"] == source_line("fuzz_target.c", "uaf")


@pytest.mark.parametrize("checks", ["inline", "mmio", "hook"])
def test_persistent_input_in_emsans_heap(checks, tmp_path):
    """The persistent input sits in emsan's heap with exact redzones, read and written by the
    guest through the checking view (--checks mmio) although guest memory is copy-on-write under
    the loop's snapshot: the magic the input carries is seen, and one byte read past the input
    is reported, whatever inputs ran before in the same child. Oracle: the guest's source."""
    exe = build("fuzz_persistent", "x86_64")
    cfg = fuzz_config(tmp_path, exe, "--checks", checks, "--seed", "1", input="buffer", persistent="handle")
    afl = fuzz_target(cfg, tmp_path / "cur")
    try:
        fine = [afl.run(d) for d in (b"FUZZ\x03abc", b"hello", b"FUZZ\x02ab", b"FUZZ\x00")]
        assert [s for _, s in fine] == [0] * 4 and len({p for p, _ in fine}) == 1
        bad = b"FUZZ\x04abc"                 # declares 4 bytes, carries 3
        _, status = afl.run(bad)
    finally:
        afl.close()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT
    rep = saved_report(cfg, bad)
    assert (rep["bug_type"], rep["access"], rep["size"], rep["function"]) == ("slab-out-of-bounds", "read", 1, "handle")
    assert rep["object"]["size"] == len(bad) and rep["object"]["offset"] == len(bad)
    assert rep["stack"][0]["line"] == source_line("fuzz_persistent.c", "overread")
