#!/usr/bin/env python3
"""Leak-detection benchmark: what emsan's kmemleak scan costs, against LeakSanitizer's and
Valgrind's leak checks on the same heap, and what `--leaks` (on by default) costs a run.

    python3 bench/leaks.py [--quick] [--json FILE] [--reps N] [--scale F] [--no-peers]
                           [--workloads sparse,dense,leaky,alloc,mallocfree] [--arch x86_64|arm64|all]

Scan workloads (bench/workloads/leakscan.c: N live objects adding up to TOTAL bytes, each with
PTRS pointers to other objects, a global array keeping them; at scale 1, N = 1,000,000 objects in
1 GiB, the size the issue asks about):
  * sparse: 4 pointers per object (the rest filler), nothing lost;
  * dense: 64 pointers per object (half of each ~1 KiB object is pointers), nothing lost;
  * leaky: as sparse, with one object in 10 dropped from the root array (100,000 leaks).
For each: emsan's scan time at exit (`--stats`: leak_scan_ns wall, leak_scan_cpu_ns the CPU time of
emsan's thread), and, on x86-64, the leak check of the peers on the same program run natively:
LeakSanitizer (clang -fsanitize=leak; LSAN_OPTIONS=detect_leaks=1 minus detect_leaks=0) and
Valgrind memcheck (--leak-check=full minus --leak-check=no), as paired differences of the
child's CPU time (user + system) and of wall time. The objects each tool finds lost (emsan's direct
and indirect leaks, LSan's allocations, Valgrind's definitely and indirectly lost blocks) are
printed next to the count the workload itself made.

Cost workloads (bench/workloads/alloc.c and mallocfree.c, as bench/kasan.py runs them): whole-
process wall time of `emsan run` (generic mode) with the default `--leaks` over `--no-leaks`,
paired per repetition.

All configurations of a workload run interleaved (rotated each repetition). Figures go to
stdout and JSON (default bench/results/leaks.json); nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (run_and_report, run_meta, standard_parser, BENCH, BUILD_DIR, PY, ROOT, WORKLOADS,  # noqa: E402
                    WORKLOAD_DIR, BenchError, build, fmt_ratio, now, paired_ratio, rotate, spread, summary)

DEFAULT_JSON = BENCH / "results" / "leaks.json"
SCAN = {  # name: (objects, MiB, pointers per object, lose one in N (0: none))
    "sparse": (1_000_000, 1024, 4, 0),
    "dense": (1_000_000, 1024, 64, 0),
    "leaky": (1_000_000, 1024, 4, 10),
}
COST = {"alloc": WORKLOADS["alloc"], "mallocfree": {"x86_64": 400_000, "arm64": 400_000}}
ALL = (*SCAN, *COST)
_STATS = re.compile(rb"^emsan: stats: (.*)$", re.M)
_MADE = re.compile(rb"^objects (\d+) bytes (\d+) lost (\d+)$", re.M)
_VALGRIND = re.compile(rb"(definitely|indirectly) lost: ([\d,]+) bytes in ([\d,]+) blocks")
_LSAN = re.compile(rb"SUMMARY: LeakSanitizer: (\d+) byte\(s\) leaked in (\d+) allocation\(s\)")


def run(cmd: list[str], what: str, cwd: str, env: dict | None = None, ok=(0,)) -> tuple[float, float, bytes, bytes]:
    """Run cmd: (wall seconds, the child's CPU seconds, stdout, stderr); fails on another status."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = now()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                          env={**os.environ, **(env or {})})
    wall = now() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in ok:
        raise BenchError(f"{what}: exit status {proc.returncode}\n$ {' '.join(cmd)}\n"
                         f"{proc.stderr.decode(errors='replace')[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout, proc.stderr


def stats_of(err: bytes, what: str) -> dict:
    m = _STATS.search(err)
    if not m:
        raise BenchError(f"{what}: no 'emsan: stats:' line\n{err.decode(errors='replace')[-2000:]}")
    out = {}
    for kv in m.group(1).decode().split(", "):
        k, _, v = kv.partition("=")
        out[k] = int(v) if v.lstrip("-").isdigit() else v
    return out


def build_native(kind: str) -> Path:
    """leakscan.c for the peers: with clang -fsanitize=leak ("lsan"), or dynamic gcc ("valgrind",
    where memcheck replaces malloc)."""
    src = WORKLOAD_DIR / "leakscan.c"
    out = BUILD_DIR / "x86_64-peers" / f"leakscan-{kind}"
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cc = ["clang", "-fsanitize=leak"] if kind == "lsan" else ["gcc"]
    if shutil.which(cc[0]) is None:
        raise BenchError(f"{cc[0]} is not installed")
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*cc, "-O2", "-g", "-o", str(out), str(src)], capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"building {src} ({kind}) failed:\n{proc.stderr}")
    return out


