#!/usr/bin/env python3
"""test_vmalloc-style benchmark: the mmap area shadowed like the kernel's vmalloc space.

    python3 bench/vmalloc.py [--quick] [--json FILE] [--arch x86_64|arm64|all] [--reps N] [--scale F]

bench/workloads/vmalloc.c ports the eight test_vmalloc tests of the kernel's "kasan: support backing
vmalloc space with real shadow memory" series to mmap/munmap
patterns and times each test inside the guest (CLOCK_MONOTONIC). It runs under three
configurations, as the seed's table compares them:

  No KASAN        emsan run --mode none
  KASAN original  emsan run --mode generic --no-mmap-shadow   (hook-based generic, no shadow
                                                               for the mmap area)
  KASAN vmalloc   emsan run --mode generic                    (the mmap area's shadow kept from
                                                               what the guest maps, populated and
                                                               released lazily)

All configurations of all architectures run interleaved, N repetitions (order rotated each
repetition); per-test times are medians, ratios are computed per repetition and their medians
shown (min–max). Figures go to stdout and JSON (default bench/results/vmalloc.json).
Nothing here asserts on speed.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (run_and_report, run_meta, standard_parser, ARCHES, BENCH, PY, ROOT, BenchError, Runner, build,  # noqa: E402
                    paired_ratio, rotate)

DEFAULT_JSON = BENCH / "results" / "vmalloc.json"

TESTS = ("fix_size_alloc_test", "full_fit_alloc_test", "long_busy_list_alloc_test", "random_size_alloc_test",
         "fix_align_alloc_test", "random_size_align_alloc_test", "align_shift_alloc_test", "pcpu_alloc_test")
# The guest's arguments: LOOPS, LIST, PCPU (see bench/workloads/vmalloc.c); --scale multiplies them.
ARGS = {"loops": 200, "list": 200, "pcpu": 3500}

CONFIGS = {                              # name -> (column title, emsan run options)
    "plain": ("No KASAN", ["--mode", "none"]),
    "original": ("KASAN original", ["--mode", "generic", "--no-mmap-shadow"]),
    "vmalloc": ("KASAN vmalloc", ["--mode", "generic"]),
}
RATIOS = {                               # name -> (numerator, denominator, column title)
    "original_plain": ("original", "plain", "x baseline"),
    "vmalloc_plain": ("vmalloc", "plain", "x baseline"),
    "vmalloc_original": ("vmalloc", "original", "x KASAN"),
}
_LINE = re.compile(rb"^(\w+) (\d+)$", re.M)
_CHECK = re.compile(rb"^check .*$", re.M)
_STATS = re.compile(rb"^emsan: stats: (.*)$", re.M)


def parse_times(out: bytes, what: str) -> dict[str, int]:
    times = {m.group(1).decode(): int(m.group(2)) for m in _LINE.finditer(out)}
    missing = [t for t in TESTS if t not in times]
    if missing:
        raise BenchError(f"{what}: no time printed for {', '.join(missing)}\n{out.decode(errors='replace')}")
    return {t: times[t] for t in TESTS}


def check_line(out: bytes) -> str:
    m = _CHECK.search(out)
    return m.group(0).decode() if m else ""


def parse_stats(err: bytes) -> dict:
    m = _STATS.search(err)
    if not m:
        return {}
    st = {}
    for kv in m.group(1).decode().split(", "):
        k, _, v = kv.partition("=")
        st[k] = int(v) if v.lstrip("-").isdigit() else v
    return st


def emsan_cmd(cfg: str, exe: Path, argv: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    return [PY, "-m", "emsan", "run", *CONFIGS[cfg][1], *extra, str(exe), *argv]


# --- the benchmark -----------------------------------------------------------------------------------
def run_bench(args: argparse.Namespace, log) -> dict:
    arches = ARCHES if args.arch == "all" else (args.arch,)
    if args.workloads:
        raise BenchError("--workloads does not apply: there is one workload (vmalloc)")
    reps = args.reps or (3 if args.quick else 5)
    gargs = {k: max(1, round(v * args.scale)) for k, v in ARGS.items()}
    argv = [str(gargs["loops"]), str(gargs["list"]), str(gargs["pcpu"])]
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="emsan-vmalloc-bench-") as tmp:
        r = Runner(tmp)
        res: dict[str, dict] = {}
        # Build, then one untimed run per configuration: the reference output, failures, and
        # the vmalloc configuration's shadow counters (--stats; also warms the caches).
        for arch in arches:
            exe = build("vmalloc", arch)
            d = {"arch": arch, "binary": str(exe.relative_to(ROOT)), "args": gargs,
                 "configs": {c: CONFIGS[c][1] for c in CONFIGS}, "outputs_match": True,
                 "runs": {c: {t: [] for t in TESTS} for c in CONFIGS}, "wall_runs": {c: [] for c in CONFIGS}}
            _, out = r.command(emsan_cmd("plain", exe, argv), f"{arch} plain")
            d["reference_output"] = check_line(out)
            results = d["reference_output"].partition("results=")[2].split(" ")[0]
            if not results or any(ch != "." for i, ch in enumerate(results) if TESTS[i] != "align_shift_alloc_test"):
                raise BenchError(f"{arch}: a test failed in the guest: {d['reference_output']!r}")
            for c in ("original", "vmalloc"):
                _, out = r.command(emsan_cmd(c, exe, argv, ("--stats",)), f"{arch} {c} --stats")
                d["outputs_match"] &= check_line(out) == d["reference_output"]
                d[f"stats_{c}"] = {k: v for k, v in parse_stats(r.last_stderr).items()
                                   if k in ("errors", "shadow_pages", "shadow_pages_peak", "vm_populated",
                                            "vm_released", "peak_rss_bytes")}
                if d[f"stats_{c}"].get("errors"):
                    raise BenchError(f"{arch} {c}: the generic mode reported errors on a correct program:\n"
                                     f"{r.last_stderr.decode(errors='replace')[-3000:]}")
            log(f"{arch}: {exe.name} {' '.join(argv)}: {d['reference_output']}; vmalloc shadow: "
                + ", ".join(f"{k}={v:,}" for k, v in d["stats_vmalloc"].items() if k != "errors"))
            res[arch] = d

        for rep in range(reps):
            log(f"repetition {rep + 1}/{reps}")
            for arch in arches:
                d = res[arch]
                exe = ROOT / d["binary"]
                for c in rotate(list(CONFIGS), rep):
                    wall, out = r.command(emsan_cmd(c, exe, argv), f"{arch} {c}")
                    for t, ns in parse_times(out, f"{arch} {c}").items():
                        d["runs"][c][t].append(ns)
                    d["wall_runs"][c].append(wall)
                    d["outputs_match"] &= check_line(out) == d["reference_output"]

    return {"schema": 1, "meta": run_meta(args, arches, reps, started, load_before),
        "results": [finish(d) for d in res.values()]}


def finish(d: dict) -> dict:
    runs = d.pop("runs")
    reps = len(runs["plain"][TESTS[0]])
    totals = {c: [sum(runs[c][t][i] for t in TESTS) for i in range(reps)] for c in CONFIGS}

    def row(name: str, per_cfg: dict[str, list]) -> dict:
        return {"name": name, "runs": per_cfg,
                "median": {c: statistics.median(v) for c, v in per_cfg.items()},
                "ratio": {k: paired_ratio(per_cfg[a], per_cfg[b]) for k, (a, b, _) in RATIOS.items()}}

    d["tests"] = [row(t, {c: runs[c][t] for c in CONFIGS}) for t in TESTS]
    d["total"] = row("Total", totals)                  # sum of the eight tests, ns
    d["wall"] = row("whole process", d.pop("wall_runs"))   # seconds, launch to exit
    return d


# --- output ------------------------------------------------------------------------------------------
def _r(r: dict) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


def render(res: dict, console) -> None:
    from rich.table import Table

    meta = res["meta"]
    for d in res["results"]:
        t = Table(title=f"{d['arch']}: test_vmalloc under emsan  (vmalloc {d['args']['loops']} {d['args']['list']} "
                        f"{d['args']['pcpu']}; per-test time measured in the guest, ns, median of {meta['reps']} "
                        f"interleaved runs; ratios: median (min–max) of per-repetition ratios)",
                  title_justify="left")
        t.add_column("test", justify="left")
        for c, (title, _) in CONFIGS.items():
            t.add_column(title, justify="right")
            for k, (a, b, rtitle) in RATIOS.items():
                if a == c:
                    t.add_column(rtitle + ("\n(/ No KASAN)" if b == "plain" else "\n(/ original)"), justify="right")
        for row in (*d["tests"], d["total"], d["wall"]):
            fmt = (lambda v: f"{v:.3f} s") if row is d["wall"] else (lambda v: f"{v:.0f}")
            cells = []
            for c in CONFIGS:
                cells.append(fmt(row["median"][c]))
                cells += [_r(row["ratio"][k]) for k, (a, _, _) in RATIOS.items() if a == c]
            t.add_row(row["name"], *cells)
        console.print(t)
        st = d.get("stats_vmalloc", {})
        console.print(f"{d['arch']}: guest check line {d['reference_output']!r}"
                      + ("" if d["outputs_match"] else " [red](outputs differ between runs!)[/red]")
                      + "; KASAN vmalloc shadow (untimed --stats run): "
                      + ", ".join(f"{k}={v:,}" for k, v in st.items() if k != "errors"))
    console.print(f"[dim]{meta['started']}  {meta['seconds']} s  unicorn {meta['unicorn']}  python {meta['python']}  "
                  f"load average {meta['loadavg_before'][0]} → {meta['loadavg_after'][0]}  git {meta['git_rev']}[/dim]")


def main(argv: list[str] | None = None) -> int:
    p = standard_parser("emsan test_vmalloc benchmark (no KASAN vs hook-based generic vs lazily shadowed mmap area)",
                        DEFAULT_JSON, ["vmalloc"])
    return run_and_report(p, argv, run_bench, render, 200)


if __name__ == "__main__":
    raise SystemExit(main())
