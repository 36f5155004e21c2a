#!/usr/bin/env python3
"""KFENCE-mode benchmark: overhead next to plain emulation and generic mode, and detection
probability against the sample interval, measured with `emsan fleet`.

    python3 bench/kfence.py [--quick] [--arch x86_64|arm64|all] [--reps N] [--runs N]
                            [--intervals 1,10,50,200] [--no-overhead] [--no-detection] [--json FILE]

Overhead: for each workload (compute, strings, alloc: bench/workloads/*.c), one fresh process per
measurement, modes interleaved (none, kfence, generic) and rotated between repetitions. Each run
reports the time spent inside Uc.emu_start (emulation plus hooks, without start-up) and the
process's wall time; ratios are paired per repetition against `--mode none` (medians, ranges).

Detection: bench/workloads/rarebug.c makes ~2000 allocations, one of which (halfway, in
parse_record) overflows by one byte. For each sample interval, `emsan fleet --runs N` runs it
with seeds 1..N and counts the runs that caught it (expected about 1/interval).

Figures go to stdout (rich tables) and JSON (default bench/results/kfence.json). Nothing here
asserts on speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ARCHES, BENCH, PY, ROOT, WORKLOADS, BenchError, build, host_meta, rotate  # noqa: E402

DEFAULT_JSON = BENCH / "results" / "kfence.json"
MODES = ("none", "kfence", "generic")
OVERHEAD_WORKLOADS = ("compute", "strings", "alloc")
TARGETS = {"compute": 1.03, "strings": 1.03, "alloc": 1.10}


# --- one measured run (this file re-executed with --probe) -------------------------------------------
def probe(stats_path: str, argv: list[str]) -> int:
    """Run `emsan ARGV` in this process, timing every Uc.emu_start; write the times as JSON."""
    import emsan.machine  # noqa: F401  first: the binding must load emsan's engine
    from unicorn.unicorn_py3.unicorn import Uc

    state = {"emu_s": 0.0}
    orig = Uc.emu_start

    def emu_start(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return orig(self, *a, **kw)
        finally:
            state["emu_s"] += time.perf_counter() - t0
    Uc.emu_start = emu_start
    from emsan.cli.main import main
    status = main(argv)
    sys.stdout.flush()
    with open(stats_path, "w") as f:
        json.dump(state, f)
    return status


def measure(tmp: str, mode: str, exe: Path, args: list[str]) -> tuple[float, float, bytes]:
    stats = os.path.join(tmp, "probe.json")
    cmd = [PY, str(Path(__file__).resolve()), "--probe", stats, "run", "--mode", mode, str(exe), *args]
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp)
    wall = time.monotonic() - t0
    if p.returncode:
        raise BenchError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr.decode(errors='replace')[-2000:]}")
    with open(stats) as f:
        return json.load(f)["emu_s"], wall, p.stdout


def overhead(arches, reps: int, scale: float, log) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="emsan-kfence-bench-") as tmp:
        for arch in arches:
            for name in OVERHEAD_WORKLOADS:
                exe = build(name, arch)
                iters = max(1, round(WORKLOADS[name][arch] * scale))
                runs = {m: {"emu_s": [], "wall_s": []} for m in MODES}
                outputs = set()
                for rep in range(reps):
                    for mode in rotate(MODES, rep):
                        emu, wall, out = measure(tmp, mode, exe, [str(iters)])
                        runs[mode]["emu_s"].append(emu)
                        runs[mode]["wall_s"].append(wall)
                        outputs.add(out)
                row = {"arch": arch, "workload": name, "iterations": iters, "reps": reps, "runs": runs,
                       "outputs_match": len(outputs) == 1}
                for mode in ("kfence", "generic"):
                    for what in ("emu_s", "wall_s"):
                        ratios = [a / b for a, b in zip(runs[mode][what], runs["none"][what])]
                        row[f"{mode}_{what}_ratio"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                       "max": max(ratios), "values": ratios}
                rows.append(row)
                log(f"{arch} {name}: kfence x{row['kfence_emu_s_ratio']['median']:.3f}, "
                    f"generic x{row['generic_emu_s_ratio']['median']:.3f} (emulation time)")
    return rows


def detection(arch: str, intervals: list[int], runs: int, jobs: int, log) -> list[dict]:
    exe = build("rarebug", arch)
    rows = []
    with tempfile.TemporaryDirectory(prefix="emsan-kfence-fleet-") as tmp:
        for si in intervals:
            js = os.path.join(tmp, f"fleet-{si}.json")
            cmd = [PY, "-m", "emsan", "fleet", "--runs", str(runs), "--jobs", str(jobs), "--quiet", "--seed", "1",
                   "--json", js, "--mode", "kfence", "--sample-interval", str(si), "--", str(exe)]
            t0 = time.monotonic()
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp)
            if p.returncode not in (0, 99):
                raise BenchError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr.decode(errors='replace')[-2000:]}")
            with open(js) as f:
                s = json.load(f)
            caught = sum(b["runs"] for b in s["bugs"] if b["function"] in ("main", "parse_record"))
            other = [b for b in s["bugs"] if b["function"] not in ("main", "parse_record")]
            rows.append({"arch": arch, "sample_interval": si, "runs": runs, "caught": caught,
                         "probability": caught / runs, "expected": min(1.0, 1 / si),
                         "bugs": [(b["bug_type"], b["function"], b["runs"]) for b in s["bugs"]],
                         "unexpected_bugs": len(other), "statuses": s["statuses"],
                         "wall_s": time.monotonic() - t0})
            log(f"{arch} interval {si}: {caught}/{runs} runs caught the bug")
    return rows


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        return probe(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and runs")
    ap.add_argument("--arch", default="x86_64", choices=(*ARCHES, "all"))
    ap.add_argument("--reps", type=int, help="repetitions per overhead measurement (default 5, quick 3)")
    ap.add_argument("--scale", type=float, default=1.0, help="scale the workloads' iteration counts")
    ap.add_argument("--runs", type=int, help="fleet runs per sample interval (default 60, quick 24)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--intervals", default="1,4,16,64")
    ap.add_argument("--no-overhead", action="store_true")
    ap.add_argument("--no-detection", action="store_true")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console()
    log = lambda msg: console.print(f"[dim]{msg}[/dim]")   # noqa: E731
    arches = ARCHES if args.arch == "all" else (args.arch,)
    reps = args.reps or (3 if args.quick else 5)
    runs = args.runs or (24 if args.quick else 60)
    result = {"benchmark": "kfence", "started": datetime.now(timezone.utc).isoformat(), "meta": host_meta(),
              "load_before": os.getloadavg()}
    try:
        if not args.no_overhead:
            result["overhead"] = overhead(arches, reps, args.scale, log)
        if not args.no_detection:
            result["detection"] = [r for a in arches
                                   for r in detection(a, [int(x) for x in args.intervals.split(",")], runs,
                                                      args.jobs, log)]
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    result["load_after"] = os.getloadavg()

    if "overhead" in result:
        t = Table(title=f"KFENCE overhead: emulation-time ratio to --mode none, median (range) of {reps} "
                        "interleaved runs; whole-process wall ratio in the last columns")
        for c in ("arch", "workload", "plain emu s", "kfence", "target", "generic", "kfence wall", "generic wall"):
            t.add_column(c, justify="right" if c not in ("arch", "workload") else "left")
        for r in result["overhead"]:
            f = lambda d: f"{d['median']:.3f} ({d['min']:.2f}–{d['max']:.2f})"   # noqa: E731
            t.add_row(r["arch"], r["workload"], f"{statistics.median(r['runs']['none']['emu_s']):.3f}",
                      f(r["kfence_emu_s_ratio"]), f"≤ {TARGETS[r['workload']]:.2f}", f(r["generic_emu_s_ratio"]),
                      f(r["kfence_wall_s_ratio"]), f(r["generic_wall_s_ratio"]))
        console.print(t)
    if "detection" in result:
        t = Table(title="KFENCE detection probability of one rare heap bug (bench/workloads/rarebug.c), "
                        "emsan fleet, seeds 1..N")
        for c in ("arch", "sample interval", "runs", "caught", "probability", "expected ~1/interval"):
            t.add_column(c, justify="right" if c != "arch" else "left")
        for r in result["detection"]:
            t.add_row(r["arch"], str(r["sample_interval"]), str(r["runs"]), str(r["caught"]),
                      f"{r['probability']:.2f}", f"{r['expected']:.2f}")
        console.print(t)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    console.print(f"[dim]JSON: {os.path.relpath(args.json, ROOT) if args.json.startswith(str(ROOT)) else args.json}[/dim]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
