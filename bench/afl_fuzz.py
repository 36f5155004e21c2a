"""Fuzzing benchmark: AFL++ executions per second on one target (tests/guest/fuzz_target.c) with
emsan as the sanitizer (`emsan fuzz --mode none|generic|kfence`, and generic in persistent mode on
parse()), against a plain Unicorn harness with no sanitizer (bench/fuzz_harness.py, the
unicornafl-style baseline, forking per input and persistent) and against AFL++'s own
compiler instrumentation with ASan on the source (afl-clang-fast, AFL_USE_ASAN=1: the ceiling);
and the time to the first crash of each of the target's two bugs (a heap overflow behind a
4-byte magic, a use-after-free behind a length check) with each tool's default settings.

Every configuration runs afl-fuzz for the same time from the same seed and AFL++ seed; the
configurations are interleaved round by round, and ratios are paired within a round, so a
machine under load affects all of them alike. Figures go to stdout and JSON, never asserted.

    python3 bench/afl_fuzz.py                 # both architectures, 3 rounds of 15 s, about 13 minutes
    python3 bench/afl_fuzz.py --quick         # 2 rounds of 8 s
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from common import (BENCH, PY, ROOT, BenchError, paired_ratio, rotate, run_and_report, run_meta, spread,
                    standard_parser, summary)

TARGET_SRC = ROOT / "tests" / "guest" / "fuzz_target.c"
BUILD = BENCH / "build" / "afl_fuzz"
COMPILERS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
AFL_ENV = {"AFL_NO_UI": "1", "AFL_NO_AFFINITY": "1", "AFL_SKIP_CPUFREQ": "1",
           "AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES": "1", "AFL_FORKSRV_INIT_TMOUT": "120000",
           "AFL_SKIP_BIN_CHECK": "1"}
ASAN_KIND = {"heap-buffer-overflow": "slab-out-of-bounds", "heap-use-after-free": "slab-use-after-free"}
BUGS = ("slab-out-of-bounds", "slab-use-after-free")


def build_targets(arches) -> dict:
    BUILD.mkdir(parents=True, exist_ok=True)
    out = {}
    for arch in arches:
        exe = BUILD / f"fuzz_target-{arch}"
        _compile([COMPILERS[arch], "-O1", "-g", "-fno-omit-frame-pointer", "-static"], exe)
        out[arch] = exe
    if "x86_64" in arches:
        if shutil.which("afl-clang-fast") is None:
            raise BenchError("afl-clang-fast is not installed (Debian: afl++)")
        env = {**os.environ, "AFL_USE_ASAN": "1", "AFL_QUIET": "1"}
        _compile(["afl-clang-fast", "-O1", "-g"], BUILD / "fuzz_target-afl-asan", env)
        _compile(["afl-clang-fast", "-O1", "-g"], BUILD / "fuzz_target-afl-asan-cmplog",
                 {**env, "AFL_LLVM_CMPLOG": "1"})
        _compile(["gcc", "-O1", "-g", "-fsanitize=address"], BUILD / "fuzz_target-asan")
    return out


def _compile(cmd: list[str], exe: Path, env=None) -> None:
    if exe.exists() and exe.stat().st_mtime >= TARGET_SRC.stat().st_mtime:
        return
    if shutil.which(cmd[0]) is None:
        raise BenchError(f"{cmd[0]} is not installed")
    p = subprocess.run([*cmd, "-o", str(exe), str(TARGET_SRC)], capture_output=True, text=True, env=env)
    if p.returncode:
        raise BenchError(f"{' '.join(cmd)} failed:\n{p.stderr}")


def afl_stats(out: Path) -> dict:
    st = {}
    with open(out / "default" / "fuzzer_stats") as f:
        for line in f:
            k, _, v = line.partition(":")
            st[k.strip()] = v.strip()
    return st


def run_afl(cmd_target: list[str], seeds: Path, out: Path, seconds: int, seed: int, extra=()) -> dict:
    """afl-fuzz for `seconds` on a target command; its stats."""
    cmd = ["afl-fuzz", "-i", str(seeds), "-o", str(out), "-m", "none", "-t", "5000", "-V", str(seconds),
           "-s", str(seed), *extra, "--", *cmd_target]
    with open(out.parent / (out.name + ".log"), "wb") as log:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, **AFL_ENV}, start_new_session=True)
        try:
            p.wait(timeout=seconds + 300)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if not (out / "default" / "fuzzer_stats").exists():
        raise BenchError(f"afl-fuzz did not run {' '.join(cmd_target)} (see {out}.log)")
    return afl_stats(out)


def run_emsan(exe: Path, mode: str, seeds: Path, out: Path, seconds: int, seed: int, cmplog: bool,
              persistent: bool = False) -> dict:
    cmd = [PY, "-m", "emsan", "fuzz", "--quiet", "--mode", mode, "-V", str(seconds), "-s", str(seed),
           "-t", "5000", "-i", str(seeds), "-o", str(out)]
    if persistent:
        cmd += ["--persistent", "parse"]
    if not cmplog:
        cmd.append("--no-cmplog")
    p = subprocess.run([*cmd, "--", str(exe)], capture_output=True, text=True, timeout=seconds + 600)
    if p.returncode not in (0, 99):
        raise BenchError(f"emsan fuzz failed ({p.returncode}): {p.stderr[-2000:]}")
    return afl_stats(out)


def execs_per_sec(st: dict) -> float:
    return float(st["execs_done"]) / max(float(st["run_time"]), 1e-9)


def configs(arches, targets) -> list[tuple[str, str, object]]:
    out = []
    for arch in arches:
        for mode in ("none", "generic", "kfence"):
            out.append((f"emsan {mode}", arch, ("emsan", targets[arch], mode, False)))
        out.append(("plain Unicorn harness", arch, ("harness", targets[arch], 1)))
        out.append(("emsan generic, persistent parse()", arch, ("emsan", targets[arch], "generic", True)))
        out.append(("plain Unicorn harness, persistent", arch, ("harness", targets[arch], 1000)))
    if "x86_64" in arches:
        out.append(("AFL++ afl-clang-fast + ASan (native)", "x86_64", ("native", BUILD / "fuzz_target-afl-asan")))
    return out


def first_crashes(out: Path, classify) -> dict[str, dict]:
    """For each bug, the first crash AFL++ saved: its time and execution count (from its name)."""
    found: dict[str, dict] = {}
    d = out / "default" / "crashes"
    for name in sorted(os.listdir(d)) if d.is_dir() else []:
        if not name.startswith("id:") or ".emsan." in name:
            continue
        t = int(re.search(r"time:(\d+)", name).group(1))
        n = int(re.search(r"execs:(\d+)", name).group(1))
        bug = classify(d / name)
        if bug and (bug not in found or t < found[bug]["ms"]):
            found[bug] = {"ms": t, "execs": n, "input": name}
    return found


def emsan_bug(path: Path) -> str | None:
    side = Path(str(path) + ".emsan.json")
    if not side.exists():
        return None
    doc = json.loads(side.read_text())
    rep = (doc.get("reports") or [doc.get("crash")])[0]
    return rep.get("bug_type") if rep else None


def asan_bug(path: Path) -> str | None:
    p = subprocess.run([str(BUILD / "fuzz_target-asan")], stdin=open(path, "rb"), capture_output=True, timeout=60)
    m = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", p.stderr.decode(errors="replace"))
    return ASAN_KIND.get(m.group(1)) if m else None


def run_bench(args, say) -> dict:
    arches = ("x86_64", "arm64") if args.arch == "all" else (args.arch,)
    if shutil.which("afl-fuzz") is None:
        raise BenchError("afl-fuzz is not installed (Debian: afl++)")
    reps = args.reps or (2 if args.quick else 3)
    seconds = args.seconds or (8 if args.quick else 15)
    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    targets = build_targets(arches)
    cfgs = configs(arches, targets)
    rates: dict[int, list[float]] = {i: [] for i in range(len(cfgs))}
    with tempfile.TemporaryDirectory(prefix="emsan-bench-fuzz-") as tmp:
        seeds = Path(tmp) / "seeds"
        seeds.mkdir()
        (seeds / "hello").write_bytes(b"hello!!!")
        for r in range(reps):
            for i in rotate(range(len(cfgs)), r):
                name, arch, how = cfgs[i]
                out = Path(tmp) / f"r{r}-c{i}"
                say(f"round {r + 1}/{reps}: {name} ({arch}), {seconds} s")
                if how[0] == "emsan":
                    st = run_emsan(how[1], how[2], seeds, out, seconds, 1, cmplog=False, persistent=how[3])
                elif how[0] == "harness":
                    st = run_afl([PY, str(BENCH / "fuzz_harness.py"), str(how[1]), "--persistent", str(how[2])],
                                 seeds, out, seconds, 1)
                else:
                    st = run_afl([str(how[1])], seeds, out, seconds, 1)
                rates[i].append(execs_per_sec(st))
        table = []
        for i, (name, arch, how) in enumerate(cfgs):
            base = next(j for j, c in enumerate(cfgs) if c[1] == arch and c[0] == "emsan none")
            harness = next(j for j, c in enumerate(cfgs) if c[1] == arch and c[0] == "plain Unicorn harness")
            table.append({"config": name, "arch": arch, "execs_per_sec": summary(rates[i]),
                          "vs_emsan_none": paired_ratio(rates[i], rates[base]),
                          "vs_plain_harness": paired_ratio(rates[i], rates[harness])})

        # Time to first crash, each tool with its defaults (CmpLog on), seeds 1..reps.
        ttfc = []
        cap = args.crash_seconds
        for arch in arches:
            for seed in range(1, reps + 1):
                out = Path(tmp) / f"ttfc-{arch}-{seed}"
                say(f"time to first crash: emsan generic ({arch}), AFL++ seed {seed}")
                run_emsan(targets[arch], "generic", seeds, out, cap, seed, cmplog=True)
                ttfc.append({"tool": "emsan generic (CmpLog)", "arch": arch, "seed": seed,
                             "bugs": first_crashes(out, emsan_bug)})
        if "x86_64" in arches:
            for seed in range(1, reps + 1):
                out = Path(tmp) / f"ttfc-asan-{seed}"
                say(f"time to first crash: AFL++ afl-clang-fast + ASan (CmpLog), AFL++ seed {seed}")
                run_afl([str(BUILD / "fuzz_target-afl-asan")], seeds, out, cap, seed,
                        ("-c", str(BUILD / "fuzz_target-afl-asan-cmplog")))
                ttfc.append({"tool": "AFL++ afl-clang-fast + ASan (CmpLog)", "arch": "x86_64", "seed": seed,
                             "bugs": first_crashes(out, asan_bug)})
    meta = run_meta(args, arches, reps, started, load_before,
                    seconds_per_run=seconds, crash_cap_seconds=cap, afl=_afl_version())
    return {"schema": "emsan-bench-fuzz/1", "meta": meta, "execs": table, "time_to_first_crash": ttfc}


def _afl_version() -> str | None:
    p = subprocess.run(["afl-fuzz", "-h"], capture_output=True, text=True)
    m = re.search(r"afl-fuzz\+\+([\w.]+)", re.sub(r"\x1b\[[0-9;]*m", "", p.stdout + p.stderr))
    return m.group(1) if m else None


def render(res: dict, console) -> None:
    from rich.table import Table

    m = res["meta"]
    t = Table(title=f"AFL++ executions per second on fuzz_target ({m['reps']} interleaved rounds of "
                    f"{m['seconds_per_run']} s each; load {m['loadavg_before'][0]:.1f} before, "
                    f"{m['loadavg_after'][0]:.1f} after)")
    for c in ("configuration", "arch", "execs/s median (min–max)", "÷ emsan none", "÷ plain harness"):
        t.add_column(c, justify="left" if c in ("configuration", "arch") else "right")
    for row in res["execs"]:
        e, a, b = row["execs_per_sec"], row["vs_emsan_none"], row["vs_plain_harness"]
        t.add_row(row["config"], row["arch"], spread(e["values"], ".0f"), f"{a['median']:.2f}", f"{b['median']:.2f}")
    console.print(t)
    t = Table(title=f"Time to first crash per bug (seconds / executions; cap {m['crash_cap_seconds']} s)")
    for c in ("tool", "arch", "seed", *BUGS):
        t.add_column(c)
    for row in res["time_to_first_crash"]:
        cells = []
        for bug in BUGS:
            b = row["bugs"].get(bug)
            cells.append(f"{b['ms'] / 1000:.1f} s / {b['execs']}" if b else "not found")
        t.add_row(row["tool"], row["arch"], str(row["seed"]), *cells)
    console.print(t)


def main(argv=None) -> int:
    p = standard_parser(__doc__.split("\n\n")[0], BENCH / "results" / "afl_fuzz.json", ())
    p.add_argument("--seconds", type=int, help="seconds of fuzzing per configuration and round")
    p.add_argument("--crash-seconds", type=int, default=60, help="cap on each time-to-first-crash run (default 60)")
    return run_and_report(p, argv, run_bench, render, 140)


if __name__ == "__main__":
    sys.exit(main())
