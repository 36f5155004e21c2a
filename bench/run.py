#!/usr/bin/env python3
"""Foundation benchmark: emsan `--mode none` against bare Unicorn, on x86-64 and arm64.

    python3 bench/run.py [--quick] [--arch x86_64|arm64|all] [--json FILE]
                         [--reps N] [--workloads compute,alloc,strings] [--scale F] [--no-startup]

Measures (see bench/README.md for the method and the meaning of every column):
  * guest instructions per second of plain emulation, on a compute-bound, an allocation-heavy
    and a string-heavy workload (bench/workloads/*.c, built static here);
  * start-up time from launching the process to the first guest instruction (static hello);
  * the same figures for "bare Unicorn" (bench/bare_unicorn.py), side by side, as paired
    ratios emsan/bare with medians and spreads over N interleaved repetitions.

Figures go to stdout (a rich table) and to JSON (default bench/results/foundation.json).
Nothing here asserts on speed.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (run_and_report, selected, standard_parser, BENCH, BUILD_DIR, CFLAGS, ROOT, WORKLOADS, BenchError, Runner,  # noqa: E402
                    build, fmt_ratio, git_rev, paired_ratio, rotate, spread, version)

DEFAULT_JSON = BENCH / "results" / "foundation.json"
STARTUP_PROGRAM = "hello"

STARTUP_TARGET_S = 0.3
OVERHEAD_TARGET = 1.10

# Configurations. Each timed measurement is one fresh process.
WL_CONFIGS = ("bare_emu", "emsan_emu", "bare_wall", "emsan_wall")
SU_CONFIGS = ("python_floor", "bare_first", "emsan_first", "bare_wall", "emsan_wall")


# --- the benchmark -----------------------------------------------------------------------------------
def run_bench(args: argparse.Namespace, log) -> dict:
    arches, names = selected(args, WORKLOADS)
    reps = args.reps or (3 if args.quick else 5)
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="emsan-bench-") as tmp:
        r = Runner(tmp)
        wl: dict[tuple[str, str], dict] = {}
        su: dict[str, dict] = {}
        # Build everything, then count instructions once per workload (separate, untimed run,
        # which also warms the page cache and Python's bytecode caches).
        for arch in arches:
            if args.startup:
                exe = build(STARTUP_PROGRAM, arch)
                n, out, _ = r.count(exe, [])
                su[arch] = {"arch": arch, "program": STARTUP_PROGRAM, "binary": str(exe.relative_to(ROOT)),
                            "instructions": n, "reference_output": out, "outputs_match": True,
                            "runs": {k: [] for k in ("python_s", "bare_first_insn_s", "emsan_first_insn_s",
                                                      "bare_wall_s", "emsan_wall_s")},
                            "breakdown_runs": {"bare": [], "emsan": []}}
                log(f"[dim]{arch} {STARTUP_PROGRAM}: {n:,} guest instructions[/dim]")
            for name in names:
                exe = build(name, arch)
                iters = max(1, round(WORKLOADS[name][arch] * args.scale))
                n, out, _ = r.count(exe, [str(iters)])
                wl[(arch, name)] = {"arch": arch, "name": name, "iterations": iters,
                                    "binary": str(exe.relative_to(ROOT)), "instructions": n,
                                    "reference_output": out, "outputs_match": True,
                                    "runs": {k: [] for k in ("bare_emu_s", "emsan_emu_s", "bare_wall_s",
                                                              "emsan_wall_s")}}
                log(f"[dim]{arch} {name} {iters}: {n:,} guest instructions[/dim]")

        # Timed repetitions: reps outermost, configurations interleaved (rotated each rep).
        for rep in range(reps):
            log(f"[dim]repetition {rep + 1}/{reps}[/dim]")
            for arch in arches:
                if args.startup:
                    d = su[arch]
                    exe = BUILD_DIR / arch / STARTUP_PROGRAM
                    for cfg in rotate(SU_CONFIGS, rep):
                        if cfg == "python_floor":
                            d["runs"]["python_s"].append(r.python_floor())
                            continue
                        target, kind = cfg.split("_")
                        if kind == "first":
                            t0, _, st, out = r.probe("first", target, exe, [])
                            if st.get("t_first_insn") is None:
                                raise BenchError(f"{target}: the entry hook never fired")
                            d["runs"][f"{target}_first_insn_s"].append(st["t_first_insn"] - t0)
                            d["breakdown_runs"][target].append({
                                "interpreter_s": st["t_probe_start"] - t0,
                                "load_s": st["t_emu_first_call"] - st["t_probe_start"],
                                "first_block_s": st["t_first_insn"] - st["t_emu_first_call"]})
                        else:
                            wall, out = r.plain(target, exe, [])
                            d["runs"][f"{target}_wall_s"].append(wall)
                        d["outputs_match"] &= out == d["reference_output"]
                for name in names:
                    d = wl[(arch, name)]
                    exe = BUILD_DIR / arch / name
                    argv = [str(d["iterations"])]
                    for cfg in rotate(WL_CONFIGS, rep):
                        target, kind = cfg.split("_")
                        if kind == "emu":
                            _, _, st, out = r.probe("time", target, exe, argv)
                            d["runs"][f"{target}_emu_s"].append(st["emu_s"])
                        else:
                            wall, out = r.plain(target, exe, argv)
                            d["runs"][f"{target}_wall_s"].append(wall)
                        d["outputs_match"] &= out == d["reference_output"]

    workloads = []
    for d in wl.values():
        runs = d["runs"]
        med = {k: statistics.median(v) for k, v in runs.items()}
        d["median"] = med
        d["minsn_per_s"] = {t: d["instructions"] / med[f"{t}_emu_s"] / 1e6 for t in ("bare", "emsan")}
        d["ratio_emu"] = paired_ratio(runs["emsan_emu_s"], runs["bare_emu_s"])
        d["ratio_wall"] = paired_ratio(runs["emsan_wall_s"], runs["bare_wall_s"])
        d["reference_output"] = d["reference_output"].decode(errors="replace").strip()
        workloads.append(d)
    startup = []
    for d in su.values():
        runs = d["runs"]
        d["median"] = {k: statistics.median(v) for k, v in runs.items()}
        d["ratio_first_insn"] = paired_ratio(runs["emsan_first_insn_s"], runs["bare_first_insn_s"])
        d["ratio_wall"] = paired_ratio(runs["emsan_wall_s"], runs["bare_wall_s"])
        d["breakdown_median_s"] = {t: {k: statistics.median(b[k] for b in rows) for k in rows[0]}
                                   for t, rows in d.pop("breakdown_runs").items()}
        d["reference_output"] = d["reference_output"].decode(errors="replace").strip()
        startup.append(d)

    targets = {
        "startup_max_s": STARTUP_TARGET_S,
        "startup": {d["arch"]: {"emsan_first_insn_s": d["median"]["emsan_first_insn_s"],
                                "met": d["median"]["emsan_first_insn_s"] <= STARTUP_TARGET_S} for d in startup},
        "overhead_max_ratio": OVERHEAD_TARGET,
        "overhead": {f"{d['arch']}/{d['name']}": {
            "ratio_emu": d["ratio_emu"]["median"], "met_emu": d["ratio_emu"]["median"] <= OVERHEAD_TARGET,
            "ratio_wall": d["ratio_wall"]["median"], "met_wall": d["ratio_wall"]["median"] <= OVERHEAD_TARGET}
            for d in workloads},
    }
    return {
        "schema": 1,
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
            "reps": reps, "quick": bool(args.quick), "scale": args.scale, "arches": list(arches),
            "python": platform.python_version(), "unicorn": version("unicorn"),
            "host": platform.node(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "git_rev": git_rev(),
            "cflags": CFLAGS,
        },
        "workloads": workloads,
        "startup": startup,
        "targets": targets,
    }


# --- output ------------------------------------------------------------------------------------------
def render(res: dict, console) -> None:
    from rich.table import Table

    meta = res["meta"]
    n = meta["reps"]
    if res["workloads"]:
        t = Table(title=f"Plain emulation: emsan --mode none vs bare Unicorn  (medians of {n} interleaved runs; "
                        f"ratio = emsan/bare, median (min–max) of per-repetition ratios)", title_justify="left")
        for col, just in (("arch", "left"), ("workload", "left"), ("iters", "right"), ("guest insns", "right"),
                          ("bare\nM insn/s", "right"), ("emsan\nM insn/s", "right"),
                          ("bare emu s\n(in-process)", "right"), ("emsan emu s\n(in-process)", "right"),
                          ("emu ratio\nemsan/bare", "right"),
                          ("bare wall s\n(whole process)", "right"), ("emsan wall s\n(whole process)", "right"),
                          ("wall ratio\nemsan/bare", "right")):
            t.add_column(col, justify=just)
        for d in res["workloads"]:
            m = d["median"]
            t.add_row(d["arch"], d["name"] + ("" if d["outputs_match"] else " [red](output differs!)[/red]"),
                      f"{d['iterations']:,}", f"{d['instructions'] / 1e6:.1f} M",
                      f"{d['minsn_per_s']['bare']:.0f}", f"{d['minsn_per_s']['emsan']:.0f}",
                      f"{m['bare_emu_s']:.3f}", f"{m['emsan_emu_s']:.3f}", _color(d["ratio_emu"]),
                      f"{m['bare_wall_s']:.3f}", f"{m['emsan_wall_s']:.3f}", _color(d["ratio_wall"]))
        console.print(t)
    if res["startup"]:
        t = Table(title=f"Start-up, static hello: launch → first guest instruction  (medians of {n} interleaved "
                        f"runs, seconds)", title_justify="left")
        for col in ("arch", "python -c pass\n(wall)", "bare\nfirst insn", "emsan first insn\nmedian (min–max)",
                    "first insn ratio\nemsan/bare", "emsan: interpreter\n+ imports & load + 1st block",
                    "bare wall\n(to exit)", "emsan wall\n(to exit)", f"target\n≤ {STARTUP_TARGET_S} s"):
            t.add_column(col, justify="left" if col == "arch" else "right")
        for d in res["startup"]:
            m, b = d["median"], d["breakdown_median_s"]["emsan"]
            met = res["targets"]["startup"][d["arch"]]["met"]
            t.add_row(d["arch"] + ("" if d["outputs_match"] else " [red](output differs!)[/red]"),
                      f"{m['python_s']:.3f}", f"{m['bare_first_insn_s']:.3f}", spread(d["runs"]["emsan_first_insn_s"]),
                      fmt_ratio(d["ratio_first_insn"]),
                      f"{b['interpreter_s'] * 1e3:.0f} + {b['load_s'] * 1e3:.0f} + {b['first_block_s'] * 1e3:.1f} ms",
                      f"{m['bare_wall_s']:.3f}", f"{m['emsan_wall_s']:.3f}",
                      "[green]met[/green]" if met else "[red]not met[/red]")
        console.print(t)
    over = res["targets"]["overhead"]
    if over:
        for key, what in (("met_emu", "in-process emulation time"), ("met_wall", "whole-process wall time")):
            bad = [k for k, v in over.items() if not v[key]]
            console.print(f"emsan within {OVERHEAD_TARGET - 1:.0%} of bare Unicorn, median ratio of {what}: "
                          + ("[green]met for all[/green]" if not bad else f"[red]not met for {', '.join(bad)}[/red]"))
    for arch, v in res["targets"]["startup"].items():
        console.print(f"start-up to the first guest instruction ≤ {STARTUP_TARGET_S} s, {arch}: "
                      f"{v['emsan_first_insn_s']:.3f} s, " + ("[green]met[/green]" if v["met"] else "[red]not met[/red]"))
    console.print(f"[dim]{meta['started']}  {meta['seconds']} s  unicorn {meta['unicorn']}  python {meta['python']}  "
                  f"load average {meta['loadavg_before'][0]} → {meta['loadavg_after'][0]}  git {meta['git_rev']}[/dim]")


def _color(r: dict) -> str:
    s = fmt_ratio(r)
    return s if r["median"] <= OVERHEAD_TARGET else f"[yellow]{s}[/yellow]"


def main(argv: list[str] | None = None) -> int:
    p = standard_parser("emsan foundation benchmark (emsan --mode none vs bare Unicorn)", DEFAULT_JSON, WORKLOADS)
    p.add_argument("--no-startup", dest="startup", action="store_false", help="skip the start-up measurement")
    return run_and_report(p, argv, run_bench, render, 220)


if __name__ == "__main__":
    raise SystemExit(main())
