#!/usr/bin/env python3
"""Tag-based modes benchmark (arm64): miss rates, cost against plain emulation, and the
many-tags-per-page TLB effect.

    python3 bench/tags.py [--seeds N] [--trials N] [--reps N] [--scale F] [--json FILE]

(a) Miss rate: bench/workloads/adjacent.c reads one byte past a 64-byte object into the
    adjacent object, TRIALS times per run, over SEEDS runs (--seed 1..N) in each tag mode;
    every tag mismatch is counted natively (the `errors` statistic, before reports are
    de-duplicated). The measured miss rate is printed beside the theory: 1/254 for sw-tags'
    8-bit tags (0x00-0xFD), 1/14 for hw-tags' 4-bit ones (0xF0-0xFD).
(b) Cost: the arm64 workloads (compute, alloc, strings) under --mode none (plain), generic,
    sw-tags and hw-tags (their default checks through the TLB and an MMIO view, and with
    --checks hook: "sw-tags/hook"), interleaved in one run, whole-process wall and CPU time;
    medians of paired ratios against plain. Target: each tag mode <= 1.5x plain.
(c) TLB effect: bench/workloads/tagpage.c reads 256 differently tagged 48-byte objects (64 per
    page), object by object ("blocked") or round-robin ("interleaved": every access through
    another tag of the same page). The interleaved/blocked ratio of a tag mode divided by the
    same ratio under plain emulation isolates what tags in translated addresses cost.

Figures go to stdout and JSON (default bench/results/tags.json); nothing asserts on speed.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, WORKLOADS, BenchError, Runner, build, paired_ratio, rotate, summary  # noqa: E402

DEFAULT_JSON = BENCH / "results" / "tags.json"
MODES = ("none", "generic", "sw-tags", "hw-tags")
# (b) also runs the tag modes with the memory hook (--checks hook), the other way they check
COST_MODES = MODES + ("sw-tags/hook", "hw-tags/hook")
TAG_MODES = ("sw-tags", "hw-tags")
THEORY = {"sw-tags": 1 / 254, "hw-tags": 1 / 14}
TARGET = 1.5
TAGPAGE_ROUNDS = 20_000


def miss_rates(runner: Runner, seeds: int, trials: int, out) -> dict:
    exe = build("adjacent", "arm64")
    res = {}
    for mode in TAG_MODES:
        adjacent = caught = 0
        for seed in range(1, seeds + 1):
            _, stdout = runner.command([sys.executable, "-m", "emsan", "run", "--mode", mode, "--seed", str(seed),
                                        "--continue", "--error-exitcode", "0", "--stats", str(exe), str(trials)],
                                       f"adjacent {mode}")
            adjacent += int(stdout.split()[0])
            m = re.search(rb"\berrors=(\d+)", runner.last_stderr)
            if m is None:
                raise BenchError("no errors= statistic in the stats line")
            caught += int(m.group(1))
        missed = adjacent - caught
        rate = missed / adjacent if adjacent else float("nan")
        res[mode] = {"seeds": seeds, "trials": adjacent, "caught": caught, "missed": missed,
                     "miss_rate": rate, "theory": THEORY[mode]}
        out(f"  {mode:8} {adjacent:7} OOB reads into the adjacent object over {seeds} seeds: {missed} missed, "
            f"miss rate {rate:.5f} = 1/{1 / rate if rate else float('inf'):.1f} (theory 1/{1 / THEORY[mode]:.0f} "
            f"= {THEORY[mode]:.5f})")
    return res


def run_mode(runner: Runner, mode: str, exe, args: list[str]) -> tuple[float, bytes]:
    """One whole-process run; MODE/hook is MODE with --checks hook."""
    if mode.endswith("/hook"):
        return runner.command([sys.executable, "-m", "emsan", "run", "--mode", mode[:-5], "--checks", "hook",
                               str(exe), *args], f"emsan --mode {mode} {exe.name}")
    return runner.emsan(mode, exe, args)


def workload_costs(runner: Runner, reps: int, scale: float, out) -> dict:
    res = {}
    for name, iters in WORKLOADS.items():
        exe = build(name, "arm64")
        args = [str(max(1, int(iters["arm64"] * scale)))]
        walls: dict[str, list[float]] = {m: [] for m in COST_MODES}
        cpus: dict[str, list[float]] = {m: [] for m in COST_MODES}
        ref = None
        for rep in range(reps):
            for mode in rotate(COST_MODES, rep):
                wall, stdout = run_mode(runner, mode, exe, args)
                if ref is None:
                    ref = stdout
                elif stdout != ref:
                    raise BenchError(f"{name}: --mode {mode} changed the output")
                walls[mode].append(wall)
                cpus[mode].append(runner.last_cpu)
        row = {m: summary(walls[m]) for m in COST_MODES}
        row["cpu_s"] = {m: summary(cpus[m]) for m in COST_MODES}
        row["ratio"] = {m: paired_ratio(walls[m], walls["none"]) for m in COST_MODES if m != "none"}
        row["cpu_ratio"] = {m: paired_ratio(cpus[m], cpus["none"]) for m in COST_MODES if m != "none"}
        res[name] = row
        out(f"  {name:8} plain {row['none']['median']:.2f} s | " + " | ".join(
            f"{m} {row['ratio'][m]['median']:.2f}x" for m in COST_MODES[1:])
            + f"\n  {'':8} CPU: plain {row['cpu_s']['none']['median']:.2f} s | " + " | ".join(
            f"{m} {row['cpu_ratio'][m]['median']:.2f}x" for m in COST_MODES[1:]))
    return res


def tlb_effect(runner: Runner, reps: int, scale: float, out) -> dict:
    exe = build("tagpage", "arm64")
    rounds = str(max(1, int(TAGPAGE_ROUNDS * scale)))
    walls = {(m, o): [] for m in MODES for o in ("blocked", "interleaved")}
    for rep in range(reps):
        for mode in rotate(MODES, rep):
            for order in ("blocked", "interleaved"):
                wall, _ = runner.emsan(mode, exe, [order, rounds])
                walls[(mode, order)].append(wall)
    res = {}
    base = paired_ratio(walls[("none", "interleaved")], walls[("none", "blocked")])["median"]
    for mode in MODES:
        r = paired_ratio(walls[(mode, "interleaved")], walls[(mode, "blocked")])
        res[mode] = {"blocked_s": summary(walls[(mode, "blocked")]),
                     "interleaved_s": summary(walls[(mode, "interleaved")]),
                     "interleaved_over_blocked": r, "tag_effect": r["median"] / base}
        out(f"  {mode:8} blocked {res[mode]['blocked_s']['median']:.2f} s, interleaved "
            f"{res[mode]['interleaved_s']['median']:.2f} s: x{r['median']:.3f} "
            f"(against plain's x{base:.3f}: {res[mode]['tag_effect']:.3f})")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20, help="runs per tag mode for the miss rate (default 20)")
    p.add_argument("--trials", type=int, default=2000, help="OOB reads per run (default 2000)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions for (b) and (c) (default 5)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every iteration count")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: miss,cost,tlb")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    res: dict = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runner = Runner(tmp)
            if "miss" not in skip:
                print("(a) miss rate of an out-of-bounds read into the adjacent object")
                res["miss_rate"] = miss_rates(runner, args.seeds, args.trials, print)
            if "cost" not in skip:
                print(f"(b) arm64 workloads, whole-process wall and CPU time, median of {args.reps} paired ratios "
                      f"against --mode none (target: tag modes <= {TARGET}x)")
                res["workloads"] = workload_costs(runner, args.reps, args.scale, print)
            if "tlb" not in skip:
                print("(c) many tags per page: 256 tagged objects read blocked vs interleaved")
                res["tlb"] = tlb_effect(runner, args.reps, args.scale, print)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
