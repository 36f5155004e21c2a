#!/usr/bin/env python3
"""Start-up benchmark (issue 15 item 5): whole-process time of a dynamic "hello" under emsan in
every mode, against qemu-user, Valgrind memcheck and the native program.

    python3 bench/startup.py [--quick] [--reps N] [--arch x86_64|arm64|all] [--json FILE]
                             [--modes none,generic,kfence,sw-tags,hw-tags,compiler-assisted]
                             [--base PYTHON] [--no-site]

bench/workloads/hello.c is built dynamically (gcc / aarch64-linux-gnu-gcc, bench/common.py's
flags without -static) and, for compiler-assisted mode, with clang $(emsan cflags). Each run is
one fresh process, exactly as a user starts it (the `emsan` script next to this interpreter):

  native       the program itself (x86-64)
  qemu         qemu-x86_64 -L / or qemu-aarch64 -L /usr/aarch64-linux-gnu: the peer
  valgrind     valgrind -q --tool=memcheck (x86-64)
  python       python3 -c pass: the interpreter's own floor (site included)
  MODE-cold    emsan run --mode MODE with an empty cache ($EMSAN_CACHE_DIR a new directory each run)
  MODE-warm    the same with the cache a previous run left (a user's second run)
  base:MODE-warm   --base PYTHON: another emsan install (its own `emsan` script), warm
  python-nosite    --no-site: python3 -S -c pass (no `site`, no .pth files)
  MODE-warm-nosite --no-site: python3 -S -m emsan run ..., warm, with $PYTHONPATH naming the
                   interpreter's site-packages directories: what of the floor is the `site`
                   module and the environment's .pth files, and what emsan needs anyway

Repetitions outermost, configurations interleaved (rotated each repetition). Prints per
configuration the median wall and CPU (user+system of the process and its children) with their
spread, and the paired ratio to qemu-user; writes JSON (default bench/results/startup.json).
The target (0.10 s in every mode) is judged on the warm wall median; CPU is shown beside it
because wall time on a loaded machine includes waiting for a core. Every run's stdout must be
"hello, world". Nothing asserts on speed.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BUILD_DIR, PY, WORKLOAD_DIR, BenchError, Runner, build, paired_ratio, rotate,  # noqa: E402
                    run_and_report, run_meta, selected, spread, standard_parser)

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "startup.json"
PROGRAM = "hello"
EXPECTED = b"hello, world\n"
TARGET_S = 0.10
MODES = ("none", "generic", "kfence", "sw-tags", "hw-tags", "compiler-assisted")
ARM64_ONLY = ("sw-tags", "hw-tags")
QEMU = {"x86_64": ["qemu-x86_64", "-L", "/"], "arm64": ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]}


def emsan_command(python: str) -> list[str]:
    """How a user starts emsan from that interpreter's install: its `emsan` script."""
    script = Path(python).parent / "emsan"
    return [str(script)] if script.exists() else [python, "-m", "emsan"]


def build_cc(arch: str) -> Path | None:
    """hello.c with clang $(emsan cflags), dynamic: bench/build/cc-ARCH-kasan-dynamic/hello (None
    without clang)."""
    from emsan.runtime import HEADER, cflags

    src = WORKLOAD_DIR / f"{PROGRAM}.c"
    out = BUILD_DIR / f"cc-{arch}-kasan-dynamic" / PROGRAM
    if out.exists() and out.stat().st_mtime >= max(src.stat().st_mtime, HEADER.stat().st_mtime):
        return out
    if shutil.which("clang") is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run(["clang", *cflags(arch), "-O2", "-g", "-o", str(tmp), str(src)], capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"building {src} for {arch} with clang failed:\n{proc.stderr}")
    os.replace(tmp, out)
    return out


def configs(arch: str, modes: list[str], base: str | None, tmp: str,
            no_site: bool = False) -> dict[str, tuple[list[str], str | None, dict[str, str]]]:
    """Configuration name -> (command, cache: "cold", "warm", a directory, or None; environment
    added)."""
    exe = build(PROGRAM, arch, static=False)
    out: dict[str, tuple[list[str], str | None, dict[str, str]]] = {}
    if arch == "x86_64":
        out["native"] = ([str(exe)], None, {})
    if shutil.which(QEMU[arch][0]):
        out["qemu"] = ([*QEMU[arch], str(exe)], None, {})
    if arch == "x86_64" and shutil.which("valgrind"):
        out["valgrind"] = (["valgrind", "-q", "--tool=memcheck", str(exe)], None, {})
    out["python"] = ([PY, "-c", "pass"], None, {})
    site_path = {"PYTHONPATH": site_packages(PY)} if no_site else {}
    if no_site:
        out["python-nosite"] = ([PY, "-S", "-c", "pass"], None, {})
    for mode in modes:
        if mode in ARM64_ONLY and arch != "arm64":
            continue
        prog = exe
        if mode == "compiler-assisted":
            cc = build_cc(arch)
            if cc is None:
                continue
            prog = cc
        run = ["run", "--mode", mode, str(prog)]
        out[f"{mode}-cold"] = ([*emsan_command(PY), *run], "cold", {})
        out[f"{mode}-warm"] = ([*emsan_command(PY), *run], os.path.join(tmp, "cache-warm"), {})
        if no_site:
            out[f"{mode}-warm-nosite"] = ([PY, "-S", "-m", "emsan", *run], os.path.join(tmp, "cache-warm"), site_path)
        if base:
            out[f"base:{mode}-warm"] = ([*emsan_command(base), *run], os.path.join(tmp, "cache-base"), {})
    return out


