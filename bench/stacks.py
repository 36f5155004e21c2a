#!/usr/bin/env python3
"""Stack-collection cost under emulation: the structure of the table in Andrey Konovalov's series
"kasan, arm64, scs: collect stack traces from Shadow Call Stack" (v3, April 2022: Generic KASAN
boot time with no stack traces / the unwinder / no stack depot / SCS), reproduced with emsan's
collectors.

Workloads (tests/guest/stacks_chain.c, built -O2 -static with frame pointers):
  allocs  allocation-heavy: objects allocated and freed through short call chains, no bug;
  boot    a program that starts, allocates and frees many objects through deep call chains
          (4..27 frames), then hits a deliberate use-after-free and stops (exit 99), like the
          series' boot-until-panic measurement.
Each is run with --stacks none, fp, fp --no-depot, cfi, scs, scs --stack-checks none and auto (what
auto chose is shown), interleaved (one round runs every configuration once, in rotated order), and
printed as whole-run time relative to --stacks none. The sizes are steady state: --stacks none
emulates for about 1.5 s or more, start-up is a small part. The timed runs go without --stats (its
collector timing costs two clock reads per trace); one more run of each configuration with
--stats gives the trace counts. Both programs are also built with -fomit-frame-pointer (the
"nofp" build), where fp walks no further than the first frame and auto must pick another collector.
On arm64 the program is built by clang with -fsanitize=shadow-call-stack (when clang can) and
--stacks x18 is measured too: it is the series' own collector (copying the SCS at x18); scs is
emsan's emulator-maintained shadow call stack.

    python3 bench/stacks.py [--arch x86_64 arm64] [--reps 5] [--builds fp nofp] [--workloads allocs boot]
                            [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, COMPILERS, PY, ROOT, BenchError, now, rotate  # noqa: E402

SRC = ROOT / "tests" / "guest" / "stacks_chain.c"
CONFIGS = [("none", ["--stacks", "none"]), ("fp", ["--stacks", "fp"]),
           ("fp --no-depot", ["--stacks", "fp", "--no-depot"]), ("cfi", ["--stacks", "cfi"]),
           ("scs", ["--stacks", "scs"]), ("scs, no checks", ["--stacks", "scs", "--stack-checks", "none"]),
           ("auto", ["--stacks", "auto"])]
BUILDS = {"fp": "-fno-omit-frame-pointer", "nofp": "-fomit-frame-pointer"}
WORKLOADS = {"allocs": ["allocs", "500000"], "boot": ["boot", "30000"]}
# That series' cover letter (Generic KASAN, QEMU TCG -cpu max), and Mark Rutland's reply re-measuring it.
SEED = {"none": ("8.03 s", "1.92 s"), "fp": ("+43.8%", "+18.2%"), "fp --no-depot": ("+43.5%", "+15.6%"),
        "cfi": ("-", "-"), "scs": ("+3.4%", "+7.3%"), "scs, no checks": ("-", "-"), "x18": ("+3.4%", "+7.3%"),
        "auto": ("-", "-")}
TARGETS = {"auto": 0.05, "scs": 0.05, "cfi": 0.30}
CAVEAT = ("Mark Rutland (arm64 maintainer), replying to that series: \"QEMU TCG mode is *in no way* representative of HW "
          "performance, and has drastically different performance characteristics compared to real HW\"; "
          "the series' +43.8% came mostly from TCG's slow pointer authentication (PACIASP/AUTIASP), and on "
          "KVM hardware stack collection was ~1.6-9% of boot. Unicorn is QEMU's TCG: the ratios below "
          "describe emsan under emulation, not what these collectors cost on hardware.")


def build(arch: str, variant: str) -> tuple[Path, bool]:
    """(binary, built with -fsanitize=shadow-call-stack). The frame-pointer build for arm64 is made by
    clang with a shadow call stack when clang can, so that --stacks x18 runs on the very binary the
    others run on."""
    flag = BUILDS[variant]
    if variant == "fp" and arch == "arm64" and shutil.which("clang") and shutil.which(COMPILERS[arch]):
        out = BENCH / "build" / "stacks" / "arm64-scs" / "stacks_chain"
        cmd = ["clang", "--target=aarch64-linux-gnu", "-fsanitize=shadow-call-stack", "-ffixed-x18", "-DEMSAN_SCS"]
        if _compile([*cmd, flag], out):
            return out, True
    out = BENCH / "build" / "stacks" / (arch if variant == "fp" else f"{arch}-{variant}") / "stacks_chain"
    if shutil.which(COMPILERS[arch]) is None:
        raise BenchError(f"{COMPILERS[arch]} is not installed (needed for {arch})")
    if not _compile([COMPILERS[arch], flag], out):
        raise BenchError(f"building {SRC} for {arch} ({variant}) failed")
    return out, False


def _compile(cc: list[str], out: Path) -> bool:
    if out.exists() and out.stat().st_mtime >= SRC.stat().st_mtime:
        return True
    out.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([*cc, "-static", "-O2", "-g", "-o", str(out), str(SRC)], capture_output=True, text=True)
    return p.returncode == 0


def run_one(exe: Path, flags: list[str], args: list[str], tmp: str, stats: bool = False) -> tuple[float, float, dict]:
    """(wall s, CPU s, stats if asked) of one run. CPU time (user + system of the process) is what the
    ratios use: on a shared machine it moves far less with the load than wall time does."""
    cmd = [PY, "-m", "emsan", "run", *(["--stats"] if stats else []), *flags, str(exe), *args]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = now()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp)
    wall = now() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    err = p.stderr.decode(errors="replace")
    if p.returncode not in (0, 99):
        raise BenchError(f"exit status {p.returncode}\n$ {' '.join(cmd)}\n{err[-2000:]}")
    if not stats:
        return wall, cpu, {}
    line = [ln for ln in err.splitlines() if ln.startswith("emsan: stats: ")][-1]
    stats = dict(kv.split("=", 1) for kv in line[len("emsan: stats: "):].split(", "))
    return wall, cpu, stats


def measure(arch: str, variant: str, workloads: list[str], reps: int, log) -> dict:
    exe, scs_built = build(arch, variant)
    configs = CONFIGS + ([("x18", ["--stacks", "x18"])] if scs_built else [])
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for wl in workloads:
            args = WORKLOADS[wl]
            # the counts, and warm the per-module table caches
            stats = {name: run_one(exe, flags, args, tmp, stats=True)[2] for name, flags in configs}
            times: dict[str, list[float]] = {name: [] for name, _ in configs}
            walls: dict[str, list[float]] = {name: [] for name, _ in configs}
            for r in range(reps):
                for name, flags in rotate(configs, r):
                    wall, cpu, _ = run_one(exe, flags, args, tmp)
                    times[name].append(cpu)
                    walls[name].append(wall)
                log(f"  {arch} {variant} {wl}: round {r + 1}/{reps} done")
            base = times["none"]
            rows = {}
            for name, _ in configs:
                ratios = [t / b for t, b in zip(times[name], base)]
                st = stats[name]
                wall_ratios = [t / b for t, b in zip(walls[name], walls["none"])]
                rows[name] = {"median_s": statistics.median(times[name]), "ratio": statistics.median(ratios),
                              "wall_ratio": statistics.median(wall_ratios),
                              "ratio_min": min(ratios), "ratio_max": max(ratios),
                              "traces": int(st.get("stack_traces", 0)), "unique": int(st.get("stack_unique", 0)),
                              "depot_bytes": int(st.get("stack_depot_bytes", 0)),
                              "collector_us": int(st.get("stack_collector_us", 0)),
                              "collector": st.get("stacks", name)}
            out[wl] = rows
    return out


def render(arch: str, variant: str, res: dict) -> None:
    print(f"\n== {arch}, {variant} build ({BUILDS[variant]}) ==")
    for wl, rows in res.items():
        print(f"\n{wl}: CPU time relative to --stacks none (median of paired ratios, [min..max]; wall: median of paired wall ratios)")
        print(f"  {'collector':<15} {'emsan':>10} {'range':>17} {'wall':>7} {'traces':>9} {'unique':>7} {'depot bytes':>12} "
              f"{'collect µs/trace':>17}   seed/001   seed/000 (pauth=false)")
        for name, r in rows.items():
            rel = "baseline" if name == "none" else f"{(r['ratio'] - 1) * 100:+.1f}%"
            if name == "none":
                rel = f"{r['median_s']:.2f} s"
            wall = f"{(r['wall_ratio'] - 1) * 100:+.1f}%"
            per = r["collector_us"] / r["traces"] if r["traces"] else 0.0
            rng = f"[{(r['ratio_min'] - 1) * 100:+.0f}..{(r['ratio_max'] - 1) * 100:+.0f}%]"
            if name == "auto":
                name = f"auto={r['collector']}"
            print(f"  {name:<15} {rel:>10} {rng:>17} {wall:>7} {r['traces']:>9} {r['unique']:>7} {r['depot_bytes']:>12} "
                  f"{per:>17.2f}   {SEED[name.split('=')[0]][0]:>8}   {SEED[name.split('=')[0]][1]:>8}")
        dep, nodep = rows["fp"]["depot_bytes"], rows["fp --no-depot"]["depot_bytes"]
        if nodep:
            print(f"  depot bytes / --no-depot bytes: {dep / nodep * 100:.2f}% (target <= 10%)")
        for name, lim in TARGETS.items():
            got = rows[name]["ratio"] - 1
            print(f"  {name}: {got * 100:+.1f}% (target <= +{lim * 100:.0f}%): {'met' if got <= lim else 'NOT met'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["x86_64", "arm64"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--builds", nargs="+", default=list(BUILDS), choices=list(BUILDS))
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)   # noqa: E731
    print(CAVEAT)
    results = {}
    try:
        for arch in a.arch:
            for variant in a.builds:
                results[f"{arch}-{variant}"] = res = measure(arch, variant, a.workloads, a.reps, log)
                render(arch, variant, res)
    except BenchError as e:
        print(f"bench/stacks.py: {e}", file=sys.stderr)
        return 1
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"caveat": CAVEAT, "seed": SEED, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
