#!/usr/bin/env python3
"""Engine benchmark: emsan --mode none and bare Unicorn (the wheel's library and emsan's engine)
against qemu-user, on x86-64 and arm64.

    python3 bench/engine.py [--quick] [--arch x86_64|arm64|all] [--reps N] [--workloads compute,alloc,strings]
                            [--scale F] [--no-wheel] [--no-programs] [--json FILE]

Per workload, interleaved in every repetition (order rotated by one each time), one fresh process each:
  qemu         qemu-x86_64 / qemu-aarch64 PROG N             Debian's qemu-user: the peer
  bare-wheel   python3 bench/bare_unicorn.py PROG N          bare Unicorn on the unicorn wheel's own library
  bare-emsan   the same with LIBUNICORN_PATH = emsan's engine bare Unicorn on emsan's patched library
  emsan        python3 -m emsan run --mode none PROG N        plain emulation under emsan, as a user runs it
Whole-process CPU time (user + system, from the child's rusage; not stretched by other tenants'
load) and wall time, start-up included; the same configurations on `hello` give each one's start-up,
and the iteration counts are sized so that emsan's start-up stays under 10% of its run. Then, in the same
interleaved repetitions, real programs of the host (x86-64, dynamically linked: gzip, sort, sqlite3,
lua, python3 start-up) under qemu-x86_64 -L / and emsan --mode none. Every run's stdout must equal qemu's. Prints ratios to qemu (paired per repetition: median, min-max) and writes
JSON (default bench/results/engine.json). Nothing asserts on speed. Target (issue 11): emsan / qemu
<= 1.3 on every workload and both architectures.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, PY, ROOT, BenchError, Runner, build, fmt_ratio, paired_ratio, rotate,  # noqa: E402
                    run_and_report, run_meta, selected, spread, standard_parser, summary)

DEFAULT_JSON = BENCH / "results" / "engine.json"
TARGET = 1.3
STARTUP_MAX_FRACTION = 0.10
QEMU = {"x86_64": "qemu-x86_64", "arm64": "qemu-aarch64"}
# Iteration counts: emsan --mode none spends about 1.8 s of CPU on each, so its start-up (about 0.16 s
# of CPU: interpreter, imports, loading) is under 10% of the run.
ITERATIONS = {
    "compute": {"x86_64": 120_000, "arm64": 240_000},
    "alloc": {"x86_64": 4_000_000, "arm64": 3_000_000},
    "strings": {"x86_64": 1_250_000, "arm64": 1_250_000},
}
CONFIGS = ("qemu", "bare-wheel", "bare-emsan", "emsan")
# Real x86-64 programs of the host (dynamically linked): qemu-x86_64 -L / against emsan --mode none.
PROGRAMS = {
    "gzip": ["gzip", "-c", "text.txt"],
    "sort": ["sort", "lines.txt"],
    "sqlite3": ["sqlite3", ":memory:", ".read query.sql"],
    "lua": ["lua5.4", "bench.lua"],
    "python3": ["/usr/bin/python3", "-c", "pass"],
}


def program_inputs(d: Path) -> None:
    """Deterministic inputs for PROGRAMS (12 MB of text, 300,000 lines, a SQL script, a Lua script), sized so
    that emsan's start-up is a small part of each run (python3 -c pass is all start-up, by design)."""
    import random
    rnd = random.Random(1)
    words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(5000)]
    (d / "text.txt").write_text("".join(" ".join(rnd.choice(words) for _ in range(8)) + "\n" for _ in range(250_000)))
    (d / "lines.txt").write_text("".join(f"{rnd.choice(words)} {rnd.randint(0, 10**6)}\n" for _ in range(300_000)))
    (d / "query.sql").write_text(
        "create table t(a integer, b text);\n"
        "with recursive c(x) as (select 1 union all select x+1 from c where x < 200000)"
        " insert into t select x, printf('%08x', (x * 2654435761) % 4294967296) from c;\n"
        "create index ti on t(b);\n"
        "select count(*), sum(a) from t where b > '8';\n"
        "select b from t order by b limit 3;\n")
    (d / "bench.lua").write_text(
        "local t = {}\nfor i = 1, 1000000 do t[i] = (i * 7919) % 100003 end\ntable.sort(t)\n"
        "local s = 0\nfor i = 1, #t do s = s + t[i] % 97 end\n"
        "local function fib(n) if n < 2 then return n end return fib(n-1) + fib(n-2) end\n"
        "print(s, fib(27))\n")


def engine_dir() -> Path:
    """emsan's installed engine (found without importing emsan.machine, which would load it here)."""
    spec = importlib.util.find_spec("emsan")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("emsan is not installed (pip install .)")
    d = Path(list(spec.submodule_search_locations)[0]) / "machine" / "_engine"
    if not (d / "libunicorn.so.2").exists():
        raise BenchError(f"emsan's engine is missing: {d}")
    return d


