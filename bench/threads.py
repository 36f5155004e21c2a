#!/usr/bin/env python3
"""Threads benchmark: the cost of one guest context switch, and of the scheduler's time slice.

    python3 bench/threads.py [--arch x86_64|arm64|all] [--reps N] [--rounds N] [--json FILE]

bench/workloads/threads.c `pingpong N`: two threads hand a turn back and forth through two
semaphores, 2N blocking futex waits, each a switch to the other thread. Each configuration runs
with N rounds and with 0 (its start-up), interleaved in rotating order; the cost of one switch is
(cpu(N) - cpu(0)) / 2N of the same repetition, CPU seconds (user + system, all host threads) from
wait4, and ratios are per-repetition ratios of those costs (median, min-max). Peers: native
(x86-64) and qemu-user, where guest threads are host threads and a switch is the host kernel's.

`compute N thread|alone`: the same arithmetic after making and joining one thread or without: the
ratio of the two whole runs is what having had a thread costs a computing guest (paired per
repetition, rotating order). emsan's slice block hook (native/sched.c) counts blocks while the
thread lives and is removed once the main thread has run one slice alone.
Nothing here asserts on speed.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ARCHES, BENCH, PY, BenchError, Runner, build, host_meta, rotate,  # noqa: E402
                    run_and_report, standard_parser)

DEFAULT_JSON = BENCH / "results" / "threads.json"
ARM64_SYSROOT = "/usr/aarch64-linux-gnu"
COMPUTE_ROUNDS = {"x86_64": 30_000, "arm64": 30_000}


def configs(arch: str, exe: Path) -> dict[str, list[str]]:
    emsan = {f"emsan-{m}": [PY, "-m", "emsan", "run", "--mode", m, str(exe)] for m in ("none", "generic", "kfence")}
    if arch == "x86_64":
        return {"native": [str(exe)], "qemu-user": ["qemu-x86_64", str(exe)], **emsan}
    return {"qemu-user": ["qemu-aarch64", "-L", ARM64_SYSROOT, str(exe)], **emsan}


def _check(stdout: bytes, n: int, what: str) -> None:
    if stdout.strip() != str(n).encode():
        raise BenchError(f"{what}: printed {stdout!r}, expected {n}")


def switches(run: Runner, arch: str, exe: Path, reps: int, rounds: int, say) -> dict:
    cfgs = configs(arch, exe)
    per: dict[str, list[float]] = {name: [] for name in cfgs}
    for rep in range(reps):
        for name in rotate(list(cfgs), rep):
            cpus = {}
            for n in rotate([0, rounds], rep):
                _, stdout = run.command([*cfgs[name], "pingpong", str(n)], f"{arch} pingpong {name}")
                _check(stdout, n, f"{arch} pingpong {name}")
                cpus[n] = run.last_cpu
            per[name].append((cpus[rounds] - cpus[0]) / (2 * rounds))
        say(f"{arch} switch rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1] * 1e6:.1f} us" for k, v in per.items()))
    res = {name: {"cpu_us_per_switch": statistics.median(v) * 1e6, "cpu_values_us": [x * 1e6 for x in v]}
           for name, v in per.items()}
    for name, v in per.items():
        ratios = [a / b for a, b in zip(v, per["qemu-user"]) if b > 0]
        if ratios:
            res[name]["vs_qemu_user"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return res


def slice_hook(run: Runner, arch: str, exe: Path, reps: int, scale: float, say) -> dict:
    rounds = max(1, int(COMPUTE_ROUNDS[arch] * scale))
    cmd = [PY, "-m", "emsan", "run", "--mode", "none", str(exe), "compute", str(rounds)]
    cpu: dict[str, list[float]] = {"thread": [], "alone": []}
    for rep in range(reps):
        for kind in rotate(["thread", "alone"], rep):
            _, stdout = run.command([*cmd, kind], f"{arch} compute {kind}")
            _check(stdout, rounds, f"{arch} compute {kind}")
            cpu[kind].append(run.last_cpu)
        say(f"{arch} slice hook rep {rep + 1}/{reps}: thread {cpu['thread'][-1]:.2f} s, alone {cpu['alone'][-1]:.2f} s")
    ratios = [a / b for a, b in zip(cpu["thread"], cpu["alone"])]
    return {"rounds": rounds, "cpu_s_thread": statistics.median(cpu["thread"]),
            "cpu_s_alone": statistics.median(cpu["alone"]),
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}


def run_bench(args, say) -> dict:
    from datetime import datetime, timezone
    started, load0 = datetime.now(timezone.utc), os.getloadavg()
    arches = ARCHES if args.arch == "all" else (args.arch,)
    reps = args.reps or (3 if args.quick else 5)
    rounds = max(1, int(args.rounds * args.scale))
    out: dict = {"rounds": rounds, "switch": {}, "slice_hook": {}}
    with tempfile.TemporaryDirectory() as tmp:
        run = Runner(tmp)
        for arch in arches:
            exe = build("threads", arch)
            out["switch"][arch] = switches(run, arch, exe, reps, rounds, say)
            out["slice_hook"][arch] = slice_hook(run, arch, exe, reps, args.scale, say)
    out["meta"] = {"started": started.isoformat(timespec="seconds"), "reps": reps, **host_meta(),
                   "loadavg_before": [round(x, 2) for x in load0],
                   "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    return out


def render(res: dict, console) -> None:
    from rich.table import Table
    t = Table(title=f"one guest context switch (median of {res['meta']['reps']}), {res['rounds']} round trips "
                    f"per run, load {res['meta']['loadavg_before'][0]}")
    for col in ("arch", "configuration", "CPU us per switch", "vs qemu-user"):
        t.add_column(col, justify="right" if col != "configuration" else "left")
    for arch, per in res["switch"].items():
        for name, r in per.items():
            q = r.get("vs_qemu_user")
            t.add_row(arch, name, f"{r['cpu_us_per_switch']:.1f}",
                      f"{q['median']:.1f} ({q['min']:.1f}-{q['max']:.1f})" if q else "-")
    console.print(t)
    h = Table(title="the time-slice block hook on a computing guest (emsan --mode none, CPU s)")
    for col in ("arch", "with a thread", "alone", "ratio"):
        h.add_column(col, justify="right")
    for arch, r in res["slice_hook"].items():
        q = r["ratio"]
        h.add_row(arch, f"{r['cpu_s_thread']:.2f}", f"{r['cpu_s_alone']:.2f}",
                  f"{q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f})")
    console.print(h)


def main(argv=None) -> int:
    p = standard_parser(__doc__.splitlines()[0], DEFAULT_JSON, ["threads"])
    p.add_argument("--rounds", type=int, default=5000, help="ping-pong round trips per measured run (default 5000)")
    return run_and_report(p, argv, run_bench, render, 110)


if __name__ == "__main__":
    sys.exit(main())
