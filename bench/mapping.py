#!/usr/bin/env python3
"""Mapping-cost benchmark: what a guest mmap/munmap costs as mappings accumulate, and what a
partial munmap of a large mapping costs (time and emsan's memory).

    python3 bench/mapping.py [--baseline-python PY] [--arch x86_64|arm64|all] [--reps N]
                             [--counts 100,1000,2000] [--mb 256] [--json FILE]

bench/workloads/mapping.c times, inside the guest, 200 map+unmap pairs of one page with N
mappings in place (`grow`), and the munmap of the first page of an MB-MiB mapping whose every
page was written (`partial`); `touch` is the same without the munmap, the peak-RSS baseline.
Each run is `emsan run --mode none`; with --baseline-python the same runs are made with another
interpreter's emsan install (e.g. a venv holding main), interleaved with this one's, so the two
designs are compared side by side under the same load. Peak RSS is the child's ru_maxrss.
Figures go to stdout and JSON (default bench/results/mapping.json); nothing asserts on speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ARCHES, BENCH, PY, BenchError, build, host_meta, rotate, run_and_report  # noqa: E402

DEFAULT_JSON = BENCH / "results" / "mapping.json"


def run(py: str, exe: Path, args: list[str], cwd: str, timeout: float) -> tuple[dict[str, int], int]:
    """One `emsan run --mode none` of the workload: its printed figures and the peak RSS (bytes)."""
    proc = subprocess.Popen([py, "-m", "emsan", "run", "--mode", "none", str(exe), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"{py} {exe.name} {' '.join(args)}: no result within {timeout:g} s")
    rss = _child_maxrss()
    if proc.returncode != 0:
        raise BenchError(f"{py} {exe.name} {' '.join(args)}: exit {proc.returncode}\n{err.decode(errors='replace')}")
    figures = {}
    for line in out.decode().splitlines():
        kind, n, value = line.split()
        figures[f"{kind} {n}"] = int(value)
    return figures, rss


def _child_maxrss() -> int:
    """Peak RSS of the child that just ended: RUSAGE_CHILDREN keeps the maximum over all children,
    so each workload that must be measured alone runs in its own short-lived helper."""
    import resource
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def measure_rss(py: str, exe: Path, args: list[str], cwd: str, timeout: float) -> tuple[dict[str, int], int]:
    """run(), in a helper process whose RUSAGE_CHILDREN holds only this run."""
    code = ("import json,sys;sys.path.insert(0,%r);import mapping;print(json.dumps(mapping.run(%r,__import__('pathlib')"
            ".Path(%r),%r,%r,%r)))") % (str(BENCH), py, str(exe), args, cwd, timeout)
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    if p.returncode:
        raise BenchError(p.stderr[-3000:])
    figures, rss = json.loads(p.stdout)
    return figures, rss


def bench(args) -> dict:
    arches = ARCHES if args.arch == "all" else (args.arch,)
    counts = [int(c) for c in args.counts.split(",")]
    targets = {"this": PY}
    if args.baseline_python:
        targets["baseline"] = args.baseline_python
    cases = []
    for arch in arches:
        exe = build("mapping", arch)
        for t in targets:
            cases += [(arch, t, exe, ["grow", *map(str, counts)]), (arch, t, exe, ["partial", str(args.mb)]),
                      (arch, t, exe, ["touch", str(args.mb)])]
    samples: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for arch, t, exe, wargs in rotate(cases, rep):
                figures, rss = measure_rss(targets[t], exe, wargs, tmp, args.timeout)
                samples.setdefault((arch, t, wargs[0]), []).append((figures, rss))
                print(f"  rep {rep + 1} {arch} {t:8} {' '.join(wargs):24} {figures} rss {rss >> 20} MiB", flush=True)
    res: dict = {"meta": {**host_meta(), "reps": args.reps, "counts": counts, "mb": args.mb,
                          "targets": targets, "loadavg_after": list(os.getloadavg())}, "results": {}}
    for arch in arches:
        for t in targets:
            grow = samples[(arch, t, "grow")]
            part = samples[(arch, t, "partial")]
            touch = samples[(arch, t, "touch")]
            r = {f"pair_us_at_{n}": statistics.median(f[f"grow {n}"] for f, _ in grow) / 1e3 for n in counts}
            r["partial_munmap_ms"] = statistics.median(f[f"partial {args.mb}"] for f, _ in part) / 1e6
            r["partial_rss_mib"] = statistics.median(rss for _, rss in part) / 2**20
            r["touch_rss_mib"] = statistics.median(rss for _, rss in touch) / 2**20
            r["partial_extra_rss_mib"] = statistics.median(
                p[1] - q[1] for p, q in zip(part, touch)) / 2**20
            res["results"][f"{arch} {t}"] = r
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-python", help="another interpreter whose emsan to compare with (e.g. main's venv)")
    p.add_argument("--arch", choices=("x86_64", "arm64", "all"), default="all")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--counts", default="100,1000,2000", help="mapping counts of `grow` (ascending)")
    p.add_argument("--mb", type=int, default=256, help="size of the `partial` mapping in MiB")
    p.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return run_and_report(p, argv, lambda args, say: bench(args), render, 220)


def render(res: dict, console) -> None:
    for name, r in res["results"].items():
        console.print(f"{name:20} " + "  ".join(f"{k}={v:.3f}" for k, v in r.items()))
    console.print(f"load average after: {res['meta']['loadavg_after']}")

if __name__ == "__main__":
    sys.exit(main())