def commands(arch: str, exe: Path, argv: list[str], configs) -> dict[str, tuple[list[str], dict]]:
    base = {k: v for k, v in os.environ.items() if k not in ("LIBUNICORN_PATH", "EMSAN_DEBUG")}
    bare = [PY, str(BENCH / "bare_unicorn.py"), str(exe), *argv]
    cmds = {"qemu": ([QEMU[arch], str(exe), *argv], base),
            "bare-wheel": (bare, base),
            "bare-emsan": (bare, dict(base, LIBUNICORN_PATH=str(engine_dir()))),
            "emsan": ([PY, "-m", "emsan", "run", "--mode", "none", str(exe), *argv], base)}
    return {c: cmds[c] for c in configs}


def run_bench(args, log) -> dict:
    arches, names = selected(args, ITERATIONS)
    reps = args.reps or (3 if args.quick else 5)
    configs = [c for c in CONFIGS if not (args.no_wheel and c == "bare-wheel")]
    for arch in arches:
        if shutil.which(QEMU[arch]) is None:
            raise BenchError(f"{QEMU[arch]} is not installed (Debian: apt-get install qemu-user)")
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    res: dict = {"workloads": [], "startup": []}
    with tempfile.TemporaryDirectory(prefix="emsan-bench-engine-") as tmp:
        r = Runner(tmp)
        jobs = []       # (record, commands) for every program measured
        for arch in arches:
            hello = build("hello", arch)
            rec = {"arch": arch, "name": "hello", "runs": {c: [] for c in configs}, "cpu": {c: [] for c in configs}}
            res["startup"].append(rec)
            jobs.append((rec, commands(arch, hello, [], configs)))
            for name in names:
                exe = build(name, arch)
                iters = max(1, round(ITERATIONS[name][arch] * args.scale))
                rec = {"arch": arch, "name": name, "iterations": iters, "binary": str(exe.relative_to(ROOT)),
                       "outputs_match": True, "runs": {c: [] for c in configs}, "cpu": {c: [] for c in configs}}
                res["workloads"].append(rec)
                jobs.append((rec, commands(arch, exe, [str(iters)], configs)))
        if args.programs:
            program_inputs(Path(tmp))
            base = {k: v for k, v in os.environ.items() if k not in ("LIBUNICORN_PATH", "EMSAN_DEBUG")}
            res["programs"] = []
            for name, argv in PROGRAMS.items():
                exe = shutil.which(argv[0])
                if exe is None:
                    log(f"[yellow]{argv[0]} is not installed: {name} skipped[/yellow]")
                    continue
                rec = {"arch": "x86_64", "name": name, "command": " ".join(argv), "outputs_match": True,
                       "runs": {c: [] for c in ("qemu", "emsan")}, "cpu": {c: [] for c in ("qemu", "emsan")}}
                res["programs"].append(rec)
                jobs.append((rec, {"qemu": (["qemu-x86_64", "-L", "/", exe, *argv[1:]], base),
                                   "emsan": ([PY, "-m", "emsan", "run", "--mode", "none", exe, *argv[1:]], base)}))
        for rep in range(reps):
            log(f"[dim]repetition {rep + 1}/{reps}[/dim]")
            for rec, cmds in jobs:
                outputs = {}
                for cfg in rotate([c for c in configs if c in cmds], rep):
                    cmd, env = cmds[cfg]
                    wall, outputs[cfg] = r.command(cmd, f"{cfg} {rec['arch']} {rec['name']}", env=env)
                    rec["runs"][cfg].append(wall)
                    rec["cpu"][cfg].append(r.last_cpu)
                if any(o != outputs["qemu"] for o in outputs.values()):
                    rec["outputs_match"] = False
                rec["reference_output"] = outputs["qemu"].decode(errors="replace")
                log(f"  {rec['arch']:7} {rec['name']:8} " + "  ".join(
                    f"{c} {rec['runs'][c][-1]:.2f}s ({rec['cpu'][c][-1]:.2f} cpu)" for c in configs if c in cmds))
    startup = {(s["arch"]): s for s in res["startup"]}
    for rec in res["workloads"]:
        rec["median_s"] = {c: summary(v)["median"] for c, v in rec["runs"].items()}
        rec["median_cpu_s"] = {c: summary(v)["median"] for c, v in rec["cpu"].items()}
        rec["ratio_to_qemu"] = {c: paired_ratio(rec["runs"][c], rec["runs"]["qemu"]) for c in configs if c != "qemu"}
        rec["ratio_to_qemu_cpu"] = {c: paired_ratio(rec["cpu"][c], rec["cpu"]["qemu"]) for c in configs if c != "qemu"}
        su = startup[rec["arch"]]["cpu"]
        rec["startup_fraction_cpu"] = {c: summary(su[c])["median"] / rec["median_cpu_s"][c] for c in configs}
        rec["target_met"] = {"cpu": rec["ratio_to_qemu_cpu"]["emsan"]["median"] <= TARGET,
                             "wall": rec["ratio_to_qemu"]["emsan"]["median"] <= TARGET}
    for rec in res.get("programs", []):
        rec["median_s"] = {c: summary(v)["median"] for c, v in rec["runs"].items()}
        rec["median_cpu_s"] = {c: summary(v)["median"] for c, v in rec["cpu"].items()}
        rec["ratio_to_qemu_cpu"] = paired_ratio(rec["cpu"]["emsan"], rec["cpu"]["qemu"])
        rec["ratio_to_qemu"] = paired_ratio(rec["runs"]["emsan"], rec["runs"]["qemu"])
    for s in res["startup"]:
        s["median_s"] = {c: summary(v)["median"] for c, v in s["runs"].items()}
        s["median_cpu_s"] = {c: summary(v)["median"] for c, v in s["cpu"].items()}
    res["meta"] = run_meta(args, arches, reps, started, load_before, engine=_engine_name(), configs=configs)
    res["target"] = {"emsan_over_qemu_max": TARGET, "startup_max_fraction": STARTUP_MAX_FRACTION}
    return res