def scan_configs(arch: str, peers: bool) -> tuple[str, ...]:
    return ("emsan", "lsan0", "lsan1", "vg_no", "vg_full") if arch == "x86_64" and peers else ("emsan",)


def run_bench(args: argparse.Namespace, log) -> dict:
    arches = ("x86_64", "arm64") if args.arch == "all" else (args.arch,)
    names = [w.strip() for w in args.workloads.split(",")] if args.workloads else list(ALL)
    for n in names:
        if n not in ALL:
            raise BenchError(f"unknown workload {n!r} (have: {', '.join(ALL)})")
    peers = args.peers
    if peers and (shutil.which("valgrind") is None or shutil.which("clang") is None):
        log("[yellow]valgrind or clang missing: no peer columns[/yellow]")
        peers = False
    reps = args.reps or (3 if args.quick else 5)
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="emsan-leaks-bench-") as tmp:
        jobs = []
        for arch in arches:
            for name in names:
                if name in SCAN:
                    n, mib, ptrs, lose = SCAN[name]
                    argv = [str(max(1, round(n * args.scale))), str(max(1, round(mib * args.scale))), str(ptrs),
                            str(lose)]
                    cfgs = scan_configs(arch, peers)
                    d = {"kind": "scan", "arch": arch, "name": name, "argv": argv,
                         "binary": str(build("leakscan", arch).relative_to(ROOT)), "configs": list(cfgs),
                         "runs": {c: [] for c in cfgs}, "emsan_stats": []}
                    if "lsan0" in cfgs:
                        d["lsan_binary"] = str(build_native("lsan").relative_to(ROOT))
                        d["valgrind_binary"] = str(build_native("valgrind").relative_to(ROOT))
                else:
                    cfgs = ("leaks", "no_leaks")
                    d = {"kind": "cost", "arch": arch, "name": name,
                         "argv": [str(max(1, round(COST[name][arch] * args.scale)))],
                         "binary": str(build(name, arch).relative_to(ROOT)), "configs": list(cfgs),
                         "runs": {c: [] for c in cfgs}}
                jobs.append(d)
        for rep in range(reps):
            log(f"[dim]repetition {rep + 1}/{reps} (load {os.getloadavg()[0]:.1f})[/dim]")
            for d in jobs:
                for cfg in rotate(d["configs"], rep):
                    measure(d, cfg, tmp)
        results = [finish(d) for d in jobs]
    meta = run_meta(args, arches, reps, started, load_before, peers=peers)
    return {"schema": 1, "meta": meta, "workloads": results}


def measure(d: dict, cfg: str, tmp: str) -> None:
    exe, argv, what = str(ROOT / d["binary"]), d["argv"], f"{d['arch']} {d['name']} {cfg}"
    if d["kind"] == "cost":
        flag = "--leaks" if cfg == "leaks" else "--no-leaks"
        wall, cpu, _, _ = run([PY, "-m", "emsan", "run", flag, exe, *argv], what, tmp)
        d["runs"][cfg].append({"wall": wall, "cpu": cpu})
        return
    if cfg == "emsan":
        wall, cpu, out, err = run([PY, "-m", "emsan", "run", "--leaks", "--stats", "--error-exitcode", "0", exe,
                                   *argv], what, tmp)
        st = stats_of(err, what)
        made = _MADE.search(out)
        if not made:
            raise BenchError(f"{what}: no 'objects N bytes N lost N' line")
        d["made_lost"] = int(made.group(3))          # the workload's own count: the oracle
        d["emsan_stats"].append({k: v for k, v in st.items() if k.startswith("leak_")})
        d["runs"][cfg].append({"wall": wall, "cpu": cpu, "scan": st["leak_scan_ns"] / 1e9,
                               "scan_cpu": st["leak_scan_cpu_ns"] / 1e9})
    elif cfg.startswith("lsan"):
        env = {"LSAN_OPTIONS": f"detect_leaks={cfg[-1]}:exitcode=0"}
        wall, cpu, _, err = run([str(ROOT / d["lsan_binary"]), *argv], what, tmp, env)
        d["runs"][cfg].append({"wall": wall, "cpu": cpu})
        if cfg == "lsan1":                            # leaked objects, direct and indirect
            m = _LSAN.search(err)
            d["lsan_lost_objects"] = int(m.group(2)) if m else 0
    else:
        check = "full" if cfg == "vg_full" else "no"
        wall, cpu, _, err = run(["valgrind", f"--leak-check={check}", str(ROOT / d["valgrind_binary"]), *argv],
                                what, tmp)
        d["runs"][cfg].append({"wall": wall, "cpu": cpu})
        if cfg == "vg_full":                          # definitely + indirectly lost blocks
            d["valgrind_lost_objects"] = sum(int(m.group(3).replace(b",", b"")) for m in _VALGRIND.finditer(err))