def site_packages(python: str) -> str:
    """That interpreter's site-packages directories (its virtualenv's and, with
    --system-site-packages, the base's), as a $PYTHONPATH."""
    return subprocess.run([python, "-c", "import os, site; print(os.pathsep.join(site.getsitepackages()))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def run_bench(args, log) -> dict:
    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    reps = args.reps or (5 if args.quick else 10)
    arches, _ = selected(args, {PROGRAM: None})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise BenchError(f"unknown mode {m!r} (have: {', '.join(MODES)})")
    results = []
    with tempfile.TemporaryDirectory(prefix="emsan-startup-") as tmp:
        r = Runner(tmp)
        plan = {arch: configs(arch, modes, args.base, tmp, args.no_site) for arch in arches}
        recs = {arch: {"arch": arch, "program": PROGRAM, "commands": {c: cmd for c, (cmd, _, _) in cfgs.items()},
                       "wall": {c: [] for c in cfgs}, "cpu": {c: [] for c in cfgs}} for arch, cfgs in plan.items()}

        def one(arch: str, name: str, rep: int) -> tuple[float, float]:
            cmd, cache, extra = plan[arch][name]
            env = dict(r.env, **extra)
            if cache == "cold":
                cache = tempfile.mkdtemp(prefix=f"cold-{rep}-", dir=tmp)
            if cache is not None:
                env["EMSAN_CACHE_DIR"] = cache
            wall, out = r.command(cmd, f"{arch} {name}", env)
            if out != (b"" if name.startswith("python") else EXPECTED):
                raise BenchError(f"{arch} {name}: stdout {out[:200]!r}, expected {EXPECTED!r}")
            return wall, r.last_cpu

        # One untimed run of each: builds, the page cache, and the warm caches.
        for arch, cfgs in plan.items():
            for name in cfgs:
                one(arch, name, -1)
            log(f"[dim]{arch}: {', '.join(cfgs)}[/dim]")
        for rep in range(reps):
            log(f"[dim]repetition {rep + 1}/{reps}[/dim]")
            for arch, cfgs in plan.items():
                for name in rotate(list(cfgs), rep):
                    wall, cpu = one(arch, name, rep)
                    recs[arch]["wall"][name].append(wall)
                    recs[arch]["cpu"][name].append(cpu)
    for rec in recs.values():
        rec["median_wall_s"] = {c: statistics.median(v) for c, v in rec["wall"].items()}
        rec["median_cpu_s"] = {c: statistics.median(v) for c, v in rec["cpu"].items()}
        if "qemu" in rec["wall"]:
            rec["wall_ratio_to_qemu"] = {c: paired_ratio(v, rec["wall"]["qemu"]) for c, v in rec["wall"].items()
                                         if c != "qemu"}
        rec["target_met"] = {c: rec["median_wall_s"][c] <= TARGET_S for c in rec["wall"]
                             if c.endswith("-warm") and not c.startswith("base:")}
        results.append(rec)
    return {"schema": 1, "meta": run_meta(args, arches, reps, started, load_before, modes=modes, base=args.base,
                                           no_site=args.no_site),
            "target_s": TARGET_S, "results": results}


def render(res: dict, console) -> None:
    from rich.table import Table

    meta = res["meta"]
    for rec in res["results"]:
        t = Table(title=f"Start-up, dynamic {rec['program']}, {rec['arch']}: whole process, seconds (median (min–max) "
                        f"of {meta['reps']} interleaved runs; target: warm wall ≤ {res['target_s']} s)",
                  title_justify="left")
        for col in ("configuration", "wall s", "CPU s", "wall / qemu-user", "target"):
            t.add_column(col, justify="left" if col == "configuration" else "right")
        for c in rec["wall"]:
            ratio = rec.get("wall_ratio_to_qemu", {}).get(c)
            met = rec["target_met"].get(c)
            t.add_row(c, spread(rec["wall"][c]), spread(rec["cpu"][c]),
                      f"{ratio['median']:.1f}x" if ratio else "",
                      "" if met is None else ("[green]met[/green]" if met else "[red]not met[/red]"))
        console.print(t)
    console.print(f"[dim]{meta['started']}  {meta['seconds']} s  python {meta['python']}  load average "
                  f"{meta['loadavg_before'][0]} → {meta['loadavg_after'][0]}  git {meta['git_rev']}[/dim]")


def main(argv: list[str] | None = None) -> int:
    p = standard_parser("emsan start-up benchmark (dynamic hello, every mode, cold and warm cache)", DEFAULT_JSON,
                        {PROGRAM: None})
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--base", metavar="PYTHON", help="also run another emsan install (its virtualenv's python), warm")
    p.add_argument("--no-site", action="store_true",
                   help="also python3 -S -c pass and each mode warm under python3 -S (site-packages on $PYTHONPATH)")
    return run_and_report(p, argv, run_bench, render, 160)


if __name__ == "__main__":
    raise SystemExit(main())
