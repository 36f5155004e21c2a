"""bench/mapping.py and bench/timers.py run end to end and write well-formed JSON (tiny sizes; the
figures' speed is never asserted, only that they exist and that the guest did its work)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def bench(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--arch", "x86_64", "--reps", "1", *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_mapping_bench_smoke(tmp_path):
    out = tmp_path / "mapping.json"
    bench("mapping.py", "--counts", "10,20", "--mb", "4", "--json", str(out))
    (r,) = json.loads(out.read_text())["results"].values()
    assert r["pair_us_at_10"] > 0 and r["pair_us_at_20"] > 0 and r["partial_munmap_ms"] > 0
    assert r["touch_rss_mib"] > 4


def test_timers_bench_smoke(tmp_path):
    out = tmp_path / "timers.json"
    bench("timers.py", "--scale", "0.02", "--json", str(out))
    res = json.loads(out.read_text())["results"]
    assert set(res) == {f"x86_64 this {c}" for c in ("plain", "timeout", "tick-10ms", "tick-1ms", "tick-1us")}
    assert res["x86_64 this plain"]["guest"] == "ticks 0"
    assert res["x86_64 this tick-1us"]["guest"] != "ticks 0"      # the handler ran during the computation
