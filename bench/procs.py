#!/usr/bin/env python3
"""Processes benchmark: the cost of one fork+wait and of one fork+exec+wait cycle of a guest.

    python3 bench/procs.py [--arch x86_64|arm64|all] [--reps N] [--cycles N] [--json FILE]

bench/workloads/forkexec.c runs N cycles of fork + waitpid (the child _exits), or of fork + execv
of itself (which exits at once) + waitpid. Each configuration runs with N cycles and with 0 (its
start-up), interleaved, in rotating order; the cost of one cycle is (cpu(N) - cpu(0)) / N of the
same repetition, CPU seconds (user + system) of the whole process tree from wait4 (far steadier
than wall time on a loaded machine; every process of the tree is waited for, so all of it is
counted), and ratios are per-repetition ratios of those costs (median, min-max). Wall time per
cycle is recorded too.

Peers: native (x86-64) and qemu-user. qemu-user has no way to follow an exec: the host kernel runs
the new image, natively for x86-64 (so qemu's exec cycle is a native child) and not at all for an
arm64 image on an x86-64 host without binfmt_misc (so arm64's exec cycle has no qemu figure).
Valgrind's --trace-children=yes is the peer that follows execs as emsan does (x86-64 only).
Nothing here asserts on speed.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ARCHES, BENCH, PY, BenchError, Runner, build, host_meta, rotate,  # noqa: E402
                    run_and_report, standard_parser)

DEFAULT_JSON = BENCH / "results" / "procs.json"
ARM64_SYSROOT = "/usr/aarch64-linux-gnu"


def configs(arch: str, exe: Path) -> dict[str, dict[str, list[str]]]:
    """cycle kind -> configuration name -> command prefix (the workload's arguments follow)."""
    emsan = {f"emsan-{m}": [PY, "-m", "emsan", "run", "--mode", m, str(exe)] for m in ("none", "generic", "kfence")}
    if arch == "x86_64":
        peers = {"native": [str(exe)], "qemu-user": ["qemu-x86_64", str(exe)]}
        if shutil.which("valgrind"):
            peers["valgrind"] = ["valgrind", "-q", "--error-exitcode=0", "--trace-children=yes", str(exe)]
        return {"fork": {**peers, **emsan}, "exec": {**peers, **emsan}}
    qemu = {"qemu-user": ["qemu-aarch64", "-L", ARM64_SYSROOT, str(exe)]}
    return {"fork": {**qemu, **emsan}, "exec": emsan}


def run_bench(args, say) -> dict:
    from datetime import datetime, timezone
    started, load0 = datetime.now(timezone.utc), os.getloadavg()
    arches = ARCHES if args.arch == "all" else (args.arch,)
    reps = args.reps or (3 if args.quick else 5)
    cycles = max(1, int(args.cycles * args.scale))
    out: dict = {"cycles": cycles, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        run = Runner(tmp)
        for arch in arches:
            exe = build("forkexec", arch)
            for kind, cfgs in configs(arch, exe).items():
                per: dict[str, list[float]] = {name: [] for name in cfgs}
                per_wall: dict[str, list[float]] = {name: [] for name in cfgs}
                for rep in range(reps):
                    for name in rotate(list(cfgs), rep):
                        walls, cpus = {}, {}
                        for n in rotate([0, cycles], rep):
                            wall, stdout = run.command([*cfgs[name], kind, str(n)], f"{arch} {kind} {name}")
                            if stdout.strip() != str(n).encode():
                                raise BenchError(f"{arch} {kind} {name}: {n} cycles printed {stdout!r}")
                            walls[n], cpus[n] = wall, run.last_cpu
                        per[name].append((cpus[cycles] - cpus[0]) / cycles)
                        per_wall[name].append((walls[cycles] - walls[0]) / cycles)
                    say(f"{arch} {kind} rep {rep + 1}/{reps}: " +
                        ", ".join(f"{k} {v[-1] * 1000:.2f} ms CPU" for k, v in per.items()))
                ref = "qemu-user" if "qemu-user" in per else None
                res = {name: {"cpu_ms_per_cycle": statistics.median(v) * 1000, "cpu_values_ms": [x * 1000 for x in v],
                              "wall_ms_per_cycle": statistics.median(per_wall[name]) * 1000}
                       for name, v in per.items()}
                if ref:
                    for name, v in per.items():
                        ratios = [a / b for a, b in zip(v, per[ref])]
                        res[name]["vs_qemu_user"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                     "max": max(ratios)}
                out["results"][f"{arch}/{kind}"] = res
    out["meta"] = {"started": started.isoformat(timespec="seconds"), "reps": reps, **host_meta(),
                   "loadavg_before": [round(x, 2) for x in load0],
                   "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    return out


def render(res: dict, console) -> None:
    from rich.table import Table
    t = Table(title=f"one guest cycle (median of {res['meta']['reps']}), {res['cycles']} cycles per run, "
                    f"load {res['meta']['loadavg_before'][0]}")
    t.add_column("arch/cycle")
    t.add_column("configuration")
    t.add_column("CPU ms per cycle", justify="right")
    t.add_column("wall ms", justify="right")
    t.add_column("vs qemu-user", justify="right")
    for key, per in res["results"].items():
        for name, r in per.items():
            q = r.get("vs_qemu_user")
            t.add_row(key, name, f"{r['cpu_ms_per_cycle']:.2f}", f"{r['wall_ms_per_cycle']:.1f}",
                      f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f})" if q else "-")
    console.print(t)


def main(argv=None) -> int:
    p = standard_parser(__doc__.splitlines()[0], DEFAULT_JSON, ["forkexec"])
    p.add_argument("--cycles", type=int, default=40, help="cycles per measured run (default 40)")
    return run_and_report(p, argv, run_bench, render, 110)


if __name__ == "__main__":
    sys.exit(main())
