"""What the benchmark runners share: paths, building the workloads, running one measured
process, and the statistics of interleaved repetitions (bench/run.py, bench/kasan.py)."""
from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORKLOAD_DIR = BENCH / "workloads"
BUILD_DIR = BENCH / "build"
PY = sys.executable

ARCHES = ("x86_64", "arm64")
COMPILERS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
CFLAGS = ["-static", "-O2", "-g", "-fno-omit-frame-pointer"]

# Iteration counts sized for about 0.5-0.9 s of plain emulation each (see bench/README.md).
WORKLOADS = {
    "compute": {"x86_64": 10_000, "arm64": 20_000},    # ~18k / ~8.5k guest insns per iteration
    "alloc": {"x86_64": 80_000, "arm64": 80_000},      # ~800 / ~690 per iteration, malloc/free churn
    "strings": {"x86_64": 50_000, "arm64": 50_000},    # ~640 / ~670 per iteration, libc string routines
}


class BenchError(RuntimeError):
    pass


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def selected(args, known) -> tuple[tuple[str, ...], list[str]]:
    """The architectures (--arch, "all" for both) and workloads (--workloads, comma-separated,
    default: all of `known`) a runner was asked for."""
    arches = ARCHES if args.arch == "all" else (args.arch,)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()] if args.workloads else list(known)
    for n in names:
        if n not in known:
            raise BenchError(f"unknown workload {n!r} (have: {', '.join(known)})")
    return arches, names


# --- building ---------------------------------------------------------------------------------------
def build(name: str, arch: str, static: bool = True) -> Path:
    """bench/workloads/NAME.c -> bench/build/ARCH/NAME (static), or bench/build/ARCH-dynamic/NAME."""
    src = WORKLOAD_DIR / f"{name}.c"
    out = BUILD_DIR / (arch if static else f"{arch}-dynamic") / name
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cc = COMPILERS[arch]
    if shutil.which(cc) is None:
        raise BenchError(f"{cc} is not installed (needed for {arch})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    flags = CFLAGS if static else [f for f in CFLAGS if f != "-static"]
    proc = subprocess.run([cc, *flags, "-o", str(tmp), str(src)], capture_output=True, text=True)
    if proc.returncode:
        raise BenchError(f"building {src} for {arch} failed:\n{proc.stderr}")
    os.replace(tmp, out)
    return out


# --- running -----------------------------------------------------------------------------------------
class Runner:
    """Runs one fresh process per measurement, in a scratch directory, with one environment."""

    def __init__(self, tmpdir: str):
        self.tmpdir = tmpdir
        self.stats_path = os.path.join(tmpdir, "stats.json")
        self.env = dict(os.environ)
        self.env.pop("EMSAN_DEBUG", None)
        self.last_stderr = b""
        self.last_cpu = 0.0

    def _run(self, cmd: list[str], what: str, env: dict | None = None) -> tuple[float, float, bytes]:
        """Run cmd (in self.env, or `env`); return (launch time, wall seconds, stdout). Fails loudly on
        a bad exit. The run's stderr is kept in self.last_stderr."""
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = now()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or self.env,
                              cwd=self.tmpdir)
        wall = now() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds (user + system, all threads) of that one child: unlike wall time, not
        # stretched when other tenants load the machine.
        self.last_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        self.last_stderr = proc.stderr
        if proc.returncode != 0:
            raise BenchError(f"{what}: exit status {proc.returncode}\n$ {' '.join(cmd)}\n"
                             f"{proc.stderr.decode(errors='replace')[-3000:]}")
        return t0, wall, proc.stdout

    def probe(self, mode: str, target: str, exe: Path, args: list[str]) -> tuple[float, float, dict, bytes]:
        """bench/probe.py STATS MODE TARGET EXE ARGS: (launch time, wall, the probe's stats, stdout)."""
        import json

        if os.path.exists(self.stats_path):
            os.unlink(self.stats_path)
        cmd = [PY, str(BENCH / "probe.py"), self.stats_path, mode, target, str(exe), *args]
        t0, wall, out = self._run(cmd, f"probe {mode} {target} {exe.name}")
        with open(self.stats_path) as f:
            return t0, wall, json.load(f), out

    def plain(self, target: str, exe: Path, args: list[str]) -> tuple[float, bytes]:
        """Uninstrumented whole-process run of emsan --mode none ("emsan") or bare Unicorn ("bare")."""
        if target == "emsan":
            return self.emsan("none", exe, args)
        _, wall, out = self._run([PY, str(BENCH / "bare_unicorn.py"), str(exe), *args], f"bare {exe.name}")
        return wall, out

    def emsan(self, mode: str, exe: Path, args: list[str]) -> tuple[float, bytes]:
        """`python3 -m emsan run --mode MODE EXE ARGS`, exactly as a user runs it: (wall, stdout)."""
        _, wall, out = self._run([PY, "-m", "emsan", "run", "--mode", mode, str(exe), *args],
                                 f"emsan --mode {mode} {exe.name}")
        return wall, out

    def command(self, cmd: list[str], what: str, env: dict | None = None) -> tuple[float, bytes]:
        """Any other command (native runs, valgrind, qemu-user): (wall, stdout)."""
        _, wall, out = self._run(cmd, what, env)
        return wall, out

    def python_floor(self) -> float:
        _, wall, _ = self._run([PY, "-c", "pass"], "python -c pass")
        return wall

    def count(self, exe: Path, args: list[str], target: str = "emsan", mode: str = "count") -> tuple[int, bytes, dict]:
        """Guest instructions of one untimed run (and the probe's stats: sanitizer counters, memory
        accesses with mode="count-mem")."""
        _, _, st, out = self.probe(mode, target, exe, args)
        n = int(st.get("instructions") or 0)
        if n <= 0:
            raise BenchError(f"instruction count of {exe} came back as {n}")
        return n, out, st


