#!/usr/bin/env python3
"""Compiler-assisted mode benchmark: four configurations of each common workload, side by side.

    python3 bench/compiler.py [--quick] [--json FILE] [--arch x86_64|arm64|all] [--reps N]
                              [--workloads compute,alloc,strings] [--scale F]

Each workload (bench/workloads/*.c) is built twice with clang -static -O2 -g -fno-omit-frame-pointer:
plainly, and with $(emsan cflags) (inline instrumentation). Four configurations run interleaved:

  plain     the plain binary, `emsan run --mode none` (plain emulation)
  generic   the plain binary, `emsan run` (hook-based generic mode: a native check per access)
  cc        the instrumented binary, `emsan run` (compiler-assisted mode, chosen automatically)
  bare      the instrumented binary, `emsan run --mode none`: the shadow mapped so the
            instrumented code runs, and no emsan policy (no allocator, quarantine, interceptors
            or reports): the instrumentation's own cost under emulation

Time is measured in-process by bench/probe.py (wall and thread CPU time inside emu_start), N
repetitions; ratios are paired per repetition and the tables show their medians (min-max).
The target (issue 7) is cc / bare <= 1.05: emsan's runtime adds at most 5% to the instrumented
binary. Figures go to stdout and JSON (default bench/results/compiler.json); nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (run_and_report, run_meta, selected, standard_parser, BENCH, BUILD_DIR, ROOT, WORKLOAD_DIR, WORKLOADS,  # noqa: E402
                    BenchError, Runner, fmt_ratio, met, paired_ratio, rotate, tool_version)

DEFAULT_JSON = BENCH / "results" / "compiler.json"
CC_FLAGS = ["-static", "-O2", "-g", "-fno-omit-frame-pointer"]
RUNTIME_TARGET = 1.05                  # cc / bare: emsan's runtime adds <= 5%
# configuration -> (binary, probe target: "emsan" is --mode none, "emsan-generic" the default mode)
CONFIGS = {"plain": ("plain", "emsan"), "generic": ("plain", "emsan-generic"),
           "cc": ("instrumented", "emsan-generic"), "bare": ("instrumented", "emsan")}
RATIOS = {"generic_over_plain": ("generic", "plain"), "cc_over_plain": ("cc", "plain"),
          "bare_over_plain": ("bare", "plain"), "cc_over_bare": ("cc", "bare"), "cc_over_generic": ("cc", "generic")}


def build_cc(name: str, arch: str, instrumented: bool) -> Path:
    """bench/workloads/NAME.c -> bench/build/cc-ARCH[-kasan]/NAME, with clang."""
    sys.path.insert(0, str(ROOT / "src"))
    from emsan.runtime import HEADER, cflags

    src = WORKLOAD_DIR / f"{name}.c"
    out = BUILD_DIR / (f"cc-{arch}-kasan" if instrumented else f"cc-{arch}") / name
    newest = max(src.stat().st_mtime, HEADER.stat().st_mtime)
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    if shutil.which("clang") is None:
        raise BenchError("clang is not installed")
    flags = cflags(arch) if instrumented else [f for f in cflags(arch) if f.startswith("--target")]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run(["clang", *flags, *CC_FLAGS, "-o", str(tmp), str(src)], capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"building {src} for {arch} failed:\n{proc.stderr}")
    os.replace(tmp, out)
    return out


def run_bench(args: argparse.Namespace, log) -> dict:
    arches, names = selected(args, WORKLOADS)
    reps = args.reps or (3 if args.quick else 5)
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="emsan-cc-bench-") as tmp:
        r = Runner(tmp)
        wl: dict[tuple[str, str], dict] = {}
        for arch in arches:
            for name in names:
                exes = {"plain": build_cc(name, arch, False), "instrumented": build_cc(name, arch, True)}
                iters = max(1, round(WORKLOADS[name][arch] * args.scale))
                argv = [str(iters)]
                n_plain, ref, _ = r.count(exes["plain"], argv, "emsan")
                n_bare, out_bare, _ = r.count(exes["instrumented"], argv, "emsan")
                wl[(arch, name)] = {
                    "arch": arch, "name": name, "iterations": iters,
                    "binaries": {k: str(v.relative_to(ROOT)) for k, v in exes.items()},
                    "instructions": {"plain": n_plain, "instrumented": n_bare},
                    "reference_output": ref, "outputs_match": out_bare == ref, "cc_stats": None,
                    "runs": {f"{c}_{k}": [] for c in CONFIGS for k in ("emu_s", "emu_cpu_s")}}
                log(f"[dim]{arch} {name} {iters}: {n_plain:,} guest instructions plain, {n_bare:,} instrumented "
                    f"(x{n_bare / n_plain:.2f})[/dim]")
        for rep in range(reps):
            log(f"[dim]repetition {rep + 1}/{reps}[/dim]")
            for arch in arches:
                for name in names:
                    d = wl[(arch, name)]
                    for cfg in rotate(list(CONFIGS), rep):
                        binary, target = CONFIGS[cfg]
                        _, _, st, out = r.probe("time", target, ROOT / d["binaries"][binary], [str(d["iterations"])])
                        d["outputs_match"] &= out == d["reference_output"]
                        ss = st.get("sanitizer_stats") or {}
                        if cfg == "cc":
                            d["cc_stats"] = ss
                        if ss.get("errors"):
                            raise BenchError(f"{name} ({cfg}): {ss['errors']} report(s) on a correct program:\n"
                                             f"{r.last_stderr.decode(errors='replace')[-3000:]}")
                        d["runs"][f"{cfg}_emu_s"].append(st["emu_s"])
                        d["runs"][f"{cfg}_emu_cpu_s"].append(st["emu_cpu_s"])
    workloads = [finish(d) for d in wl.values()]
    targets = {f"{d['arch']}/{d['name']}": {
        "cc_over_bare_emu_cpu": d["ratio"]["cc_over_bare"]["emu_cpu"]["median"],
        "cc_over_bare_emu": d["ratio"]["cc_over_bare"]["emu"]["median"],
        "met_emu_cpu": d["ratio"]["cc_over_bare"]["emu_cpu"]["median"] <= RUNTIME_TARGET,
        "met_emu": d["ratio"]["cc_over_bare"]["emu"]["median"] <= RUNTIME_TARGET} for d in workloads}
    meta = run_meta(args, arches, reps, started, load_before, cc_flags=CC_FLAGS, clang=tool_version(["clang", "--version"]))
    return {"schema": 1, "meta": meta, "workloads": workloads,
            "targets": {"cc_over_bare_max": RUNTIME_TARGET, "runtime": targets}}


def finish(d: dict) -> dict:
    runs = d["runs"]
    d["median"] = {k: statistics.median(v) for k, v in runs.items()}
    d["ratio"] = {name: {"emu": paired_ratio(runs[f"{a}_emu_s"], runs[f"{b}_emu_s"]),
                         "emu_cpu": paired_ratio(runs[f"{a}_emu_cpu_s"], runs[f"{b}_emu_cpu_s"])}
                  for name, (a, b) in RATIOS.items()}
    d["reference_output"] = d["reference_output"].decode(errors="replace").strip()
    return d


def render(res: dict, console) -> None:
    from rich.table import Table

    meta = res["meta"]
    t = Table(title=f"Compiler-assisted mode  (emulation CPU time inside emu_start, medians of {meta['reps']} "
                    f"interleaved runs, seconds; ratios: medians (min–max) of per-repetition ratios)",
              title_justify="left")
    for col in ("arch", "workload", "guest insns\nplain / instr.", "plain s", "generic s", "cc s", "bare s",
                "generic\n/ plain", "cc\n/ plain", "bare\n/ plain", "cc / generic",
                f"cc / bare\n(CPU; ≤ {RUNTIME_TARGET})", "cc / bare\n(wall)"):
        t.add_column(col, justify="left" if col in ("arch", "workload") else "right")
    for d in res["workloads"]:
        m, ins, ra = d["median"], d["instructions"], d["ratio"]
        cb = ra["cc_over_bare"]["emu_cpu"]
        cbs = fmt_ratio(cb) if cb["median"] <= RUNTIME_TARGET else f"[yellow]{fmt_ratio(cb)}[/yellow]"
        t.add_row(d["arch"], d["name"] + ("" if d["outputs_match"] else " [red](output differs!)[/red]"),
                  f"{ins['plain'] / 1e6:.1f} M / {ins['instrumented'] / 1e6:.1f} M",
                  *(f"{m[f'{c}_emu_cpu_s']:.3f}" for c in CONFIGS),
                  *(fmt_ratio(ra[k]["emu_cpu"]) for k in ("generic_over_plain", "cc_over_plain", "bare_over_plain",
                                                            "cc_over_generic")),
                  cbs, fmt_ratio(ra["cc_over_bare"]["emu"]))
    console.print(t)
    for key, v in res["targets"]["runtime"].items():
        console.print(f"emsan runtime over bare shadow ≤ {RUNTIME_TARGET}×, {key}: emu CPU {v['cc_over_bare_emu_cpu']:.3f}× "
                      f"{met(v['met_emu_cpu'])}; emu wall {v['cc_over_bare_emu']:.3f}× {met(v['met_emu'])}")
    console.print(f"[dim]{meta['started']}  {meta['seconds']} s  {meta['clang']}  unicorn {meta['unicorn']}  "
                  f"load average {meta['loadavg_before'][0]} → {meta['loadavg_after'][0]}  git {meta['git_rev']}[/dim]")


def main(argv: list[str] | None = None) -> int:
    p = standard_parser("emsan compiler-assisted benchmark (plain, generic, compiler-assisted, bare shadow)",
                        DEFAULT_JSON, WORKLOADS)
    return run_and_report(p, argv, run_bench, render, 200)


if __name__ == "__main__":
    raise SystemExit(main())
