"""Many `emsan run`s at once, for `emsan fleet` and `emsan triage`: on this machine (a pool of
threads, each waiting on its own `emsan run` process) or on a Dask cluster (`--scheduler
ADDRESS`, dask.distributed), with the same results either way.

A job carries everything a worker on another machine needs except the program itself, which must
exist at the same path there (and emsan must be installed): the run options, the argument
vector, and the input's bytes (written to the worker's own temporary directory).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import field
from typing import Callable

from emsan.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EmsanError
from emsan.lazyclass import dataclass

RULE = "=" * 66           # the line that opens and closes every text report


@dataclass
class RunJob:
    options: list[str]                  # `emsan run` options
    program: str
    args: list[str] = field(default_factory=list)
    input: bytes | None = None
    input_mode: str = "none"            # none / stdin / file (@@ = its path) / arg (@@ = its bytes)
    timeout: float | None = None        # give up on a run stuck in emsan itself
    name: str = ""                      # what the caller calls this job (an input's file name)
    # An `emsan fuzz` configuration (emsan-fuzz.json): the input then runs as it did under AFL++
    # (same fork point, same input placement, persistent function), `options` added to its own.
    fuzz_config: dict | None = None


def substitute(args: list[str], value: str) -> list[str]:
    """@@, as AFL++ spells it, replaced by the input file's path (or, with --input arg, its bytes)."""
    from emsan.session.fuzz import PLACEHOLDER
    return [a.replace(PLACEHOLDER, value) for a in args]


def report_texts(stderr: str) -> list[str]:
    """The text reports (RULE ... RULE blocks) among a run's stderr."""
    out, cur = [], None
    for line in stderr.splitlines():
        if line == RULE:
            if cur is None:
                cur = [line]
            else:
                cur.append(line)
                out.append("\n".join(cur))
                cur = None
        elif cur is not None:
            cur.append(line)
    return out


def fuzz_target_command(job: RunJob, tmp: str, json_path: str) -> list[str]:
    """The fuzz target (emsan.session.fuzz) run once on the job's input, without AFL++."""
    cfg = {**job.fuzz_config, "out": tmp, "run_options": [*job.fuzz_config["run_options"], *job.options]}
    cp, ip = os.path.join(tmp, "emsan-fuzz.json"), os.path.join(tmp, "input")
    with open(cp, "w") as f:
        json.dump(cfg, f)
    with open(ip, "wb") as f:
        f.write(job.input or b"")
    return [sys.executable, "-m", "emsan.session.fuzz", cp, ip, "--json", json_path]


def run_emsan(job: RunJob) -> dict:
    """Run one job with `python -m emsan run ... --json`; its status, reports and report text.
    Runs on whichever machine executes the job (a Dask worker imports this function)."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="emsan-job-") as tmp:
        jp = os.path.join(tmp, "reports.json")
        args, stdin = list(job.args), None
        if job.fuzz_config is not None:
            cmd = fuzz_target_command(job, tmp, jp)
        elif job.input is not None and job.input_mode in ("stdin", "file"):
            ip = os.path.join(tmp, "input")
            with open(ip, "wb") as f:
                f.write(job.input)
            if job.input_mode == "file":
                args = substitute(args, ip)
            else:
                stdin = open(ip, "rb")
        elif job.input is not None and job.input_mode == "arg":
            from emsan.session.fuzz import arg_value
            args = substitute(args, arg_value(job.input))
        if job.fuzz_config is None:
            cmd = [sys.executable, "-m", "emsan", "run", *job.options, "--json", jp, job.program, *args]
        try:
            p = subprocess.run(cmd, stdin=stdin or subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=job.timeout)
            status, err = p.returncode, p.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            status, err = -1, "emsan: job timed out"
        finally:
            if stdin is not None:
                stdin.close()
        doc: dict = {}
        try:
            with open(jp) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            pass
    tail = err.strip().splitlines()[-1] if err.strip() else None
    failed = status == EXIT_INTERNAL or "Traceback (most recent call last)" in err
    return {"status": status, "reports": doc.get("reports", []), "crash": doc.get("crash"),
            "texts": report_texts(err), "seconds": time.monotonic() - t0,
            "runner": f"{socket.gethostname()}:{os.getpid()}",          # which process ran it (a Dask worker's)
            "internal_error": (tail or f"exit status {status}") if failed else None}


def internal_errors(results: list[dict]) -> str | None:
    """The line saying that emsan failed inside itself in some runs (None if it never did): such
    a run's verdict means nothing, and the command exits with EXIT_INTERNAL."""
    failed = [r["internal_error"] for r in results if r["internal_error"]]
    if not failed:
        return None
    return f"emsan: internal error in {len(failed)} of {len(results)} runs; the first: {failed[0]}"


def console():
    """stderr, as wide as the terminal, or wide enough for the tables when it is a file or pipe."""
    from rich.console import Console
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def run_jobs(jobs: list[RunJob], workers: int, scheduler: str | None,
             done: Callable[[int, dict], None]) -> None:
    """Run every job, calling done(index, result) as each finishes (in the caller's thread)."""
    if scheduler:
        _run_on_dask(jobs, scheduler, done)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futs = {pool.submit(run_emsan, j): i for i, j in enumerate(jobs)}
        for fut in as_completed(futs):
            done(futs[fut], fut.result())


def _run_on_dask(jobs: list[RunJob], scheduler: str, done: Callable[[int, dict], None]) -> None:
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError:
        raise EmsanError("--scheduler needs dask.distributed (pip install distributed)", EXIT_BAD_INPUT) from None
    try:
        client = Client(scheduler, timeout="15s")
    except (OSError, TimeoutError) as e:
        raise EmsanError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e})", EXIT_BAD_INPUT) from None
    try:
        # pure=False: two runs of the same job (a fleet's) are two runs, not one cached result.
        futs = {client.submit(run_emsan, j, pure=False): i for i, j in enumerate(jobs)}
        for fut in dask_completed(list(futs)):
            done(futs[fut], fut.result())
    finally:
        client.close()