def _diff(a: list[dict], b: list[dict], key: str) -> dict:
    return summary([x[key] - y[key] for x, y in zip(a, b)])


def finish(d: dict) -> dict:
    r = d["runs"]
    if d["kind"] == "cost":
        d["ratio_wall"] = paired_ratio([x["wall"] for x in r["leaks"]], [x["wall"] for x in r["no_leaks"]])
        d["ratio_cpu"] = paired_ratio([x["cpu"] for x in r["leaks"]], [x["cpu"] for x in r["no_leaks"]])
        return d
    st = d["emsan_stats"][0]
    d["heap"] = {"objects": st["leak_objects"], "object_bytes": st["leak_object_bytes"],
                 "root_bytes": st["leak_root_bytes"], "leaked": st["leak_leaked"], "indirect": st["leak_indirect"]}
    d["emsan_scan_s"] = summary([x["scan"] for x in r["emsan"]])
    d["emsan_scan_cpu_s"] = summary([x["scan_cpu"] for x in r["emsan"]])
    if "lsan1" in r:
        d["lsan_check_cpu_s"] = _diff(r["lsan1"], r["lsan0"], "cpu")
        d["lsan_check_wall_s"] = _diff(r["lsan1"], r["lsan0"], "wall")
        d["valgrind_check_cpu_s"] = _diff(r["vg_full"], r["vg_no"], "cpu")
        d["valgrind_check_wall_s"] = _diff(r["vg_full"], r["vg_no"], "wall")
    return d


def render(res: dict, console) -> None:
    from rich.table import Table
    meta = res["meta"]
    scans = [d for d in res["workloads"] if d["kind"] == "scan"]
    if scans:
        t = Table(title="Leak scan at exit: emsan's kmemleak scan against the peers' leak checks "
                        "(seconds, median (min–max); peers: paired differences)")
        for col in ("arch", "workload", "live objects", "object MiB", "leaked (+indirect)", "lost: made/LSan/Valgrind",
                    "emsan scan wall",
                    "emsan scan CPU", "LSan check CPU", "LSan check wall", "Valgrind check CPU", "Valgrind check wall"):
            t.add_column(col, justify="right" if col not in ("arch", "workload") else "left")
        for d in scans:
            h = d["heap"]
            peer = [spread(d[k]["values"]) if k in d else "-" for k in
                    ("lsan_check_cpu_s", "lsan_check_wall_s", "valgrind_check_cpu_s", "valgrind_check_wall_s")]
            peers_lost = "/".join(f"{d[k]:,}" if k in d else "-" for k in
                                  ("made_lost", "lsan_lost_objects", "valgrind_lost_objects"))
            t.add_row(d["arch"], d["name"], f"{h['objects']:,}", f"{h['object_bytes'] / 2**20:,.0f}",
                      f"{h['leaked']:,} (+{h['indirect']:,})", peers_lost, spread(d["emsan_scan_s"]["values"]),
                      spread(d["emsan_scan_cpu_s"]["values"]), *peer)
        console.print(t)
    costs = [d for d in res["workloads"] if d["kind"] == "cost"]
    if costs:
        t = Table(title="What --leaks (the default) costs a run: emsan run --leaks / --no-leaks, whole process")
        for col in ("arch", "workload", "wall ratio", "CPU ratio", "wall --no-leaks (s)"):
            t.add_column(col, justify="right" if col not in ("arch", "workload") else "left")
        for d in costs:
            t.add_row(d["arch"], d["name"], fmt_ratio(d["ratio_wall"]), fmt_ratio(d["ratio_cpu"]),
                      spread([x["wall"] for x in d["runs"]["no_leaks"]]))
        console.print(t)
    console.print(f"[dim]{meta['reps']} repetitions; load average {meta['loadavg_before']} before, "
                  f"{meta['loadavg_after']} after; {meta['cpus']} CPUs[/dim]")


def main(argv: list[str] | None = None) -> int:
    p = standard_parser(__doc__.splitlines()[0], DEFAULT_JSON, ALL)
    p.add_argument("--no-peers", dest="peers", action="store_false", help="emsan only (no LSan, no Valgrind)")
    return run_and_report(p, argv, run_bench, render, 190)


if __name__ == "__main__":
    sys.exit(main())
