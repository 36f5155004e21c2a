"""`emsan fleet --runs N --jobs J [run options] -- PROGRAM ARGS...`

The same program run N times in parallel, each run with its own --seed (so a sampling mode
picks different allocations each time), then a table of each distinct bug and how many runs
caught it: KFENCE's "enough total uptime across a fleet" measured on one machine.

Each run is a separate `emsan run` process writing its reports as JSON; the guest's own output
is discarded. The runs go to a thread pool here or, with --scheduler, to a Dask cluster
(emsan.cli.jobs). Exit status: 99 when some run reported a bug, 0 when none did.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from emsan.cli.jobs import RunJob, internal_errors, run_jobs
from emsan.cli.jobs import console as make_console
from emsan.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_REPORT, EmsanError

# Options of `fleet` itself, never forwarded to the runs: name -> takes a value
OWN = {"--runs": True, "--jobs": True, "--seed": True, "--json": True, "--quiet": False, "--scheduler": True}


def add_scheduler_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the jobs on this Dask cluster (dask.distributed, e.g. tcp://host:8786) instead of "
                        "on this machine; the program must be at the same path on every worker")


def add_parser(sub, add_run_options) -> None:
    p = sub.add_parser("fleet", help="run a program N times with different seeds and tally the bugs found",
                       description="Run PROGRAM N times in parallel, each with its own --seed, and "
                                   "show each distinct bug and how many runs caught it.")
    p.add_argument("--runs", type=int, default=100, metavar="N", help="number of runs (default 100)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J",
                   help="runs at a time (default: the number of CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_scheduler_option(p)
    add_run_options(p)
    p.set_defaults(mode="kfence")
    for a in p._actions:                  # in a fleet --seed is the first run's and --json the summary's
        if a.dest == "seed":
            a.help = "seed of the first run; run i uses SEED+i (default 1)"
        elif a.dest == "json_path":
            a.help = "write the summary (bugs, counts, seeds) as JSON to FILE"
    p.add_argument("program", help="the ELF executable")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the program's arguments")


def forwarded_options(argv: list[str], ns: argparse.Namespace) -> list[str]:
    """The run options given to `fleet`, as `emsan run` takes them."""
    from emsan.cli.main import has_option, run_option_tokens
    out = run_option_tokens(argv[:len(argv) - 1 - len(ns.args)], "fleet", OWN)
    if not has_option(out, "--mode"):
        out = ["--mode", ns.mode, *out]
    return out


def bug_key(r: dict) -> tuple[str, str]:
    return (r.get("bug_type") or "?", r.get("function") or r.get("pc") or "?")


def run_fleet(argv: list[str], ns: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    if ns.runs < 1 or ns.jobs < 1:
        raise EmsanError("--runs and --jobs must be at least 1", EXIT_BAD_INPUT)
    if not os.path.exists(ns.program) and "/" in ns.program:
        raise EmsanError(f"{ns.program}: no such file", EXIT_BAD_INPUT)
    if "/" in ns.program:
        ns.program = os.path.abspath(ns.program)        # the same path on every worker
    base_seed = ns.seed if ns.seed is not None else 1
    fwd = forwarded_options(argv, ns)
    console = make_console()
    # A run that outlives twice its own --timeout is stuck in emsan itself: give up on it.
    run_timeout = 2 * ns.timeout + 30 if ns.timeout else None
    results: dict[int, dict] = {}
    t0 = time.monotonic()
    jobs = [RunJob([*fwd, "--seed", str(base_seed + i)], ns.program, ns.args, timeout=run_timeout)
            for i in range(ns.runs)]
    with Progress(TextColumn("[bold]fleet[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[bugs]} runs with bugs"), TimeElapsedColumn(),
                  console=console, disable=ns.quiet) as progress:
        task = progress.add_task(os.path.basename(ns.program), total=ns.runs, bugs=0)
        with_bugs = 0

        def done(i: int, res: dict) -> None:
            nonlocal with_bugs
            res["seed"] = base_seed + i
            results[i] = res
            with_bugs += bool(res["reports"])
            progress.update(task, advance=1, bugs=with_bugs)
        run_jobs(jobs, ns.jobs, ns.scheduler, done)
    wall = time.monotonic() - t0

    bugs: dict[tuple[str, str], dict] = {}
    for i in sorted(results):
        res = results[i]
        for key in dict.fromkeys(bug_key(r) for r in res["reports"]):
            b = bugs.setdefault(key, {"bug_type": key[0], "function": key[1], "runs": 0, "seeds": [],
                                      "example": next(r for r in res["reports"] if bug_key(r) == key)})
            b["runs"] += 1
            b["seeds"].append(res["seed"])
    statuses: dict[str, int] = {}
    for res in results.values():
        s = res["status"]
        label = ("clean" if s == 0 else "report" if s == ns.error_exitcode else "timeout" if s in (-1, 124)
                 else "internal error" if s == 70 else f"signal {s - 128}" if s > 128 else f"exit {s}")
        statuses[label] = statuses.get(label, 0) + 1

    table = Table(title=f"emsan fleet: {ns.runs} runs of {os.path.basename(ns.program)} "
                        f"({' '.join(fwd)}), seeds {base_seed}..{base_seed + ns.runs - 1}")
    table.add_column("bug")
    table.add_column("in")
    table.add_column("runs", justify="right")
    table.add_column("share", justify="right")
    table.add_column("first seeds")
    for b in sorted(bugs.values(), key=lambda b: (-b["runs"], b["bug_type"], b["function"])):
        table.add_row(b["bug_type"], b["function"], str(b["runs"]), f"{100 * b['runs'] / ns.runs:.1f}%",
                      " ".join(map(str, b["seeds"][:5])) + (" ..." if len(b["seeds"]) > 5 else ""))
    if not bugs:
        table.add_row("(no bug found)", "", "0", "0.0%", "")
    console.print(table)
    console.print("runs: " + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())) + f"; {wall:.1f} s wall")
    failed = internal_errors(list(results.values()))
    if failed:
        print(failed, file=sys.stderr)

    if ns.json_path:
        summary = {"tool": "emsan", "command": "fleet", "program": ns.program, "args": ns.args,
                   "options": fwd, "runs": ns.runs, "first_seed": base_seed, "wall_s": wall,
                   "statuses": statuses,
                   "bugs": [{k: v for k, v in b.items()} for b in sorted(bugs.values(), key=lambda b: -b["runs"])],
                   "per_run": [{"seed": results[i]["seed"], "status": results[i]["status"],
                                "bugs": [list(bug_key(r)) for r in results[i]["reports"]],
                                "seconds": round(results[i]["seconds"], 3), "runner": results[i]["runner"]}
                               for i in sorted(results)]}
        with open(ns.json_path, "w") as f:
            json.dump(summary, f, indent=2)
    return EXIT_INTERNAL if failed else EXIT_REPORT if bugs else 0
