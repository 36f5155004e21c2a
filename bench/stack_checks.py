#!/usr/bin/env python3
"""Cost of return-address protection (--stack-checks ret) and of stack-object checks (--stack-checks
full) in generic mode, on the bench workloads.

    python3 bench/stack_checks.py [--quick] [--json FILE] [--arch x86_64|arm64|all] [--reps N]
                                  [--workloads compute,alloc,strings] [--scale F]

Four configurations of `emsan run` (generic mode), interleaved (one round runs each once, in
rotated order), paired per round against the first:
  off         --stack-checks none (the default collector: scs on these static binaries, whose
              libc has no frame pointers, so its block hook runs anyway)
  ret         --stack-checks ret (the default): the same hook compares every return
  fp, off     --stacks fp --stack-checks none: no block hook at all
  fp, ret     --stacks fp --stack-checks ret: the block hook added for the checks alone
  full        --stack-checks full: ret, and every stack range an interceptor touches checked
              against its frame (strings: six per iteration into main's 512-byte array)
Ratios use each run's CPU seconds (user + system of the one child: not stretched by other
tenants), and whole-run wall time is shown beside them. Nothing here asserts on speed.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, PY, WORKLOADS, Runner, build, rotate, run_and_report, run_meta, selected,  # noqa: E402
                    standard_parser)

DEFAULT_JSON = BENCH / "results" / "stack_checks.json"
CONFIGS = [("off", ["--stack-checks", "none"]), ("ret", ["--stack-checks", "ret"]),
           ("fp, off", ["--stacks", "fp", "--stack-checks", "none"]),
           ("fp, ret", ["--stacks", "fp", "--stack-checks", "ret"]), ("full", ["--stack-checks", "full"])]
PAIRS = [("ret", "off"), ("fp, ret", "fp, off"), ("ret", "fp, off"), ("full", "off"), ("full", "ret")]
TARGET = 1.10           # the issue: within +10% of off


def run_bench(args, log) -> dict:
    arches, names = selected(args, WORKLOADS)
    reps = args.reps or (3 if args.quick else 5)
    started, load = datetime.now(timezone.utc), os.getloadavg()
    out: dict = {"results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        r = Runner(tmp)
        for arch in arches:
            for name in names:
                exe = build(name, arch)
                iters = str(max(1, round(WORKLOADS[name][arch] * args.scale)))
                cpu: dict[str, list[float]] = {c: [] for c, _ in CONFIGS}
                wall: dict[str, list[float]] = {c: [] for c, _ in CONFIGS}
                outputs = set()
                for rep in range(reps):
                    for conf, flags in rotate(CONFIGS, rep):
                        w, stdout = r.command([PY, "-m", "emsan", "run", "--mode", "generic", *flags, str(exe), iters],
                                              f"{arch} {name} {conf}")
                        cpu[conf].append(r.last_cpu)
                        wall[conf].append(w)
                        outputs.add(stdout)
                    log(f"  {arch} {name}: round {rep + 1}/{reps}")
                if len(outputs) != 1:
                    raise RuntimeError(f"{arch} {name}: the configurations printed different output")
                res = {"iterations": int(iters),
                       "cpu_s": {c: statistics.median(v) for c, v in cpu.items()},
                       "wall_s": {c: statistics.median(v) for c, v in wall.items()}}
                for a, b in PAIRS:
                    ratios = [x / y for x, y in zip(cpu[a], cpu[b])]
                    wr = [x / y for x, y in zip(wall[a], wall[b])]
                    res[f"{a} / {b}"] = {"cpu_median": statistics.median(ratios), "cpu_min": min(ratios),
                                         "cpu_max": max(ratios), "wall_median": statistics.median(wr)}
                out["results"].setdefault(arch, {})[name] = res
    out["meta"] = run_meta(args, arches, reps, started, load, configs=[c for c, _ in CONFIGS], target=TARGET)
    return out


def render(res: dict, console) -> None:
    from rich.table import Table
    t = Table(title="--stack-checks: cost in generic mode (paired CPU-time ratios, median (min-max); wall median)")
    t.add_column("arch")
    t.add_column("workload")
    for a, b in PAIRS:
        t.add_column(f"{a} / {b}")
    t.add_column("off CPU s")
    for arch, rows in res["results"].items():
        for name, row in rows.items():
            cells = []
            for a, b in PAIRS:
                x = row[f"{a} / {b}"]
                cells.append(f"{x['cpu_median']:.3f} ({x['cpu_min']:.2f}-{x['cpu_max']:.2f}); wall {x['wall_median']:.3f}")
            t.add_row(arch, name, *cells, f"{row['cpu_s']['off']:.2f}")
    console.print(t)
    m = res["meta"]
    console.print(f"reps {m['reps']}, load average before {m['loadavg_before']}, after {m['loadavg_after']}")


def main(argv=None) -> int:
    p = standard_parser(__doc__.splitlines()[0], DEFAULT_JSON, WORKLOADS)
    return run_and_report(p, argv, run_bench, render, 160)


if __name__ == "__main__":
    sys.exit(main())
