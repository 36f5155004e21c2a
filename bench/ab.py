#!/usr/bin/env python3
"""Two installed emsans side by side: is a change faster or slower, mode by mode?

    python3 bench/ab.py --base /path/to/other/venv/bin/python [--quick] [--reps N] [--arch x86_64|arm64|all]
                        [--modes none,generic,hook,kfence,sw-tags,hw-tags] [--workloads ...] [--scale F]

Runs `emsan run --mode MODE WORKLOAD N` through bench/probe.py (its `time` measurement: CPU
time of the engine's thread inside Uc.emu_start, and the process's wall time) with the base
interpreter (another virtualenv with the other emsan installed) and with this one
(`sys.executable`), one right after the other, alternating which goes first; prints the medians
of the paired ratios new/base, with their spread. `hook` is generic mode with --checks hook.
Each repetition moves both sides' heap by the same offset (EMSAN_BENCH_HEAP_SHIFT, see
probe.py): the engine's speed at hooked calls depends by several per cent on where its hook
lists land, and a single layout favours one side by chance. The guest's output must be the same
from both. Figures go to stdout and JSON (default bench/results/ab.json); nothing is asserted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, WORKLOADS, BenchError, build, now, run_and_report, run_meta, selected,  # noqa: E402
                    standard_parser, summary)

AB_WORKLOADS = {**WORKLOADS, "mallocfree": {"x86_64": 400_000, "arm64": 400_000}}
MODES = {"none": "emsan", "generic": "emsan-generic", "hook": "emsan-hook", "kfence": "emsan-kfence",
         "sw-tags": "emsan-sw-tags", "hw-tags": "emsan-hw-tags"}          # probe.py targets
ARM64_ONLY = ("sw-tags", "hw-tags")
# Each repetition shifts the heap of both sides by the same amount (bench/probe.py): the engine's
# speed depends on where its hook lists land, and one layout favours either side by chance.
SHIFTS = (0, 1056, 2112, 3168, 4224, 5280, 6336, 7392)


def run(python: str, mode: str, exe: Path, n: int, cwd: str, shift: int) -> tuple[float, float, bytes]:
    """(emu CPU s, wall s, stdout) of one probe run, with the heap shifted by `shift` bytes."""
    stats = os.path.join(cwd, "stats.json")
    cmd = [python, str(BENCH / "probe.py"), stats, "time", MODES[mode], str(exe), str(n)]
    env = dict(os.environ, EMSAN_BENCH_HEAP_SHIFT=str(shift))
    t0 = now()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    wall = now() - t0
    if proc.returncode:
        raise BenchError(f"exit status {proc.returncode}: {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
    with open(stats) as f:
        return json.load(f)["emu_cpu_s"], wall, proc.stdout


def run_bench(args, log) -> dict:
    from datetime import datetime, timezone

    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    reps = args.reps or (3 if args.quick else 5)
    arches, names = selected(args, AB_WORKLOADS)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise BenchError(f"unknown mode {m!r} (have: {', '.join(MODES)})")
    cases = [(arch, wl, mode) for arch in arches for wl in names for mode in modes
             if arch == "arm64" or mode not in ARM64_ONLY]
    sides = {"base": args.base, "new": sys.executable}
    runs = {c: {"base_cpu": [], "new_cpu": [], "base_wall": [], "new_wall": []} for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        exes = {(a, w): build(w, a) for a in arches for w in names}
        for rep in range(reps):
            for i, (arch, wl, mode) in enumerate(cases):
                n = max(1, int(AB_WORKLOADS[wl][arch] * args.scale))
                order = ("base", "new") if (rep + i) % 2 == 0 else ("new", "base")
                outs = {}
                for side in order:
                    cpu, wall, outs[side] = run(sides[side], mode, exes[(arch, wl)], n, tmp, SHIFTS[rep % len(SHIFTS)])
                    runs[(arch, wl, mode)][f"{side}_cpu"].append(cpu)
                    runs[(arch, wl, mode)][f"{side}_wall"].append(wall)
                if outs["base"] != outs["new"]:
                    raise BenchError(f"{arch} {wl} {mode}: the two installs printed different output")
            log(f"[dim]repetition {rep + 1}/{reps} done[/dim]")
    results = [{"arch": arch, "workload": wl, "mode": mode,
                **{f"{k}_s": summary(v) for k, v in r.items()},
                "ratio_emu_cpu": summary([n / b for n, b in zip(r["new_cpu"], r["base_cpu"])]),
                "ratio_wall": summary([n / b for n, b in zip(r["new_wall"], r["base_wall"])])}
               for (arch, wl, mode), r in runs.items()]
    return {"schema": "emsan-bench-ab-1",
            "meta": run_meta(args, arches, reps, started, load_before, base=args.base, new=sys.executable),
            "results": results}


def render(res: dict, console) -> None:
    from rich.table import Table

    t = Table(title="new / base: medians of paired ratios (min-max)")
    for col in ("arch", "workload", "mode", "base emu CPU s", "new emu CPU s", "new/base emu CPU", "new/base wall"):
        t.add_column(col, justify="left" if col in ("arch", "workload", "mode") else "right")
    for r in res["results"]:
        c, w = r["ratio_emu_cpu"], r["ratio_wall"]
        t.add_row(r["arch"], r["workload"], r["mode"], f"{r['base_cpu_s']['median']:.3f}",
                  f"{r['new_cpu_s']['median']:.3f}", f"{c['median']:.3f} ({c['min']:.2f}-{c['max']:.2f})",
                  f"{w['median']:.3f} ({w['min']:.2f}-{w['max']:.2f})")
    console.print(t)
    m = res["meta"]
    console.print(f"load average before {m['loadavg_before'][0]}, after {m['loadavg_after'][0]}")


def main(argv: list[str] | None = None) -> int:
    p = standard_parser("two emsan installs side by side", BENCH / "results" / "ab.json", AB_WORKLOADS)
    p.add_argument("--base", required=True, help="the interpreter of the other emsan install")
    p.add_argument("--modes", default="none,generic,hook,kfence,sw-tags",
                   help=f"comma-separated subset of {','.join(MODES)}")
    return run_and_report(p, argv, run_bench, render, 110)


if __name__ == "__main__":
    raise SystemExit(main())
