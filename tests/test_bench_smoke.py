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


def _run_bench(tmp_path: Path, script: str, *args: str, timeout: float) -> tuple[str, dict]:
    """Run bench/SCRIPT ARGS with its JSON in tmp_path; it must succeed. Its stdout and its JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_bench_runner_smoke(tmp_path):
    stdout, res = _run_bench(tmp_path, "run.py", "--quick", "--reps", "2", "--arch", "x86_64",
                             "--workloads", "compute", "--scale", "0.01", timeout=120)
    assert "emsan/bare" in stdout            # the table was printed
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


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_kasan_bench_smoke(tmp_path):
    """bench/kasan.py (generic mode vs plain vs valgrind) on the tiny allocator micro workload."""
    stdout, res = _run_bench(tmp_path, "kasan.py", "--quick", "--reps", "2", "--arch", "x86_64",
                             "--workloads", "mallocfree", "--scale", "0.01", timeout=120)
    assert "generic/plain" in stdout            # the tables were printed
    assert {"schema", "meta", "workloads", "targets"} <= res.keys()
    assert res["meta"]["reps"] == 2 and res["meta"]["arches"] == ["x86_64"]

    (wl,) = res["workloads"]
    assert wl["arch"] == "x86_64" and wl["name"] == "mallocfree" and wl["outputs_match"] is True
    assert all(_positive(wl["instructions"][k]) for k in ("plain", "generic"))
    expected = {"native_wall_s", "plain_emu_s", "memhook_emu_s", "generic_emu_s", "plain_emu_cpu_s",
                "memhook_emu_cpu_s", "generic_emu_cpu_s", "plain_wall_s", "generic_wall_s"}
    if shutil.which("valgrind"):
        expected |= {"valgrind_wall_s", "valgrind_dyn_wall_s"}
        assert _positive(wl["valgrind_ratio_wall"]["median"]) and _positive(wl["valgrind_dyn_ratio_wall"]["median"])
    assert expected == set(wl["runs"])
    for key in expected:
        assert len(wl["runs"][key]) == 2 and all(_positive(v) for v in wl["runs"][key])
        assert _positive(wl["median"][key])
    for key in ("ratio_emu", "ratio_emu_cpu", "ratio_wall", "memhook_ratio_emu", "memhook_ratio_emu_cpu"):
        assert all(_positive(wl[key][k]) for k in ("median", "min", "max")) and len(wl[key]["values"]) == 2

    st = wl["sanitizer_stats"]
    assert st["allocs"] >= wl["iterations"] and st["frees"] >= wl["iterations"] and st["errors"] == 0
    assert wl["pairs"] == wl["iterations"] and wl["pairs_constant"] is True
    u = wl["us_per_pair"]
    assert _positive(u["gross_emu_cpu"]["median"])
    for k in ("net_emu_cpu", "net_emu", "net_wall"):                  # differences: any sign
        assert isinstance(u[k]["median"], float) and len(u[k]["values"]) == 2

    assert res["targets"]["generic_max_ratio"] == 1.5 and res["targets"]["pair_max_us"] == 5.0
    pair = res["targets"]["pair"]["x86_64/mallocfree"]
    assert pair["target_applies"] is False
    assert all(isinstance(pair[f"met_{m}"], bool) for m in ("emu_cpu", "emu", "wall"))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_vmalloc_bench_smoke(tmp_path):
    """bench/vmalloc.py (test_vmalloc: no KASAN vs hook-based generic vs mmap shadow), tiny loops."""
    stdout, res = _run_bench(tmp_path, "vmalloc.py", "--reps", "1", "--arch", "x86_64",
                             "--scale", "0.02", timeout=180)
    assert "KASAN vmalloc" in stdout and "x KASAN" in stdout     # the table was printed
    assert {"schema", "meta", "results"} <= res.keys()
    assert res["meta"]["reps"] == 1 and res["meta"]["arches"] == ["x86_64"]
    (d,) = res["results"]
    assert d["arch"] == "x86_64" and d["outputs_match"] is True
    assert d["reference_output"].startswith("check ")
    names = [t["name"] for t in d["tests"]]
    assert names == ["fix_size_alloc_test", "full_fit_alloc_test", "long_busy_list_alloc_test",
                     "random_size_alloc_test", "fix_align_alloc_test", "random_size_align_alloc_test",
                     "align_shift_alloc_test", "pcpu_alloc_test"]
    for row in (*d["tests"], d["total"], d["wall"]):
        assert set(row["runs"]) == {"plain", "original", "vmalloc"}
        assert all(len(v) == 1 and _positive(v[0]) for v in row["runs"].values())
        assert set(row["ratio"]) == {"original_plain", "vmalloc_plain", "vmalloc_original"}
        assert all(_positive(r["median"]) for r in row["ratio"].values())
    assert d["stats_vmalloc"]["errors"] == 0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_shadow_memory_bench_smoke(tmp_path):
    """bench/shadow_memory.py (--shadow full vs per-page), tiny iteration counts."""
    stdout, res = _run_bench(tmp_path, "shadow_memory.py", "--reps", "1", "--arch", "x86_64",
                             "--scale", "0.02", timeout=180)
    assert "peak RSS MB" in stdout                  # the table was printed
    assert {"schema", "meta", "target", "workloads"} <= res.keys()
    assert [d["name"] for d in res["workloads"]] == ["alloc", "bigalloc", "mmapheavy"]
    for d in res["workloads"]:
        assert d["arch"] == "x86_64" and d["outputs_match"] is True
        for shadow in ("full", "per-page"):
            s = d["shadow"][shadow]
            assert _positive(s["median"]["peak_rss_bytes"]) and _positive(s["touched_heap_bytes"])
            assert s["shadow_peak_bytes"] >= s["shadow_exit_bytes"] >= 0
            assert isinstance(s["target_met_peak"], bool) and isinstance(s["target_met_exit"], bool)
            assert len(d["runs"][shadow]) == 1 and d["runs"][shadow][0]["errors"] == 0
        assert _positive(d["peak_rss_ratio"]["median"])


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")
def test_compiler_bench_smoke(tmp_path):
    """bench/compiler.py (plain, generic, compiler-assisted, bare shadow), one tiny workload."""
    stdout, res = _run_bench(tmp_path, "compiler.py", "--reps", "1", "--arch", "x86_64",
                             "--workloads", "compute", "--scale", "0.02", timeout=300)
    assert "emsan runtime over bare shadow" in stdout
    assert {"schema", "meta", "workloads", "targets"} <= res.keys()
    assert res["meta"]["reps"] == 1 and res["meta"]["arches"] == ["x86_64"]
    (d,) = res["workloads"]
    assert d["arch"] == "x86_64" and d["name"] == "compute" and d["outputs_match"] is True
    assert d["cc_stats"]["cc_reports"] == 0
    row = res["targets"]["runtime"]["x86_64/compute"]
    assert _positive(row["cc_over_bare_emu_cpu"]) and isinstance(row["met_emu_cpu"], bool)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_leaks_bench_smoke(tmp_path):
    """bench/leaks.py on a tiny heap: emsan's scan finds every object the workload lost (and so do
    the peers when installed); the cost of --leaks is a ratio."""
    stdout, res = _run_bench(tmp_path, "leaks.py", "--reps", "1", "--arch", "x86_64",
                             "--workloads", "leaky,mallocfree", "--scale", "0.002", timeout=300)
    assert "Leak scan at exit" in stdout and "--no-leaks" in stdout
    scan, cost = res["workloads"]
    assert scan["name"] == "leaky" and cost["name"] == "mallocfree"
    assert scan["made_lost"] == 200                  # 2,000 objects, one in 10 dropped
    assert scan["heap"]["leaked"] + scan["heap"]["indirect"] == scan["made_lost"]
    assert scan["heap"]["objects"] >= 2000 and _positive(scan["emsan_scan_s"]["median"])
    if "lsan1" in scan["configs"]:
        assert scan["lsan_lost_objects"] == scan["valgrind_lost_objects"] == scan["made_lost"]
    assert _positive(cost["ratio_wall"]["median"]) and len(cost["runs"]["leaks"]) == 1


@pytest.mark.skipif(shutil.which("afl-fuzz") is None or shutil.which("afl-clang-fast") is None,
                    reason="AFL++ is not installed")
def test_fuzz_bench_smoke(tmp_path):
    """bench/afl_fuzz.py: every configuration fuzzes (executions counted) and time to first crash runs."""
    stdout, res = _run_bench(tmp_path, "afl_fuzz.py", "--reps", "1", "--arch", "x86_64", "--seconds", "1",
                             "--crash-seconds", "2", timeout=600)
    assert "executions per second" in stdout and "Time to first crash" in stdout
    assert res["schema"] == "emsan-bench-fuzz/1" and res["meta"]["arches"] == ["x86_64"]
    configs = {row["config"] for row in res["execs"]}
    assert configs == {"emsan none", "emsan generic", "emsan kfence", "plain Unicorn harness",
                       "emsan generic, persistent parse()", "plain Unicorn harness, persistent",
                       "AFL++ afl-clang-fast + ASan (native)"}
    for row in res["execs"]:
        assert _positive(row["execs_per_sec"]["median"]), row
        assert _positive(row["vs_emsan_none"]["median"]) and _positive(row["vs_plain_harness"]["median"])
    assert {r["tool"] for r in res["time_to_first_crash"]} == {"emsan generic (CmpLog)",
                                                              "AFL++ afl-clang-fast + ASan (CmpLog)"}
    for r in res["time_to_first_crash"]:
        assert set(r["bugs"]) <= {"slab-out-of-bounds", "slab-use-after-free"}


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("qemu-x86_64") is None,
                    reason="gcc and qemu-user are needed")
def test_threads_bench_smoke(tmp_path):
    """bench/threads.py with few round trips: a per-switch figure for every configuration and
    the slice hook's paired ratio."""
    stdout, res = _run_bench(tmp_path, "threads.py", "--reps", "1", "--arch", "x86_64",
                             "--rounds", "200", "--scale", "0.05", timeout=300)
    assert "one guest context switch" in stdout and "time-slice block hook" in stdout
    per = res["switch"]["x86_64"]
    assert set(per) == {"native", "qemu-user", "emsan-none", "emsan-generic", "emsan-kfence"}
    assert all(len(r["cpu_values_us"]) == 1 for r in per.values())     # tiny runs: signs may be noise
    hook = res["slice_hook"]["x86_64"]
    assert _positive(hook["cpu_s_thread"]) and _positive(hook["cpu_s_alone"]) and _positive(hook["ratio"]["median"])


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="gcc or aarch64-linux-gnu-gcc is not installed")
def test_modes_bench_smoke(tmp_path):
    """bench/modes.py (every mode over --mode none, memcheck, qemu-user), one tiny workload on both
    architectures."""
    stdout, res = _run_bench(tmp_path, "modes.py", "--quick", "--reps", "1", "--workloads", "strings",
                             "--scale", "0.002", timeout=600)
    assert "≤ 1.03× --mode none" in stdout
    assert {"schema", "meta", "workloads", "targets"} <= res.keys()
    assert res["meta"]["reps"] == 1 and res["meta"]["arches"] == ["x86_64", "arm64"]
    x86, arm = res["workloads"]
    for d in (x86, arm):
        assert d["name"] == "strings" and d["outputs_match"] is True, d["mismatches"]
        for mode in ("generic", "kfence"):
            assert _positive(d["ratio"][mode]["emu_cpu"]["median"]) and _positive(d["ratio"][mode]["wall"]["median"])
    assert {"sw-tags", "hw-tags"} <= arm["ratio"].keys() and not {"sw-tags", "hw-tags"} & x86["ratio"].keys()
    row = res["targets"]["modes"]["kfence"]["x86_64/strings"]
    assert _positive(row["ratio_emu_cpu"]) and isinstance(row["met_wall"], bool)
    if shutil.which("valgrind"):
        assert isinstance(res["targets"]["generic_faster_than_memcheck"]["x86_64/strings"]["met"], bool)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_startup_bench_smoke(tmp_path):
    """bench/startup.py, one repetition of --mode none: the peers that are installed, python, and
    emsan with an empty and a warm cache, each with a wall and a CPU figure."""
    stdout, res = _run_bench(tmp_path, "startup.py", "--reps", "1", "--arch", "x86_64", "--modes", "none",
                             timeout=300)
    assert "Start-up, dynamic hello, x86_64" in stdout
    (rec,) = res["results"]
    assert {"native", "python", "none-cold", "none-warm"} <= set(rec["wall"])
    assert all(len(v) == 1 and _positive(v[0]) for v in rec["wall"].values())
    assert all(len(v) == 1 and v[0] >= 0 for v in rec["cpu"].values())
    assert set(rec["target_met"]) == {"none-warm"}
