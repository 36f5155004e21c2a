#!/usr/bin/env python3
"""Timer benchmark: what delivering timer signals to a guest that computes costs, and what the
machinery costs when no timer is armed.

    python3 bench/timers.py [--baseline-python PY] [--arch x86_64|arm64|all] [--reps N] [--scale F]
                            [--json FILE]

bench/workloads/ticking.c is the compute workload with an optional ITIMER_REAL whose handler only
counts. Configurations, all `emsan run --mode none`, whole-process wall time, interleaved:

  plain        no timer, no --timeout                      (the reference)
  timeout      --timeout 3600: the waker thread is armed but never fires
  tick-10ms    a 10 ms interval timer: the engine is stopped and a handler runs 100 times a second
  tick-1ms     a 1 ms interval timer (emsan's timer resolution)
  tick-1us     a 1 us interval timer: clamped to 1 ms, and each handler's return gives the
               program a tick of its own

With --baseline-python (a venv holding main), `plain` and `timeout` also run with that emsan:
there --timeout is Unicorn's emu_start timeout, whose thread wakes every few microseconds, and
the interval timer is never delivered while the guest computes. Ratios are of CPU time (the process's
and its threads', from wait4: far steadier than wall time on a loaded machine), medians (min–max) of
per-repetition ratios to `plain` of the same emsan. Nothing here asserts on speed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ARCHES, BENCH, PY, BenchError, build, fmt_ratio, host_meta, now, paired_ratio, rotate,  # noqa: E402
                    run_and_report, summary)

DEFAULT_JSON = BENCH / "results" / "timers.json"
ITERATIONS = {"x86_64": 40_000, "arm64": 80_000}      # ~3-4 s of emulation on this machine
CONFIGS = {                                             # name -> (timer interval in us, emsan options)
    "plain": (0, []),
    "timeout": (0, ["--timeout", "3600"]),
    "tick-10ms": (10_000, []),
    "tick-1ms": (1_000, []),
    "tick-1us": (1, []),
}
BASELINE_CONFIGS = ("plain", "timeout")


def one(py: str, exe: Path, iters: int, usec: int, options: list[str], cwd: str) -> tuple[float, float, str]:
    """One run: (wall seconds, CPU seconds of the process and its threads, the guest's tick count).
    CPU time is what the ratios use: on a loaded machine it is far steadier than wall time."""
    cmd = [py, "-m", "emsan", "run", "--mode", "none", *options, str(exe), str(iters), str(usec)]
    t0 = now()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    err = p.stderr.read()
    _pid, status, usage = os.wait4(p.pid, 0)
    wall = now() - t0
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise BenchError(f"{' '.join(cmd)}: exit {os.waitstatus_to_exitcode(status)}\n"
                         f"{err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, err.decode().strip()


def bench(args) -> dict:
    arches = ARCHES if args.arch == "all" else (args.arch,)
    runs = []
    for arch in arches:
        exe = build("ticking", arch)
        iters = max(1, int(ITERATIONS[arch] * args.scale))
        for name, (usec, options) in CONFIGS.items():
            runs.append((arch, "this", name, PY, exe, iters, usec, options))
            if args.baseline_python and name in BASELINE_CONFIGS:
                runs.append((arch, "baseline", name, args.baseline_python, exe, iters, usec, options))
    walls: dict[tuple, list[float]] = {}
    cpus: dict[tuple, list[float]] = {}
    ticks: dict[tuple, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for arch, who, name, py, exe, iters, usec, options in rotate(runs, rep):
                wall, cpu, err = one(py, exe, iters, usec, options, tmp)
                walls.setdefault((arch, who, name), []).append(wall)
                cpus.setdefault((arch, who, name), []).append(cpu)
                ticks[(arch, who, name)] = err
                print(f"  rep {rep + 1} {arch:6} {who:8} {name:9} wall {wall:6.2f} s cpu {cpu:6.2f} s  {err}",
                      flush=True)
    res: dict = {"meta": {**host_meta(), "reps": args.reps, "scale": args.scale,
                          "baseline_python": args.baseline_python, "loadavg_after": list(os.getloadavg())},
                 "results": {}}
    for arch, who, name in walls:
        ref = cpus[(arch, who, "plain")]
        res["results"][f"{arch} {who} {name}"] = {"wall": summary(walls[(arch, who, name)]),
                                                   "cpu": summary(cpus[(arch, who, name)]),
                                                   "ratio_to_plain": paired_ratio(cpus[(arch, who, name)], ref),
                                                   "guest": ticks[(arch, who, name)]}
    for arch in arches:
        if args.baseline_python:
            for name in BASELINE_CONFIGS:
                res["results"][f"{arch} this/baseline {name}"] = {
                    "ratio": paired_ratio(cpus[(arch, "this", name)], cpus[(arch, "baseline", name)])}
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline-python", help="another interpreter whose emsan to compare with (e.g. main's venv)")
    p.add_argument("--arch", choices=("x86_64", "arm64", "all"), default="all")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return run_and_report(p, argv, lambda args, say: bench(args), render, 160)


def render(res: dict, console) -> None:
    for name, r in res["results"].items():
        if "ratio_to_plain" in r:
            console.print(f"{name:28} cpu {r['cpu']['median']:6.2f} s  wall {r['wall']['median']:6.2f} s   cpu x plain "
                          f"{fmt_ratio(r['ratio_to_plain'])}   {r['guest']}")
        else:
            console.print(f"{name:28} {fmt_ratio(r['ratio'])}")
    console.print(f"load average after: {res['meta']['loadavg_after']}")

if __name__ == "__main__":
    sys.exit(main())
