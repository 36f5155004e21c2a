"""The foundation benchmark runs end to end and writes well-formed JSON.

Only the shape and sign of the figures are checked: a benchmark's speed is never asserted.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_bench_runner_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--reps", "2", "--arch", "x86_64",
         "--workloads", "compute", "--scale", "0.01", "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "emsan/bare" in proc.stdout            # the table was printed
    res = json.loads(out.read_text())
    assert {"schema", "meta", "workloads", "startup", "targets"} <= res.keys()
    assert res["meta"]["reps"] == 2 and res["meta"]["arches"] == ["x86_64"]

    (wl,) = res["workloads"]
    assert wl["arch"] == "x86_64" and wl["name"] == "compute"
    assert wl["outputs_match"] is True
    assert wl["iterations"] >= 1 and isinstance(wl["instructions"], int) and wl["instructions"] > 0
    for key in ("bare_emu_s", "emsan_emu_s", "bare_wall_s", "emsan_wall_s"):
        assert len(wl["runs"][key]) == 2 and all(_positive(v) for v in wl["runs"][key])
        assert _positive(wl["median"][key])
    assert _positive(wl["minsn_per_s"]["bare"]) and _positive(wl["minsn_per_s"]["emsan"])
    for key in ("ratio_emu", "ratio_wall"):
        r = wl[key]
        assert all(_positive(r[k]) for k in ("median", "min", "max")) and len(r["values"]) == 2

    (su,) = res["startup"]
    assert su["arch"] == "x86_64" and su["outputs_match"] is True and su["instructions"] > 0
    for key in ("python_s", "bare_first_insn_s", "emsan_first_insn_s", "bare_wall_s", "emsan_wall_s"):
        assert _positive(su["median"][key])
    assert _positive(su["ratio_first_insn"]["median"])
    for target in ("bare", "emsan"):
        assert all(_positive(v) for v in su["breakdown_median_s"][target].values())

    assert "x86_64" in res["targets"]["startup"]
    assert "x86_64/compute" in res["targets"]["overhead"]