# --- statistics --------------------------------------------------------------------------------------
def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def paired_ratio(num: list[float], den: list[float]) -> dict:
    return summary([a / b for a, b in zip(num, den)])


def rotate(seq, k: int) -> list:
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


def fmt_ratio(r: dict) -> str:
    return f"{r['median']:.3f} ({r['min']:.2f}–{r['max']:.2f})"


def spread(values: list[float], fmt: str = ".3f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


# --- metadata ----------------------------------------------------------------------------------------
def version(dist: str) -> str | None:
    try:
        from importlib.metadata import version as _v
        return _v(dist)
    except Exception:
        return None


def tool_version(cmd: list[str]) -> str | None:
    """The first line a tool prints for its version (`valgrind --version`), or None."""
    try:
        lines = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.splitlines()
        return lines[0].strip() if lines else None
    except Exception:
        return None


def met(ok: bool) -> str:
    """A target's verdict, for rich."""
    return "[green]met[/green]" if ok else "[red]not met[/red]"


def git_rev() -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        return p.stdout.strip() or None
    except Exception:
        return None


def host_meta() -> dict:
    import platform

    return {"python": platform.python_version(), "unicorn": version("unicorn"), "host": platform.node(),
            "cpus": os.cpu_count(), "machine": platform.machine(), "git_rev": git_rev(), "cflags": CFLAGS}


def run_meta(args, arches, reps: int, started, load_before, **extra) -> dict:
    """The "meta" block of a runner's JSON: when, how long, with what, on what, under what load."""
    from datetime import datetime, timezone

    return {"started": started.isoformat(timespec="seconds"),
            "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
            "reps": reps, "quick": bool(args.quick), "scale": args.scale, "arches": list(arches),
            **host_meta(), **extra,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def standard_parser(description: str, default_json: Path, workloads):
    """The options every interleaved benchmark runner shares (an argparse parser)."""
    import argparse
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="3 repetitions instead of 5")
    p.add_argument("--arch", choices=("x86_64", "arm64", "all"), default="all")
    p.add_argument("--json", type=Path, default=default_json,
                   help=f"output file (default {default_json.relative_to(ROOT)})")
    p.add_argument("--reps", type=int, help="repetitions (overrides --quick)")
    p.add_argument("--workloads", help=f"comma-separated subset of {','.join(workloads)}")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every iteration count (e.g. 0.02 for a smoke run)")
    return p


def run_and_report(p, argv, run_bench, render, width: int) -> int:
    """Parse, run the benchmark, write its JSON and print its tables."""
    import json
    args = p.parse_args(argv)
    if getattr(args, "reps", None) is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    if getattr(args, "scale", 1.0) <= 0:
        p.error("--scale must be positive")
    from rich.console import Console
    console = Console(width=None if sys.stdout.isatty() else width)
    try:
        res = run_bench(args, console.print)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    render(res, console)
    console.print(f"JSON written to {args.json}")
    return 0
