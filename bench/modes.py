#!/usr/bin/env python3
"""Every mode over plain emulation, side by side in one interleaved run (issue 15's figures).

    python3 bench/modes.py [--quick] [--json FILE] [--arch x86_64|arm64|all] [--reps N]
                           [--workloads compute,alloc,strings] [--scale F] [--no-valgrind] [--no-qemu] [--ablations]
                           [--configs none,kfence]

For each architecture and workload (bench/workloads/compute.c, alloc.c, strings.c at the steady-state
iteration counts of bench/engine.py, times --scale, 0.5 by default: emsan --mode none then spends
about 0.9 s of CPU per run, its start-up under a fifth of that), one fresh process per measurement:

  none               the gcc-built static program, `emsan run --mode none`: the baseline
  generic            the same program, `emsan run` (generic mode)
  sw-tags, hw-tags   the same program, `--mode sw-tags` / `--mode hw-tags` (arm64 only)
  kfence             the same program, `--mode kfence`
  cc-none            the same source built with clang (bench/compiler.py's plain build), `--mode none`:
                     the baseline of ...
  compiler-assisted  ... the clang build with $(emsan cflags), `emsan run` (compiler-assisted mode)
  memcheck           valgrind --tool=memcheck on the gcc build linked dynamically (x86-64 only): the peer
  (--ablations)      generic/no-stacks: generic mode with --stacks none; generic/no-quarantine: also
                     --quarantine-size 0 (where generic mode's cost goes; no targets)
  qemu               qemu-user on the static gcc build: the emulator peer

The emsan configurations run under bench/probe.py (`time`), which gives the CPU time spent inside
Uc.emu_start (emulation and hooks, without start-up); every run also gives its whole-process wall
time. Configurations are interleaved and rotated every repetition; each ratio is paired per
repetition and shown as its median (min-max). Every run's output must match --mode none's.

Targets (issue 15), reported met / not met and never asserted: generic, sw-tags, hw-tags and
compiler-assisted each within 1.5x of --mode none on every workload, KFENCE within 1.03x, and
generic faster than Valgrind memcheck (whole process) on every x86-64 workload. Figures go to
stdout and JSON (default bench/results/modes.json).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, ROOT, BenchError, Runner, build, fmt_ratio, met, paired_ratio, rotate,  # noqa: E402
                    run_and_report, run_meta, selected, standard_parser, tool_version)
from compiler import build_cc  # noqa: E402
from engine import ITERATIONS, QEMU  # noqa: E402
from kasan import VALGRIND  # noqa: E402

DEFAULT_JSON = BENCH / "results" / "modes.json"
DEFAULT_SCALE = 0.5
MODES = ("generic", "sw-tags", "hw-tags", "compiler-assisted", "kfence")
TAG_MODES = ("sw-tags", "hw-tags")
TARGETS = {"generic": 1.5, "sw-tags": 1.5, "hw-tags": 1.5, "compiler-assisted": 1.5, "kfence": 1.03}
# configuration -> (binary, bench/probe.py target, or None for a peer run without emsan)
CONFIGS = {"none": ("gcc", "emsan"), "generic": ("gcc", "emsan-generic"), "sw-tags": ("gcc", "emsan-sw-tags"),
           "hw-tags": ("gcc", "emsan-hw-tags"), "kfence": ("gcc", "emsan-kfence"), "cc-none": ("clang", "emsan"),
           "compiler-assisted": ("clang-kasan", "emsan-generic"), "memcheck": ("gcc-dynamic", None),
           "qemu": ("gcc", None), "generic/no-stacks": ("gcc", "emsan-generic-nostacks"),
           "generic/no-quarantine": ("gcc", "emsan-generic-noquarantine")}
ABLATIONS = ("generic/no-stacks", "generic/no-quarantine")
BASELINE = {"compiler-assisted": "cc-none"}      # every other configuration is judged against "none"


def baseline(cfg: str) -> str:
    return BASELINE.get(cfg, "none")


def configs(arch: str, peers: dict[str, bool], only: set[str] | None = None, ablations: bool = False) -> list[str]:
    cfgs = [c for c in CONFIGS if c not in TAG_MODES or arch == "arm64"]
    if only:                                    # each chosen configuration keeps its baseline
        cfgs = [c for c in cfgs if c in only or c in {baseline(o) for o in only}]
    elif not ablations:
        cfgs = [c for c in cfgs if c not in ABLATIONS]
    if not peers["clang"]:
        cfgs = [c for c in cfgs if CONFIGS[c][0] not in ("clang", "clang-kasan")]
    if (not peers["valgrind"] or arch != "x86_64") and "memcheck" in cfgs:     # memcheck runs natively
        cfgs.remove("memcheck")
    if not peers["qemu"] and "qemu" in cfgs:
        cfgs.remove("qemu")
    return cfgs


def binaries(name: str, arch: str, cfgs: list[str]) -> dict[str, Path]:
    kinds = {CONFIGS[c][0] for c in cfgs}
    out = {"gcc": build(name, arch)}
    if "gcc-dynamic" in kinds:
        out["gcc-dynamic"] = build(name, arch, static=False)
    if "clang" in kinds:
        out["clang"] = build_cc(name, arch, False)
        out["clang-kasan"] = build_cc(name, arch, True)
    return out


def measure(r: Runner, arch: str, cfg: str, exe: Path, argv: list[str]) -> tuple[dict, bytes]:
    """One run of one configuration: its times (emu_cpu_s and emu_s for emsan, wall_s for all)."""
    target = CONFIGS[cfg][1]
    if target is not None:
        _, wall, st, out = r.probe("time", target, exe, argv)
        ss = st.get("sanitizer_stats") or {}
        if ss.get("errors"):
            raise BenchError(f"{exe.name} ({cfg}): {ss['errors']} report(s) on a correct program:\n"
                             f"{r.last_stderr.decode(errors='replace')[-3000:]}")
        return {"emu_cpu_s": st["emu_cpu_s"], "emu_s": st["emu_s"], "wall_s": wall, "cpu_s": r.last_cpu}, out
    cmd = [*VALGRIND, str(exe), *argv] if cfg == "memcheck" else [QEMU[arch], str(exe), *argv]
    wall, out = r.command(cmd, f"{cfg} {exe.name}")
    return {"wall_s": wall, "cpu_s": r.last_cpu}, out


def run_bench(args: argparse.Namespace, log) -> dict:
    arches, names = selected(args, ITERATIONS)
    reps = args.reps or (3 if args.quick else 5)
    peers = {"clang": shutil.which("clang") is not None,
             "valgrind": args.valgrind and shutil.which("valgrind") is not None,
             "qemu": args.qemu and all(shutil.which(QEMU[a]) for a in arches)}
    for what, ok in peers.items():
        if not ok:
            log(f"[yellow]{what}: not installed or not asked for; its configurations are left out[/yellow]")
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="emsan-modes-bench-") as tmp:
        r = Runner(tmp)
        wl: dict[tuple[str, str], dict] = {}
        for arch in arches:
            for name in names:
                cfgs = configs(arch, peers, args.configs, args.ablations)
                exes = binaries(name, arch, cfgs)
                iters = max(1, round(ITERATIONS[name][arch] * args.scale))
                # untimed, at a hundredth of the size: builds emsan's caches for each binary and mode
                for cfg in cfgs:
                    measure(r, arch, cfg, exes[CONFIGS[cfg][0]], [str(max(1, iters // 100))])
                _, ref = r.emsan("none", exes["gcc"], [str(iters)])
                wl[(arch, name)] = {"arch": arch, "name": name, "iterations": iters, "configs": cfgs,
                                    "binaries": {k: str(v.relative_to(ROOT)) for k, v in exes.items()},
                                    "reference_output": ref, "outputs_match": True, "mismatches": [],
                                    "runs": {c: {} for c in cfgs}}
                log(f"[dim]{arch} {name}: {iters:,} iterations, {len(cfgs)} configurations[/dim]")
        for rep in range(reps):
            log(f"[dim]repetition {rep + 1}/{reps}[/dim]")
            for arch in arches:
                for name in names:
                    d = wl[(arch, name)]
                    for cfg in rotate(d["configs"], rep):
                        t, out = measure(r, arch, cfg, ROOT / d["binaries"][CONFIGS[cfg][0]], [str(d["iterations"])])
                        for k, v in t.items():
                            d["runs"][cfg].setdefault(k, []).append(v)
                        if out != d["reference_output"]:
                            d["outputs_match"] = False
                            d["mismatches"].append(cfg)
    workloads = [finish(d) for d in wl.values()]
    meta = run_meta(args, arches, reps, started, load_before, valgrind=tool_version(["valgrind", "--version"]),
                    qemu=tool_version([QEMU[arches[0]], "--version"]), clang=tool_version(["clang", "--version"]),
                    valgrind_cmd=VALGRIND)
    return {"schema": 1, "meta": meta, "workloads": workloads, "targets": targets(workloads)}


def finish(d: dict) -> dict:
    runs = d["runs"]
    d["median"] = {c: {k: statistics.median(v) for k, v in t.items()} for c, t in runs.items()}
    d["ratio"] = {}
    for cfg in d["configs"]:
        base = baseline(cfg)
        if cfg == base or base not in runs:
            continue
        d["ratio"][cfg] = {m: paired_ratio(runs[cfg][f"{m}_s"], runs[base][f"{m}_s"])
                           for m in ("emu_cpu", "wall") if f"{m}_s" in runs[cfg]}
    if "memcheck" in runs and "generic" in runs:
        d["generic_over_memcheck_wall"] = paired_ratio(runs["generic"]["wall_s"], runs["memcheck"]["wall_s"])
    d["reference_output"] = d["reference_output"].decode(errors="replace").strip()
    return d


def targets(workloads: list[dict]) -> dict:
    out: dict = {"max_ratio": TARGETS, "modes": {}, "generic_faster_than_memcheck": {}}
    for d in workloads:
        key = f"{d['arch']}/{d['name']}"
        for mode in MODES:
            if mode in d["ratio"]:
                r = d["ratio"][mode]
                out["modes"].setdefault(mode, {})[key] = {
                    **{f"ratio_{m}": r[m]["median"] for m in r},
                    **{f"met_{m}": r[m]["median"] <= TARGETS[mode] for m in r}}
        if "generic_over_memcheck_wall" in d:
            v = d["generic_over_memcheck_wall"]["median"]
            out["generic_faster_than_memcheck"][key] = {"generic_over_memcheck_wall": v, "met": v < 1}
    return out


# --- output ------------------------------------------------------------------------------------------
def render(res: dict, console) -> None:
    from rich.table import Table

    meta, wls = res["meta"], res["workloads"]
    present = [m for m in (*MODES, *ABLATIONS) if any(m in d["ratio"] for d in wls)]
    for measure_, title in (("emu_cpu", "emulation CPU time (inside emu_start, without start-up)"),
                            ("wall", "whole-process wall time")):
        peers = [p for p in ("memcheck", "qemu") if measure_ == "wall" and any(p in d["ratio"] for d in wls)]
        t = Table(title=f"Each mode over --mode none: {title}; medians (min–max) of {meta['reps']} paired, "
                        f"interleaved repetitions (compiler-assisted: its instrumented clang build over the "
                        f"plain clang build)", title_justify="left")
        for col in ("arch", "workload", "iterations", "none s", *present, *peers):
            label = f"{col}\n≤ {TARGETS[col]}×" if col in TARGETS else col
            t.add_column(label, justify="left" if col in ("arch", "workload") else "right")
        for d in wls:
            row = [d["arch"], d["name"] + ("" if d["outputs_match"] else " [red](output differs!)[/red]"),
                   f"{d['iterations']:,}", f"{d['median']['none'][f'{measure_}_s']:.3f}"]
            for c in (*present, *peers):
                r = d["ratio"].get(c, {}).get(measure_)
                if r is None:
                    row.append("—")
                elif c in TARGETS:
                    s = fmt_ratio(r)
                    row.append(s if r["median"] <= TARGETS[c] else f"[yellow]{s}[/yellow]")
                else:
                    row.append(fmt_ratio(r))
            t.add_row(*row)
        console.print(t)
    tg = res["targets"]
    for mode, rows in tg["modes"].items():
        for key, v in rows.items():
            console.print(f"{mode} ≤ {TARGETS[mode]}× --mode none, {key}: emu CPU {v['ratio_emu_cpu']:.2f}× "
                          f"{met(v['met_emu_cpu'])}; whole process {v['ratio_wall']:.2f}× {met(v['met_wall'])}")
    for key, v in tg["generic_faster_than_memcheck"].items():
        console.print(f"generic faster than memcheck, {key}: generic / memcheck whole process "
                      f"{v['generic_over_memcheck_wall']:.2f}× {met(v['met'])}")
    console.print(f"[dim]{meta['started']}  {meta['seconds']} s  unicorn {meta['unicorn']}  {meta['valgrind']}  "
                  f"{meta['clang']}  load average {meta['loadavg_before'][0]} → {meta['loadavg_after'][0]}  "
                  f"git {meta['git_rev']}[/dim]")


def main(argv: list[str] | None = None) -> int:
    p = standard_parser("emsan modes benchmark (every mode over --mode none, with memcheck and qemu-user)",
                        DEFAULT_JSON, ITERATIONS)
    p.set_defaults(scale=DEFAULT_SCALE)
    p.add_argument("--no-valgrind", dest="valgrind", action="store_false", help="skip the valgrind memcheck runs")
    p.add_argument("--no-qemu", dest="qemu", action="store_false", help="skip the qemu-user runs")
    p.add_argument("--ablations", action="store_true",
                   help="also generic mode with --stacks none, and with --quarantine-size 0 as well "
                        "(generic/no-stacks, generic/no-quarantine: --configs may name them too)")
    p.add_argument("--configs", type=lambda v: set(v.split(",")),
                   help=f"comma-separated subset of {','.join(CONFIGS)} (each with its baseline; default: all "
                        "but the ablations)")
    args_check = p.parse_known_args(argv)[0].configs
    if args_check and not args_check <= set(CONFIGS):
        p.error(f"--configs: unknown {', '.join(sorted(args_check - set(CONFIGS)))}")
    return run_and_report(p, argv, run_bench, render, 220)


if __name__ == "__main__":
    raise SystemExit(main())
