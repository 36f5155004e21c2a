"""The fidelity benchmarks run and print their tables (bench/readahead.py, bench/symbolize.py);
their figures are never asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench"


def test_readahead_bench_smoke(tmp_path):
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, str(BENCH / "readahead.py"), "--arch", "x86_64", "--only", "sort,perl",
                          "--no-debug-files", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "x86_64: 2 program runs" in res.stdout and "rules (over-reads each would still report)" in res.stdout
    rows = json.loads(out.read_text())["x86_64"]
    assert all(r["access"] in ("read", "write") and r["size"] > 0 for r in rows)


def test_symbolize_bench_smoke(tmp_path):
    out = tmp_path / "s.json"
    res = subprocess.run([sys.executable, str(BENCH / "symbolize.py"), "--warm", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["cache"] for r in runs] == ["cold", "warm"]
    assert all(r["status"] == 99 and r["title"].startswith("BUG: KASAN: ") for r in runs)
