"""`emsan triage [options] CRASHES [-- PROGRAM ARGS...]`

Re-runs every crashing input under emsan, groups the inputs by bug type and the top frames of
the access stack (the kernel's and syzkaller's dedup idea: one bug, however many inputs reach
it), prints one table (bug, location, inputs, smallest input) and writes SARIF 2.1.0 and JSON.

CRASHES is a directory of inputs: AFL++'s OUT/default/crashes, the OUT of `emsan fuzz` (every
instance's crashes/ under it), or any directory of files. Without PROGRAM, the program, its
arguments, how it takes its input and the run options come from the `emsan fuzz` that made the
directory (OUT/emsan-fuzz.json). Exit status: 99 when some input reproduced a bug, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from emsan.cli.fuzz import CONFIG     # emsan-fuzz.json, written by `emsan fuzz` into its OUT directory
from emsan.cli.jobs import RunJob, internal_errors, run_jobs
from emsan.cli.jobs import console as make_console
from emsan.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_REPORT, EmsanError
from emsan.report import sarif
SIDECARS = (".emsan.txt", ".emsan.json")   # reports `emsan fuzz` saves next to a crashing input
OWN = {"--jobs": True, "--scheduler": True, "--json": True, "--sarif": True, "--frames": True,
       "--input": True, "--quiet": False}


def add_parser(sub, add_run_options, add_scheduler_option) -> None:
    p = sub.add_parser("triage", help="re-run crashing inputs, group them into distinct bugs (table, SARIF, JSON)",
                       description="Re-run every input in CRASHES under emsan and group them by bug type and "
                                   "the top frames of the access stack.")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="J",
                   help="runs at a time on this machine (default: the number of CPUs)")
    add_scheduler_option(p)
    p.add_argument("--frames", type=int, default=3, metavar="N",
                   help="frames of the access stack, from the one the title names, that tell bugs apart (default 3)")
    p.add_argument("--input", choices=("stdin", "file", "arg"),
                   help="how PROGRAM takes an input (default: file when an argument holds @@, else stdin)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_run_options(p)
    for a in p._actions:
        if a.dest == "json_path":
            a.help = "write the groups as JSON to FILE (default: triage.json beside CRASHES)"
        elif a.dest == "sarif_path":
            a.help = "write a SARIF 2.1.0 log, one result per bug, to FILE (default: triage.sarif beside CRASHES)"
    p.add_argument("crashes", help="a directory of crashing inputs (AFL++'s crashes/ or emsan fuzz's OUT)")
    p.add_argument("program", nargs="?", help="the program (default: the one `emsan fuzz` ran)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, @@ standing for the input")


def crash_inputs(path: str) -> list[str]:
    """Every input in a crash directory, or in every crashes/ below an AFL++ output directory."""
    if not os.path.isdir(path):
        raise EmsanError(f"{path}: not a directory")
    dirs = [path]
    if os.path.basename(os.path.normpath(path)) != "crashes":
        below = sorted(os.path.join(r, "crashes") for r, ds, _ in os.walk(path) if "crashes" in ds)
        dirs = below or [path]
    out = []
    for d in dirs:
        for name in sorted(os.listdir(d)):
            full = os.path.join(d, name)
            if (name.startswith(".") or name == "README.txt" or name.endswith(SIDECARS)
                    or not os.path.isfile(full)):
                continue
            out.append(full)
    return out


def find_config(path: str) -> str | None:
    """The `emsan fuzz` configuration of the output directory CRASHES is in or under."""
    d = os.path.abspath(path)
    for _ in range(4):
        cfg = os.path.join(d, CONFIG)
        if os.path.isfile(cfg):
            return cfg
        d = os.path.dirname(d)
    return None


def forwarded_options(argv: list[str], ns: argparse.Namespace) -> list[str]:
    """The run options given to `triage`, as `emsan run` takes them."""
    from emsan.cli.main import run_option_tokens
    tail = len(ns.args) + (1 if ns.program else 0)
    head = argv[:len(argv) - tail] if tail else list(argv)
    return run_option_tokens(head, "triage", OWN, {ns.crashes, *([ns.program] if ns.program else [])})


def target(argv: list[str], ns: argparse.Namespace) -> tuple[list[str], str, list[str], str, dict | None]:
    """(run options, program, args, input mode, fuzz config) from the command line, or from the
    `emsan fuzz` that made CRASHES (whose inputs then run as they ran under AFL++)."""
    if ns.program:
        program = os.path.abspath(ns.program) if "/" in ns.program else ns.program
        mode = ns.input or ("file" if any("@@" in a for a in ns.args) else "stdin")
        return forwarded_options(argv, ns), program, list(ns.args), mode, None
    path = find_config(ns.crashes)
    if path is None:
        raise EmsanError(f"{ns.crashes}: no {CONFIG} above it (not made by emsan fuzz): give -- PROGRAM ARGS")
    with open(path) as f:
        cfg = json.load(f)
    return forwarded_options(argv, ns), cfg["program"], list(cfg["args"]), cfg["input"], cfg


def first_bug(res: dict) -> dict | None:
    """What an input did: its first report (the one that stopped the run), else the fatal signal."""
    if res["reports"]:
        return res["reports"][0]
    return res.get("crash")


def group(inputs: list[str], results: dict[int, dict], depth: int) -> tuple[list[dict], list[dict]]:
    """Inputs grouped by bug key; and the inputs that reproduced nothing."""
    groups: dict[tuple, dict] = {}
    quiet: list[dict] = []
    for i, path in enumerate(inputs):
        res = results[i]
        rep = first_bug(res)
        size = os.path.getsize(path)
        if rep is None:
            quiet.append({"input": path, "size": size, "status": res["status"]})
            continue
        key = sarif.bug_key(rep, depth)
        g = groups.setdefault(key, {"key": list(key), "bug_type": rep.get("bug_type"), "inputs": [],
                                    "smallest": None, "report": None, "text": None})
        g["inputs"].append({"input": path, "size": size, "status": res["status"], "runner": res["runner"]})
        if g["smallest"] is None or (size, path) < (g["smallest"]["size"], g["smallest"]["input"]):
            g["smallest"] = {"input": path, "size": size}
            g["report"] = rep
            g["text"] = res["texts"][0] if res["texts"] else None
    out = sorted(groups.values(), key=lambda g: (-len(g["inputs"]), g["bug_type"] or "", g["key"]))
    for g in out:
        stack = g["report"].get("stack") or []
        g["location"] = sarif.frame_text(stack[sarif.title_index(g["report"])]) if stack else g["report"].get("pc")
    return out, quiet


def run_triage(argv: list[str], ns: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    if ns.jobs < 1 or ns.frames < 1:
        raise EmsanError("--jobs and --frames must be at least 1", EXIT_BAD_INPUT)
    opts, program, args, mode, fuzz_cfg = target(argv, ns)
    inputs = crash_inputs(ns.crashes)
    if not inputs:
        raise EmsanError(f"{ns.crashes}: no inputs to triage")
    if "/" in program and not os.path.exists(program):
        raise EmsanError(f"{program}: no such file")
    run_timeout = 2 * ns.timeout + 30 if ns.timeout else 600
    jobs = []
    for path in inputs:
        with open(path, "rb") as f:
            jobs.append(RunJob(opts, program, args, f.read(), mode, run_timeout, os.path.basename(path), fuzz_cfg))
    if fuzz_cfg is not None:                # what the inputs ran with: the campaign's options, then these
        opts = [*fuzz_cfg["run_options"], *opts]

    console = make_console()
    results: dict[int, dict] = {}
    t0 = time.monotonic()
    with Progress(TextColumn("[bold]triage[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[bugs]} reproduced"), TimeElapsedColumn(),
                  console=console, disable=ns.quiet) as progress:
        task = progress.add_task(os.path.basename(program), total=len(jobs), bugs=0)
        reproduced = 0

        def done(i: int, res: dict) -> None:
            nonlocal reproduced
            results[i] = res
            reproduced += first_bug(res) is not None
            progress.update(task, advance=1, bugs=reproduced)
        run_jobs(jobs, ns.jobs, ns.scheduler, done)
    wall = time.monotonic() - t0
    groups, quiet = group(inputs, results, ns.frames)

    table = Table(title=f"emsan triage: {len(inputs)} inputs of {os.path.basename(program)} "
                        f"({' '.join(opts) or 'default options'}): {len(groups)} distinct bug{'' if len(groups) == 1 else 's'}")
    table.add_column("#", justify="right")
    table.add_column("bug")
    table.add_column("location")
    table.add_column("inputs", justify="right")
    table.add_column("smallest input")
    for n, g in enumerate(groups, 1):
        table.add_row(str(n), g["bug_type"], g["location"], str(len(g["inputs"])),
                      f"{os.path.basename(g['smallest']['input'])} ({g['smallest']['size']} B)")
    if quiet:
        table.add_row("-", "(not reproduced)", "", str(len(quiet)), "")
    console.print(table)
    console.print(f"{len(inputs) - len(quiet)} of {len(inputs)} inputs reproduced; {wall:.1f} s wall")
    failed = internal_errors(list(results.values()))
    if failed:
        print(failed, file=sys.stderr)

    cfg = find_config(ns.crashes)           # emsan fuzz's OUT, else beside the crash directory
    base = os.path.dirname(cfg) if cfg else os.path.dirname(os.path.abspath(ns.crashes.rstrip("/")))
    json_path = ns.json_path or os.path.join(base, "triage.json")
    sarif_path = ns.sarif_path or os.path.join(base, "triage.sarif")
    command = " ".join([program, *args])
    summary = {"tool": "emsan", "command": "triage", "crashes": os.path.abspath(ns.crashes), "program": program,
               "args": args, "input": mode, "options": opts, "frames": ns.frames, "inputs": len(inputs),
               "persistent": fuzz_cfg.get("persistent") if fuzz_cfg else None,
               "wall_s": wall, "bugs": groups, "not_reproduced": quiet}
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
    results_sarif = [sarif.result(g["report"], ns.frames, {
        "inputs": len(g["inputs"]), "smallestInput": g["smallest"]["input"],
        "smallestInputSize": g["smallest"]["size"]}) for g in groups]
    with open(sarif_path, "w") as f:
        json.dump(sarif.log(results_sarif, [g["report"] for g in groups], command, [program]), f, indent=2)
    console.print(f"wrote {json_path} and {sarif_path}", markup=False)
    return EXIT_INTERNAL if failed else EXIT_REPORT if groups else 0
