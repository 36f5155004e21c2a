#!/usr/bin/env python3
"""Shadow memory benchmark: per-page shadow (as Joonsoo Kim's "mm/kasan: support per-page shadow
memory to reduce memory consumption" proposed for the kernel) against full shadow.

    python3 bench/shadow_memory.py [--quick] [--json FILE] [--arch x86_64|arm64|all] [--reps N]
                                   [--workloads alloc,bigalloc,mmapheavy] [--scale F]

Runs each workload under `emsan run --mode generic --stats` with `--shadow full` (every written
chunk of guest memory gets a private 4 KiB shadow page, mapped mmap regions are populated at
once) and with `--shadow per-page` (the default: shared read-only pages wherever nothing needs a
private one), interleaved, N repetitions, and prints side by side emsan's peak resident memory
(its own ru_maxrss), the shadow's resident bytes (private pages at exit, and at their peak), the
touched heap (heap_pages * 4096) and the shadow / touched-heap ratio, with the issue's target:
resident shadow <= touched heap / 8, plus 5 %.

The shadow figures are counts and do not depend on the machine's load; peak RSS varies a little
between runs (medians shown). Figures go to stdout and JSON (default bench/results/shadow_memory.json).
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
from common import (run_and_report, run_meta, selected, standard_parser, BENCH, PY, ROOT, BenchError, Runner, build,  # noqa: E402
                    paired_ratio, rotate)

DEFAULT_JSON = BENCH / "results" / "shadow_memory.json"
PAGE = 4096

# Workloads of bench/workloads/ and their iteration counts (each about 1-3 s under the generic mode).
MEM_WORKLOADS = {
    "alloc": 80_000,        # small objects: malloc/calloc/realloc/free churn (the foundation workload)
    "bigalloc": 1_500,      # large objects, 4 KiB..256 KiB, memset and freed
    "mmapheavy": 1_500,     # anonymous mappings of 1..64 pages come and go, some unmapped in two halves
}
SHADOWS = ("full", "per-page")
TARGET_FRACTION = 1 / 8
TARGET_SLACK = 1.05
STAT_KEYS = ("heap_pages", "shadow_pages", "shadow_pages_peak", "shadow_resident_bytes", "vm_populated",
             "vm_released", "peak_rss_bytes", "errors")
_STATS = re.compile(rb"^emsan: stats: (.*)$", re.M)
_PEAK_MAPPED = re.compile(rb"^peak mapped bytes: (\d+)$", re.M)


def parse_stats(err: bytes, what: str) -> dict:
    m = _STATS.search(err)
    if not m:
        raise BenchError(f"{what}: no 'emsan: stats:' line on stderr\n{err.decode(errors='replace')[-2000:]}")
    st = {}
    for kv in m.group(1).decode().split(", "):
        k, _, v = kv.partition("=")
        st[k] = int(v) if v.lstrip("-").isdigit() else v
    missing = [k for k in STAT_KEYS if k not in st]
    if missing:
        raise BenchError(f"{what}: the stats line lacks {', '.join(missing)}")
    return {k: st[k] for k in STAT_KEYS}


# --- the benchmark -----------------------------------------------------------------------------------
def run_bench(args: argparse.Namespace, log) -> dict:
    arches, names = selected(args, MEM_WORKLOADS)
    reps = args.reps or (2 if args.quick else 3)
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="emsan-shadow-bench-") as tmp:
        r = Runner(tmp)
        wl: dict[tuple[str, str], dict] = {}
        for arch in arches:
            for name in names:
                exe = build(name, arch)
                iters = max(1, round(MEM_WORKLOADS[name] * args.scale))
                wl[(arch, name)] = {"arch": arch, "name": name, "iterations": iters,
                                    "binary": str(exe.relative_to(ROOT)), "outputs_match": True,
                                    "reference_output": None, "runs": {s: [] for s in SHADOWS}}
        for rep in range(reps):
            log(f"repetition {rep + 1}/{reps}")
            for d in wl.values():
                exe = ROOT / d["binary"]
                for shadow in rotate(SHADOWS, rep):
                    what = f"{d['arch']} {d['name']} --shadow {shadow}"
                    wall, out = r.command([PY, "-m", "emsan", "run", "--mode", "generic", "--stats", "--shadow", shadow,
                                           str(exe), str(d["iterations"])], what)
                    st = parse_stats(r.last_stderr, what)
                    if st["errors"]:
                        raise BenchError(f"{what}: the generic mode reported errors on a correct program:\n"
                                         f"{r.last_stderr.decode(errors='replace')[-3000:]}")
                    st["wall_s"] = wall
                    m = _PEAK_MAPPED.search(out)
                    if m:
                        st["guest_peak_mapped_bytes"] = int(m.group(1))
                    d["runs"][shadow].append(st)
                    if d["reference_output"] is None:
                        d["reference_output"] = out
                    d["outputs_match"] &= out == d["reference_output"]

    return {"schema": 1, "meta": run_meta(args, arches, reps, started, load_before),
        "target": {"shadow_max_fraction_of_touched_heap": TARGET_FRACTION, "slack": TARGET_SLACK},
        "workloads": [finish(d) for d in wl.values()]}


def finish(d: dict) -> dict:
    runs = d["runs"]
    out = {}
    for shadow in SHADOWS:
        rs = runs[shadow]
        med = {k: statistics.median(st[k] for st in rs) for k in rs[0]}
        touched = med["heap_pages"] * PAGE
        peak_shadow = med["shadow_pages_peak"] * PAGE
        s = {"median": med, "touched_heap_bytes": touched, "shadow_peak_bytes": peak_shadow,
             "shadow_exit_bytes": med["shadow_resident_bytes"],
             "ratio_peak": peak_shadow / touched if touched else None,
             "ratio_exit": med["shadow_resident_bytes"] / touched if touched else None,
             "constant_counts": all(len({st[k] for st in rs}) == 1
                                    for k in ("heap_pages", "shadow_pages", "shadow_pages_peak"))}
        limit = touched * TARGET_FRACTION * TARGET_SLACK
        s["target_met_peak"] = peak_shadow <= limit
        s["target_met_exit"] = med["shadow_resident_bytes"] <= limit
        if "guest_peak_mapped_bytes" in med:
            s["ratio_peak_heap_and_mmap"] = peak_shadow / (touched + med["guest_peak_mapped_bytes"])
        out[shadow] = s
    d["shadow"] = out
    d["peak_rss_ratio"] = paired_ratio([st["peak_rss_bytes"] for st in runs["per-page"]],
                                       [st["peak_rss_bytes"] for st in runs["full"]])
    d["reference_output"] = (d["reference_output"] or b"").decode(errors="replace").strip()
    return d


# --- output ------------------------------------------------------------------------------------------
def _mb(b: float) -> str:
    return f"{b / 1e6:.1f}"


def _kb(b: float) -> str:
    return f"{b / 1024:,.0f}"


def render(res: dict, console) -> None:
    from rich.table import Table

    meta = res["meta"]
    t = Table(title=f"Shadow memory: --shadow full vs per-page, generic mode  (medians of {meta['reps']} interleaved "
                    f"runs; MB = 10^6 bytes, KiB = 1024; shadow = private 4 KiB shadow pages; target: peak shadow "
                    f"≤ touched heap / 8 + 5 %)", title_justify="left")
    for col in ("arch", "workload", "iters", "peak RSS MB\nfull", "peak RSS MB\nper-page", "per-page\n/ full RSS",
                "shadow KiB\nfull peak / exit", "shadow KiB\nper-page peak / exit", "touched heap KiB\n(heap_pages)",
                "shadow / heap\nfull", "shadow / heap\nper-page", "target\nfull", "target\nper-page",
                "vm populated /\nreleased (full)", "vm populated /\nreleased (per-page)"):
        t.add_column(col, justify="left" if col in ("arch", "workload") else "right")
    for d in res["workloads"]:
        f, p = d["shadow"]["full"], d["shadow"]["per-page"]
        fm, pm = f["median"], p["median"]
        if fm["heap_pages"] != pm["heap_pages"]:
            heap = f"{_kb(f['touched_heap_bytes'])} / {_kb(p['touched_heap_bytes'])}"
        else:
            heap = _kb(p["touched_heap_bytes"])

        def ratio(s: dict) -> str:
            txt = f"{s['ratio_peak']:.4f}" if s["ratio_peak"] is not None else "-"
            if "ratio_peak_heap_and_mmap" in s:
                txt += f"\n({s['ratio_peak_heap_and_mmap']:.4f} of heap+mmap)"
            return txt

        t.add_row(d["arch"], d["name"] + ("" if d["outputs_match"] else " [red](output differs!)[/red]"),
                  f"{d['iterations']:,}", _mb(fm["peak_rss_bytes"]), _mb(pm["peak_rss_bytes"]),
                  f"{d['peak_rss_ratio']['median']:.3f}",
                  f"{_kb(f['shadow_peak_bytes'])} / {_kb(f['shadow_exit_bytes'])}",
                  f"{_kb(p['shadow_peak_bytes'])} / {_kb(p['shadow_exit_bytes'])}", heap,
                  ratio(f), ratio(p), _met(f["target_met_peak"]), _met(p["target_met_peak"]),
                  f"{fm['vm_populated']:,} / {fm['vm_released']:,}", f"{pm['vm_populated']:,} / {pm['vm_released']:,}")
    console.print(t)
    varying = [f"{d['arch']}/{d['name']}" for d in res["workloads"]
               if not all(d["shadow"][s]["constant_counts"] for s in SHADOWS)]
    if varying:
        console.print(f"[yellow]shadow or heap page counts varied between repetitions: {', '.join(varying)}[/yellow]")
    console.print(f"[dim]{meta['started']}  {meta['seconds']} s  unicorn {meta['unicorn']}  python {meta['python']}  "
                  f"load average {meta['loadavg_before'][0]} → {meta['loadavg_after'][0]}  git {meta['git_rev']}[/dim]")


def _met(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]not met[/red]"


def main(argv: list[str] | None = None) -> int:
    p = standard_parser("emsan shadow memory benchmark (--shadow full vs per-page)", DEFAULT_JSON, MEM_WORKLOADS)
    return run_and_report(p, argv, run_bench, render, 230)


if __name__ == "__main__":
    raise SystemExit(main())