def _engine_name() -> str:
    import json
    return json.loads((engine_dir() / "engine.json").read_text())["engine"]


def render(res: dict, console) -> None:
    from rich.table import Table

    cfgs = res["meta"]["configs"]
    for metric, runs, ratio, what in (
            ("cpu", "cpu", "ratio_to_qemu_cpu", "CPU time (user + system) of the whole process"),
            ("wall", "runs", "ratio_to_qemu", "wall time of the whole process")):
        t = Table(title=f"{what}, ratio to qemu-user (median of {res['meta']['reps']}, min-max); "
                        f"target emsan/qemu <= {TARGET}")
        t.add_column("arch")
        t.add_column("workload")
        for c in cfgs:
            t.add_column(f"{c} s", justify="right")
        for c in cfgs[1:]:
            t.add_column(f"{c}/qemu", justify="right")
        if metric == "cpu":
            t.add_column("emsan start-up", justify="right")
        t.add_column("target")
        for rec in res["workloads"]:
            row = [rec["arch"], f"{rec['name']} {rec['iterations']}" + ("" if rec["outputs_match"] else " [red]OUTPUT DIFFERS[/red]"),
                   *[spread(rec[runs][c], ".2f") for c in cfgs], *[fmt_ratio(rec[ratio][c]) for c in cfgs[1:]]]
            if metric == "cpu":
                row.append(f"{100 * rec['startup_fraction_cpu']['emsan']:.0f}%")
            row.append("[green]met[/green]" if rec["target_met"][metric] else "[red]not met[/red]")
            t.add_row(*row)
        console.print(t)
    if res.get("programs"):
        pt = Table(title="Host x86-64 programs (dynamically linked): emsan --mode none against qemu-x86_64 -L /")
        for col in ("program", "qemu CPU s", "emsan CPU s", "emsan/qemu CPU", "emsan/qemu wall"):
            pt.add_column(col, justify="left" if col == "program" else "right")
        for rec in res["programs"]:
            pt.add_row(rec["command"] + ("" if rec["outputs_match"] else " [red]OUTPUT DIFFERS[/red]"),
                       spread(rec["cpu"]["qemu"], ".2f"), spread(rec["cpu"]["emsan"], ".2f"),
                       fmt_ratio(rec["ratio_to_qemu_cpu"]), fmt_ratio(rec["ratio_to_qemu"]))
        console.print(pt)
    su = Table(title="Start-up: static hello, whole process, median CPU s (wall s)")
    su.add_column("arch")
    for c in cfgs:
        su.add_column(c, justify="right")
    for s in res["startup"]:
        su.add_row(s["arch"], *[f"{s['median_cpu_s'][c]:.3f} ({s['median_s'][c]:.3f})" for c in cfgs])
    console.print(su)
    m = res["meta"]
    console.print(f"engine: {m['engine']}; load average {m['loadavg_before']} -> {m['loadavg_after']}")


def main(argv: list[str] | None = None) -> int:
    p = standard_parser(__doc__.split("\n\n")[0], DEFAULT_JSON, ITERATIONS)
    p.add_argument("--no-wheel", action="store_true", help="skip bare Unicorn on the wheel's library (the slowest)")
    p.add_argument("--no-programs", dest="programs", action="store_false",
                   help="skip the host's x86-64 programs (gzip, sort, sqlite3, lua, python3)")
    return run_and_report(p, argv, run_bench, render, width=200)


if __name__ == "__main__":
    raise SystemExit(main())
