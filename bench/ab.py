#!/usr/bin/env python3
"""Two installed emsans side by side: is a change faster or slower, mode by mode?

    python3 bench/ab.py --base /path/to/other/venv/bin/python [--quick] [--reps N] [--arch x86_64|arm64|all]
                        [--modes none,generic,hook,kfence,sw-tags,hw-tags] [--workloads ...] [--scale F]

Runs `python -m emsan run --mode MODE WORKLOAD N` with the base interpreter (another virtualenv
with the other emsan installed) and with this one (`sys.executable`), one right after the other,
in rotated order, every repetition; prints the median of the paired ratios new/base of the
whole-process wall time, with its spread. `hook` is generic mode with --checks hook. The
guest's output must be the same from both. Figures go to stdout and JSON (default
bench/results/ab.json); nothing is asserted.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, WORKLOADS, BenchError, build, now, run_and_report, run_meta, selected,  # noqa: E402
                    standard_parser, summary)

AB_WORKLOADS = {**WORKLOADS, "mallocfree": {"x86_64": 400_000, "arm64": 400_000}}
MODES = {"none": ["--mode", "none"], "generic": ["--mode", "generic"],
         "hook": ["--mode", "generic", "--checks", "hook"], "kfence": ["--mode", "kfence"],
         "sw-tags": ["--mode", "sw-tags"], "hw-tags": ["--mode", "hw-tags"]}
ARM64_ONLY = ("sw-tags", "hw-tags")


def run(python: str, mode: str, exe: Path, n: int, cwd: str) -> tuple[float, bytes]:
    cmd = [python, "-m", "emsan", "run", *MODES[mode], str(exe), str(n)]
    t0 = now()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    wall = now() - t0
    if proc.returncode:
        raise BenchError(f"exit status {proc.returncode}: {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
    return wall, proc.stdout


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
    walls = {c: {"base": [], "new": []} for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        exes = {(a, w): build(w, a) for a in arches for w in names}
        for rep in range(reps):
            for i, (arch, wl, mode) in enumerate(cases):
                n = max(1, int(AB_WORKLOADS[wl][arch] * args.scale))
                order = ("base", "new") if (rep + i) % 2 == 0 else ("new", "base")
                outs = {}
                for side in order:
                    wall, outs[side] = run(sides[side], mode, exes[(arch, wl)], n, tmp)
                    walls[(arch, wl, mode)][side].append(wall)
                if outs["base"] != outs["new"]:
                    raise BenchError(f"{arch} {wl} {mode}: the two installs printed different output")
            log(f"[dim]repetition {rep + 1}/{reps} done[/dim]")
    results = [{"arch": arch, "workload": wl, "mode": mode, "base_wall_s": summary(w["base"]),
                "new_wall_s": summary(w["new"]), "ratio": summary([n / b for n, b in zip(w["new"], w["base"])])}
               for (arch, wl, mode), w in walls.items()]
    return {"schema": "emsan-bench-ab-1",
            "meta": run_meta(args, arches, reps, started, load_before, base=args.base, new=sys.executable),
            "results": results}


def render(res: dict, console) -> None:
    from rich.table import Table

    t = Table(title="new / base, whole-process wall time (median of paired ratios)")
    for col in ("arch", "workload", "mode", "base s", "new s", "new/base", "spread"):
        t.add_column(col, justify="right" if col.endswith(("s", "base", "spread")) else "left")
    for r in res["results"]:
        q = r["ratio"]
        t.add_row(r["arch"], r["workload"], r["mode"], f"{r['base_wall_s']['median']:.3f}",
                  f"{r['new_wall_s']['median']:.3f}", f"{q['median']:.3f}", f"{q['min']:.3f}-{q['max']:.3f}")
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
