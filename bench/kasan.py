#!/usr/bin/env python3
"""Generic-mode benchmark: emsan `--mode generic` against plain emulation (`--mode none`) and
valgrind memcheck, on x86-64 (and arm64 without valgrind).

    python3 bench/kasan.py [--quick] [--json FILE] [--arch x86_64|arm64|all] [--reps N]
                           [--workloads compute,alloc,strings,mallocfree] [--scale F] [--no-valgrind]

Measures (see bench/README.md, "Generic mode", for the method and every column):
  * the generic mode's slow-down over plain emulation on a compute-bound, an allocation-heavy
    and a string-heavy workload, as in-process emulation time and as whole-process wall time;
  * valgrind memcheck running the same static x86-64 binary natively (and the same source
    built dynamically, where memcheck replaces malloc), and the native run time, for reference;
  * the cost of one malloc+free pair under the generic mode (allocator, poisoning, stack
    capture), on the allocation-heavy workload and on a malloc/free micro workload.

All configurations run interleaved, N repetitions; ratios are paired per repetition and the
tables show their medians. Figures go to stdout and JSON (default bench/results/kasan.json).
Nothing here asserts on speed: targets are reported as met / not met.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (run_and_report, run_meta, selected, standard_parser, BENCH, BUILD_DIR, ROOT, WORKLOADS, BenchError, Runner, build,  # noqa: E402
                    fmt_ratio, met, paired_ratio, rotate, spread, summary, tool_version)

DEFAULT_JSON = BENCH / "results" / "kasan.json"

# The foundation workloads plus the allocator micro workload (about 0.7 s of plain emulation).
KASAN_WORKLOADS = {**WORKLOADS, "mallocfree": {"x86_64": 400_000, "arm64": 400_000}}

RATIO_TARGET = 1.5                       # generic <= 1.5x plain ...
RATIO_TARGET_WORKLOADS = ("compute", "strings")
PAIR_TARGET_US = 5.0                     # a malloc+free pair <= 5 us ...
PAIR_TARGET_WORKLOADS = ("alloc",)       # ... on the allocation-heavy workload
PAIR_WORKLOADS = ("alloc", "mallocfree")  # where a per-pair cost is computed and shown
VALGRIND = ["valgrind", "--tool=memcheck", "-q"]

RUN_KEYS = {
    "native": "native_wall_s",
    "plain_emu": "plain_emu_s", "memhook_emu": "memhook_emu_s", "generic_emu": "generic_emu_s",
    "plain_wall": "plain_wall_s", "generic_wall": "generic_wall_s",
    "valgrind": "valgrind_wall_s", "valgrind_dyn": "valgrind_dyn_wall_s",
}
PROBE_TARGET = {"plain": "emsan", "memhook": "emsan-memhook", "generic": "emsan-generic"}
NOOP_HOOK_SRC = BENCH / "noop_hook.c"
NOOP_HOOK_LIB = BUILD_DIR / "host" / "libnoop_hook.so"      # where bench/probe.py looks for it
_VG_ERROR = re.compile(rb"^==\d+== \S", re.M)       # the first line of each memcheck error


def configs(arch: str, valgrind: bool) -> tuple[str, ...]:
    cfg = ["plain_emu", "memhook_emu", "generic_emu", "plain_wall", "generic_wall"]
    if arch == "x86_64":                 # runs natively here; valgrind is x86-64 only
        cfg.insert(0, "native")
        if valgrind:
            cfg += ["valgrind", "valgrind_dyn"]
    return tuple(cfg)


def run_keys(cfg: str) -> list[str]:
    """In-process configurations give two figures per run: wall and CPU time inside emu_start."""
    return [RUN_KEYS[cfg], RUN_KEYS[cfg].replace("_emu_s", "_emu_cpu_s")] if cfg.endswith("_emu") else [RUN_KEYS[cfg]]


def pairs_of(st: dict) -> int:
    """malloc+free pairs of one run: frees, each of which ends one allocation (realloc counts
    as an allocation and a free, calloc as an allocation)."""
    return min(int(st["allocs"]), int(st["frees"]))


def build_noop_hook() -> None:
    """bench/noop_hook.c -> a host shared library (the `emsan-memhook` probe target loads it)."""
    if NOOP_HOOK_LIB.exists() and NOOP_HOOK_LIB.stat().st_mtime >= NOOP_HOOK_SRC.stat().st_mtime:
        return
    if shutil.which("gcc") is None:
        raise BenchError("gcc is not installed (needed for bench/noop_hook.c)")
    NOOP_HOOK_LIB.parent.mkdir(parents=True, exist_ok=True)
    tmp = NOOP_HOOK_LIB.with_suffix(".tmp")
    proc = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(NOOP_HOOK_SRC)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"building {NOOP_HOOK_SRC} failed:\n{proc.stderr}")
    os.replace(tmp, NOOP_HOOK_LIB)


# --- the benchmark -----------------------------------------------------------------------------------
def run_bench(args: argparse.Namespace, log) -> dict:
    arches, names = selected(args, KASAN_WORKLOADS)
    valgrind = args.valgrind and "x86_64" in arches
    if valgrind and shutil.which("valgrind") is None:
        log("[yellow]valgrind is not installed: no memcheck columns[/yellow]")
        valgrind = False
    reps = args.reps or (3 if args.quick else 5)
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()

    build_noop_hook()
    with tempfile.TemporaryDirectory(prefix="emsan-kasan-bench-") as tmp:
        r = Runner(tmp)
        wl: dict[tuple[str, str], dict] = {}
        # Build, then one untimed counting run per workload and mode: guest instructions, the
        # reference output, and the generic mode's counters (also warms the caches).
        for arch in arches:
            for name in names:
                exe = build(name, arch)
                iters = max(1, round(KASAN_WORKLOADS[name][arch] * args.scale))
                argv = [str(iters)]
                n_plain, out, st_plain = r.count(exe, argv, "emsan", "count-mem")
                n_gen, out_gen, st = r.count(exe, argv, "emsan-generic")
                cfgs = configs(arch, valgrind)
                d = {"arch": arch, "name": name, "iterations": iters, "binary": str(exe.relative_to(ROOT)),
                     "instructions": {"plain": n_plain, "generic": n_gen},
                     "mem_accesses_plain": int(st_plain["mem_accesses"]),
                     "reference_output": out, "outputs_match": out_gen == out,
                     "sanitizer_stats": st.get("sanitizer_stats"), "configs": list(cfgs),
                     "runs": {k: [] for c in cfgs for k in run_keys(c)}, "pairs_runs": [],
                     "setup_runs": {"plain": [], "memhook": [], "generic": []}}
                if "valgrind_dyn" in cfgs:
                    d["binary_dynamic"] = str(build(name, arch, static=False).relative_to(ROOT))
                    d["valgrind_errors"] = {}
                wl[(arch, name)] = d
                log(f"[dim]{arch} {name} {iters}: {n_plain:,} guest instructions plain "
                    f"({d['mem_accesses_plain']:,} loads and stores), {n_gen:,} generic; "
                    f"generic counters: {_brief(d['sanitizer_stats'])}[/dim]")

        # Timed repetitions: reps outermost, configurations interleaved (rotated each rep).
        for rep in range(reps):
            log(f"[dim]repetition {rep + 1}/{reps}[/dim]")
            for arch in arches:
                for name in names:
                    d = wl[(arch, name)]
                    exe = ROOT / d["binary"]
                    argv = [str(d["iterations"])]
                    for cfg in rotate(d["configs"], rep):
                        out = measure(r, d, cfg, exe, argv)
                        d["outputs_match"] &= out == d["reference_output"]

    workloads = [finish(d) for d in wl.values()]
    measures = (("emu_cpu", "ratio_emu_cpu", "net_emu_cpu"), ("emu", "ratio_emu", "net_emu"),
                ("wall", "ratio_wall", "net_wall"))
    targets = {
        "generic_max_ratio": RATIO_TARGET,
        "ratio": {f"{d['arch']}/{d['name']}": {
            k: v for m, rk, _ in measures
            for k, v in ((f"ratio_{m}", d[rk]["median"]), (f"met_{m}", d[rk]["median"] <= RATIO_TARGET))}
            for d in workloads if d["name"] in RATIO_TARGET_WORKLOADS},
        "pair_max_us": PAIR_TARGET_US,
        "pair": {f"{d['arch']}/{d['name']}": {
            "target_applies": d["name"] in PAIR_TARGET_WORKLOADS,
            **{k: v for m, _, uk in measures
               for k, v in ((f"us_per_pair_{m}", d["us_per_pair"][uk]["median"]),
                            (f"met_{m}", d["us_per_pair"][uk]["median"] <= PAIR_TARGET_US))}}
            for d in workloads if d.get("us_per_pair")},
    }
    meta = run_meta(args, arches, reps, started, load_before,
                    valgrind=tool_version(["valgrind", "--version"]) if valgrind else None, valgrind_cmd=VALGRIND if valgrind else None)
    return {"schema": 1, "meta": meta, "workloads": workloads, "targets": targets}


def measure(r: Runner, d: dict, cfg: str, exe: Path, argv: list[str]) -> bytes:
    """One timed run of one configuration; appends its time to d["runs"], returns its stdout."""
    key = RUN_KEYS[cfg]
    if cfg.endswith("_emu"):
        which = cfg[:-len("_emu")]
        _, _, st, out = r.probe("time", PROBE_TARGET[which], exe, argv)
        d["runs"][key].append(st["emu_s"])
        d["runs"][f"{which}_emu_cpu_s"].append(st["emu_cpu_s"])
        d["setup_runs"][which].append(st["t_emu_first_call"] - st["t_probe_start"])
        if which == "generic":
            ss = st.get("sanitizer_stats")
            if not ss:
                raise BenchError(f"{exe.name}: the probe read no generic-mode counters")
            if ss.get("errors"):
                raise BenchError(f"{exe.name}: the generic mode reported {ss['errors']} error(s) on a correct "
                                 f"program:\n{r.last_stderr.decode(errors='replace')[-3000:]}")
            d["pairs_runs"].append(pairs_of(ss))
    elif cfg.endswith("_wall"):
        wall, out = r.emsan("none" if cfg == "plain_wall" else "generic", exe, argv)
        d["runs"][key].append(wall)
    elif cfg == "native":
        wall, out = r.command([str(exe), *argv], f"native {exe.name}")
        d["runs"][key].append(wall)
    else:
        target = exe if cfg == "valgrind" else ROOT / d["binary_dynamic"]
        wall, out = r.command([*VALGRIND, str(target), *argv], f"valgrind {target}")
        d["runs"][key].append(wall)
        # errors memcheck printed (the last run's; the same every run)
        d["valgrind_errors"][cfg] = len(_VG_ERROR.findall(r.last_stderr))
    return out


def finish(d: dict) -> dict:
    runs = d["runs"]
    d["median"] = {k: statistics.median(v) for k, v in runs.items()}
    d["ratio_emu"] = paired_ratio(runs["generic_emu_s"], runs["plain_emu_s"])
    d["ratio_emu_cpu"] = paired_ratio(runs["generic_emu_cpu_s"], runs["plain_emu_cpu_s"])
    d["memhook_ratio_emu"] = paired_ratio(runs["memhook_emu_s"], runs["plain_emu_s"])
    d["memhook_ratio_emu_cpu"] = paired_ratio(runs["memhook_emu_cpu_s"], runs["plain_emu_cpu_s"])
    # what Unicorn charges per hooked load or store (the no-op hook runs the plain instruction stream)
    d["memhook_ns_per_access"] = summary([(h - b) / d["mem_accesses_plain"] * 1e9 for h, b in
                                          zip(runs["memhook_emu_cpu_s"], runs["plain_emu_cpu_s"])])
    d["ratio_wall"] = paired_ratio(runs["generic_wall_s"], runs["plain_wall_s"])
    for cfg in ("valgrind", "valgrind_dyn"):
        if RUN_KEYS[cfg] in runs:
            d[f"{cfg}_ratio_wall"] = paired_ratio(runs[RUN_KEYS[cfg]], runs["plain_wall_s"])
            d[f"{cfg}_vs_native"] = paired_ratio(runs[RUN_KEYS[cfg]], runs["native_wall_s"])
    d["setup_median_s"] = {k: statistics.median(v) for k, v in d.pop("setup_runs").items()}
    pairs = d.pop("pairs_runs")
    d["pairs"] = pairs[0]
    d["pairs_constant"] = len(set(pairs)) == 1
    if d["name"] in PAIR_WORKLOADS and d["pairs"] > 0:
        p = d["pairs"]
        def net(kind: str) -> dict:
            # (generic - plain) / pairs, paired per repetition: what a pair adds to the program
            return summary([(g - b) / p * 1e6 for g, b in zip(runs[f"generic_{kind}_s"], runs[f"plain_{kind}_s"])])

        d["us_per_pair"] = {
            "net_emu_cpu": net("emu_cpu"), "net_emu": net("emu"), "net_wall": net("wall"),
            # generic emulation CPU time / pairs: everything the guest did, per pair (an upper bound)
            "gross_emu_cpu": summary([g / p * 1e6 for g in runs["generic_emu_cpu_s"]]),
        }
    d["reference_output"] = d["reference_output"].decode(errors="replace").strip()
    return d


def _brief(st: dict | None) -> str:
    if not st:
        return "none"
    return ", ".join(f"{k}={st[k]:,}" for k in ("allocs", "frees", "intercepted", "errors") if k in st)


# --- output ------------------------------------------------------------------------------------------
def render(res: dict, console) -> None:
    from rich.table import Table

    meta = res["meta"]
    n = meta["reps"]
    wls = res["workloads"]
    t = Table(title=f"Generic mode vs plain emulation  (medians of {n} interleaved runs, seconds; ratios "
                    f"/ plain are medians (min–max) of per-repetition ratios; emu = inside emu_start, wall "
                    f"and thread CPU time; wall = whole process)", title_justify="left")
    for col in ("arch", "workload", "iters", "guest insns\nplain / generic", "plain\nemu s", "generic\nemu s",
                "generic/plain\nemu (wall)", "generic/plain\nemu (CPU)", "accesses\n/ insn",
                "no-op hook/plain\nemu (CPU)", "no-op hook\nns/access",
                "plain\nwall s", "generic\nwall s", "generic/plain\nwall", "set-up ms\nplain / generic"):
        t.add_column(col, justify="left" if col in ("arch", "workload") else "right")
    for d in wls:
        m, ins, su = d["median"], d["instructions"], d["setup_median_s"]
        t.add_row(d["arch"], d["name"] + ("" if d["outputs_match"] else " [red](output differs!)[/red]"),
                  f"{d['iterations']:,}", f"{ins['plain'] / 1e6:.1f} M / {ins['generic'] / 1e6:.1f} M",
                  f"{m['plain_emu_s']:.3f}", f"{m['generic_emu_s']:.3f}",
                  _color(d, d["ratio_emu"]), _color(d, d["ratio_emu_cpu"]),
                  f"{d['mem_accesses_plain'] / ins['plain']:.2f}", fmt_ratio(d["memhook_ratio_emu_cpu"]),
                  f"{d['memhook_ns_per_access']['median']:.0f}",
                  f"{m['plain_wall_s']:.3f}", f"{m['generic_wall_s']:.3f}", _color(d, d["ratio_wall"]),
                  f"{su['plain'] * 1e3:.0f} / {su['generic'] * 1e3:.0f}")
    console.print(t)

    ref = [d for d in wls if "native_wall_s" in d["median"]]
    if ref:
        vg = any("valgrind_wall_s" in d["median"] for d in ref)
        t = Table(title=f"For reference: the same static x86-64 binaries run natively and under {' '.join(VALGRIND)} "
                        f"(whole-process wall time, medians of {n}; ratios paired per repetition)",
                  title_justify="left")
        cols = ["arch", "workload", "native wall s", "plain wall s\n(emsan --mode none)", "generic wall s\n(emsan)"]
        if vg:
            cols += ["memcheck wall s\n(static binary)", "memcheck\n/ plain", "memcheck\n/ native",
                     "memcheck wall s\n(dynamic build)", "memcheck dyn\n/ plain", "memcheck\nerrors static / dyn"]
        for col in cols:
            t.add_column(col, justify="left" if col in ("arch", "workload") else "right")
        for d in ref:
            m = d["median"]
            row = [d["arch"], d["name"], f"{m['native_wall_s']:.4f}", f"{m['plain_wall_s']:.3f}",
                   f"{m['generic_wall_s']:.3f}"]
            if vg:
                e = d.get("valgrind_errors") or {}
                row += [f"{m['valgrind_wall_s']:.3f}", fmt_ratio(d["valgrind_ratio_wall"]),
                        f"{d['valgrind_vs_native']['median']:.0f}",
                        f"{m['valgrind_dyn_wall_s']:.3f}", fmt_ratio(d["valgrind_dyn_ratio_wall"]),
                        f"{e.get('valgrind', '?')} / {e.get('valgrind_dyn', '?')}"]
            t.add_row(*row)
        console.print(t)

    pw = [d for d in wls if d.get("us_per_pair")]
    if pw:
        t = Table(title=f"Cost of one malloc+free pair under the generic mode  (net = (generic − plain) / pairs, "
                        f"per repetition; median (min–max) of {n}; µs)", title_justify="left")
        for col in ("arch", "workload", "allocs / frees\n(generic counters)", "pairs",
                    "generic − plain\nemu CPU s", "net µs/pair\nemu CPU", "net µs/pair\nemu wall",
                    "net µs/pair\nwhole process", "gross µs/pair\ngeneric emu CPU / pairs",
                    f"≤ {PAIR_TARGET_US:g} µs\n(emu CPU)"):
            t.add_column(col, justify="left" if col in ("arch", "workload") else "right")
        for d in pw:
            st, u, m = d["sanitizer_stats"], d["us_per_pair"], d["median"]
            tgt = res["targets"]["pair"][f"{d['arch']}/{d['name']}"]
            verdict = met(tgt["met_emu_cpu"])
            t.add_row(d["arch"], d["name"], f"{st['allocs']:,} / {st['frees']:,}",
                      f"{d['pairs']:,}" + ("" if d["pairs_constant"] else " [red](varies!)[/red]"),
                      f"{m['generic_emu_cpu_s'] - m['plain_emu_cpu_s']:.3f}",
                      spread(u["net_emu_cpu"]["values"], ".2f"), spread(u["net_emu"]["values"], ".2f"),
                      spread(u["net_wall"]["values"], ".2f"), spread(u["gross_emu_cpu"]["values"], ".2f"),
                      verdict if tgt["target_applies"] else f"({verdict}: micro)")
        console.print(t)

    tg = res["targets"]
    for key, v in tg["ratio"].items():
        console.print(f"generic ≤ {RATIO_TARGET}× plain, {key}: emu CPU {v['ratio_emu_cpu']:.2f}× {met(v['met_emu_cpu'])}; "
                      f"emu wall {v['ratio_emu']:.2f}× {met(v['met_emu'])}; "
                      f"whole process {v['ratio_wall']:.2f}× {met(v['met_wall'])}")
    for key, v in tg["pair"].items():
        if v["target_applies"]:
            console.print(f"malloc+free pair ≤ {PAIR_TARGET_US:g} µs, {key}: emu CPU {v['us_per_pair_emu_cpu']:.2f} µs "
                          f"{met(v['met_emu_cpu'])}; emu wall {v['us_per_pair_emu']:.2f} µs {met(v['met_emu'])}; "
                          f"whole process {v['us_per_pair_wall']:.2f} µs {met(v['met_wall'])}")
    console.print(f"[dim]{meta['started']}  {meta['seconds']} s  unicorn {meta['unicorn']}  python {meta['python']}  "
                  f"{meta['valgrind'] or 'no valgrind'}  load average {meta['loadavg_before'][0]} → "
                  f"{meta['loadavg_after'][0]}  git {meta['git_rev']}[/dim]")


def _color(d: dict, r: dict) -> str:
    s = fmt_ratio(r)
    if d["name"] not in RATIO_TARGET_WORKLOADS:
        return s
    return s if r["median"] <= RATIO_TARGET else f"[yellow]{s}[/yellow]"


def main(argv: list[str] | None = None) -> int:
    p = standard_parser("emsan generic-mode benchmark (generic vs --mode none vs valgrind)", DEFAULT_JSON, KASAN_WORKLOADS)
    p.add_argument("--no-valgrind", dest="valgrind", action="store_false", help="skip the valgrind memcheck runs")
    return run_and_report(p, argv, run_bench, render, 230)


if __name__ == "__main__":
    raise SystemExit(main())
