"""`emsan fuzz [run options] -i SEEDS -o OUT [--input stdin|file|arg] -- PROGRAM ARGS (@@: the input)`

Drives AFL++'s afl-fuzz in Unicorn mode with emsan as the target: the program is loaded, linked
and run up to `main` (or --entry FUNCTION) once, and each input runs in a fork of that state
(emsan.session.fuzz, emsan.machine.afl). A sanitizer report or a fatal guest signal is a crash
for AFL++; its report (text and JSON) is saved next to the crashing input in OUT/*/crashes/ as
NAME.emsan.txt and NAME.emsan.json. `emsan triage OUT` groups the crashes into bugs.

Exit status: 99 when AFL++ saved crashes, 0 when it saved none, 2 when it could not start, 70 when
emsan failed inside itself on some input (OUT/.emsan/errors.log).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from emsan.cli.jobs import console as make_console
from emsan.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_REPORT, EmsanError

CONFIG = "emsan-fuzz.json"
OWN = {"-i": True, "-o": True, "--input": True, "--entry": True, "--cover": True, "-x": True, "-t": True,
       "--persistent": True, "--persistent-iterations": True,
       "-E": True, "-V": True, "-s": True, "--afl-arg": True, "--resume": False, "--quiet": False,
       "--no-compcov": False, "--no-cmplog": False}
# Environment for afl-fuzz: no curses UI (emsan shows progress), no CPU pinning (machines are
# shared), and none of the checks a Unicorn-mode target has no use for.
AFL_ENV = {"AFL_NO_UI": "1", "AFL_NO_AFFINITY": "1", "AFL_SKIP_CPUFREQ": "1",
           "AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES": "1", "AFL_FORKSRV_INIT_TMOUT": "120000",
           "AFL_SKIP_BIN_CHECK": "1"}


def add_parser(sub, add_run_options) -> None:
    p = sub.add_parser("fuzz", help="fuzz a program with AFL++, emsan as its sanitizer",
                       description="Fuzz PROGRAM with AFL++ (Unicorn mode), emsan as the sanitizer; a report "
                                   "is a crash, saved with its text and JSON report next to the input.")
    p.add_argument("-i", dest="seeds", required=True, metavar="SEEDS", help="directory of seed inputs")
    p.add_argument("-o", dest="out", required=True, metavar="OUT", help="AFL++'s output directory")
    p.add_argument("--input", choices=("stdin", "file", "arg", "buffer"),
                   help="how the program takes an input: stdin, a file (@@ in ARGS is its path), an argument "
                        "(@@ in ARGS is the input itself), or a buffer passed to the --persistent function; "
                        "default: buffer with --persistent, else file when an argument holds @@, else stdin")
    p.add_argument("--persistent", metavar="FUNCTION",
                   help="persistent mode: call FUNCTION(buf, len) once per input, the input in a buffer from the "
                        "guest's malloc (emsan's heap, exact redzones), registers and memory restored in between")
    p.add_argument("--persistent-iterations", dest="iterations", type=int, default=1000, metavar="N",
                   help="inputs per forked child in persistent mode (default 1000)")
    p.add_argument("--entry", default="main", metavar="FUNCTION",
                   help="where the fork server starts, once the program is loaded and linked (default: main)")
    p.add_argument("--cover", choices=("program", "all"), default="program",
                   help="code whose edges AFL++ sees: the program's (default, like qemu mode) or every module's")
    p.add_argument("--no-compcov", dest="compcov", action="store_false",
                   help="no byte-wise coverage of multi-byte comparisons (CompCov)")
    p.add_argument("--no-cmplog", dest="cmplog", action="store_false",
                   help="no CmpLog (AFL++'s input-to-state stage, fed by a second fork server logging comparisons)")
    p.add_argument("-x", dest="dicts", action="append", default=[], metavar="DICT", help="AFL++ dictionary")
    p.add_argument("-t", dest="timeout_ms", type=int, default=2000, metavar="MS",
                   help="per-input time limit in milliseconds (default 2000)")
    p.add_argument("-E", dest="execs", type=int, metavar="N", help="stop after about N executions")
    p.add_argument("-V", dest="seconds", type=int, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("-s", dest="afl_seed", type=int, metavar="SEED", help="AFL++'s random seed (reproducible runs)")
    p.add_argument("--afl-arg", action="append", default=[], metavar="ARG", help="pass ARG to afl-fuzz as is")
    p.add_argument("--resume", action="store_true", help="continue the campaign in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    add_run_options(p)
    p.add_argument("program", help="the ELF executable")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments; @@ stands for the input")


def forwarded_options(argv: list[str], ns: argparse.Namespace, cfg_path: str) -> list[str]:
    """The run options given to `fuzz`, as `emsan run` takes them (the targets and triage use
    them), with a --seed: the campaign's (kept on --resume), from which each input's random
    choices (KFENCE's sampling, tags, the guest's AT_RANDOM) follow, so that triage reproduces
    them."""
    from emsan.cli.main import has_option, run_option_tokens
    out = run_option_tokens(argv[:len(argv) - 1 - len(ns.args)], "fuzz", OWN)
    if has_option(out, "--seed"):
        return out
    seed = str(int.from_bytes(os.urandom(4), "little"))
    if ns.resume and os.path.exists(cfg_path):
        from emsan.session.fuzz import FuzzConfig
        old = FuzzConfig.load(cfg_path).run_options
        seed = next((old[i + 1] for i, t in enumerate(old[:-1]) if t == "--seed"), seed)
    return [*out, "--seed", seed]


def stats(out: str) -> dict[str, str]:
    """AFL++'s fuzzer_stats of every instance under OUT, summed where it makes sense."""
    total: dict[str, float] = {}
    for inst in instances(out):
        try:
            with open(os.path.join(inst, "fuzzer_stats")) as f:
                for line in f:
                    k, _, v = line.partition(":")
                    k, v = k.strip(), v.strip()
                    try:
                        total[k] = total.get(k, 0) + float(v)
                    except ValueError:
                        pass
        except OSError:
            continue
    return {k: f"{v:g}" for k, v in total.items()}


def instances(out: str) -> list[str]:
    try:
        return sorted(os.path.join(out, d) for d in os.listdir(out)
                      if os.path.isdir(os.path.join(out, d, "crashes")))
    except OSError:
        return []


def crash_files(out: str) -> list[str]:
    files = []
    for inst in instances(out):
        d = os.path.join(inst, "crashes")
        files += [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.startswith("id:") and ".emsan." not in n]
    return files


def link_reports(out: str, done: set[str]) -> list[str]:
    """Put each crash's report next to it; the crashes whose report is not there yet."""
    from emsan.session.fuzz import input_id
    missing = []
    reports = os.path.join(out, ".emsan", "reports")
    for path in crash_files(out):
        if path in done:
            continue
        with open(path, "rb") as f:
            base = os.path.join(reports, input_id(f.read()))
        if os.path.exists(base + ".emsan.json") and os.path.exists(base + ".emsan.txt"):
            for ext in (".emsan.txt", ".emsan.json"):
                shutil.copyfile(base + ext, path + ext)
            done.add(path)
        else:
            missing.append(path)
    return missing


def afl_time_ms(name: str, field: str) -> int | None:
    m = re.search(rf"(?:^|,){field}:(\d+)", os.path.basename(name))
    return int(m.group(1)) if m else None


def target_command(cfg_path: str, out: str) -> list[str]:
    return [sys.executable, "-m", "emsan.session.fuzz", cfg_path, os.path.join(out, "default", ".cur_input")]


def preflight(cfg_path: str, seed: str) -> None:
    """Run the target once on a seed without AFL++, so that a program emsan cannot run gives its
    own error here (afl-fuzz hides a target's stderr)."""
    with open(seed, "rb") as f:
        p = subprocess.run([sys.executable, "-m", "emsan.session.fuzz", cfg_path, seed], stdin=f,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    err = p.stderr.decode(errors="replace").strip()
    if p.returncode == EXIT_INTERNAL or "Traceback" in err:
        print(err, file=sys.stderr)
        raise EmsanError("the target failed inside emsan on the first seed (above)", EXIT_INTERNAL)
    if p.returncode == EXIT_BAD_INPUT:
        last = err.splitlines()[-1] if err else f"exit status {p.returncode}"
        raise EmsanError(f"the target does not start under emsan: {last.removeprefix('emsan: ')}")


def run_fuzz(argv: list[str], ns: argparse.Namespace) -> int:

    afl = shutil.which("afl-fuzz")
    if afl is None:
        raise EmsanError("afl-fuzz not found: install AFL++ (Debian: apt-get install afl++)")
    if not os.path.isfile(ns.program):
        found = shutil.which(ns.program)
        if found is None:
            raise EmsanError(f"{ns.program}: no such file")
        ns.program = found
    program = os.path.abspath(ns.program)
    has_placeholder = any("@@" in a for a in ns.args)
    mode = ns.input or ("buffer" if ns.persistent else "file" if has_placeholder else "stdin")
    if mode in ("file", "arg") and not has_placeholder:
        raise EmsanError(f"--input {mode}: put @@ in the program's arguments where the input goes")
    if (mode == "buffer") != bool(ns.persistent):
        raise EmsanError("--persistent FUNCTION takes its input as --input buffer, and only it does")
    if ns.iterations < 1:
        raise EmsanError("--persistent-iterations must be at least 1")
    seeds = sorted(os.path.join(ns.seeds, n) for n in os.listdir(ns.seeds)) if os.path.isdir(ns.seeds) else []
    seeds = [s for s in seeds if os.path.isfile(s)]
    if not ns.resume and not seeds:
        raise EmsanError(f"-i {ns.seeds}: no seed files (AFL++ needs at least one input)")
    out = os.path.abspath(ns.out)
    if os.path.exists(os.path.join(out, "default", "fuzzer_stats")) and not ns.resume:
        raise EmsanError(f"-o {ns.out}: holds an earlier campaign (--resume continues it)")
    os.makedirs(os.path.join(out, ".emsan", "reports"), exist_ok=True)
    from emsan.session.fuzz import FuzzConfig
    cfg_path = os.path.join(out, CONFIG)
    cfg = FuzzConfig(program, list(ns.args), mode, forwarded_options(argv, ns, cfg_path), ns.entry, out, ns.cover,
                     ns.compcov, ns.persistent, ns.iterations)
    with open(cfg_path, "w") as f:
        json.dump(cfg.__dict__, f, indent=2)
    if seeds:
        preflight(cfg_path, seeds[0])

    # Not -U: AFL++ 4.04c refuses CmpLog in Unicorn mode, and the target speaks the plain
    # fork-server protocol anyway (AFL_SKIP_BIN_CHECK: it is emsan, not an instrumented binary).
    cmd = [afl, "-i", "-" if ns.resume else ns.seeds, "-o", out, "-m", "none", "-t", str(ns.timeout_ms)]
    if ns.cmplog:
        cmd += ["-c", "0"]
    for d in ns.dicts:
        cmd += ["-x", d]
    if ns.execs:
        cmd += ["-E", str(ns.execs)]
    if ns.seconds:
        cmd += ["-V", str(ns.seconds)]
    if ns.afl_seed is not None:
        cmd += ["-s", str(ns.afl_seed)]
    cmd += [*ns.afl_arg, "--", *target_command(cfg_path, out)]
    env = {**AFL_ENV, **os.environ} if os.environ.get("AFL_NO_UI") else {**os.environ, **AFL_ENV}
    console = make_console()
    log_path = os.path.join(out, "afl-fuzz.log")
    linked: set[str] = set()
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        # A session of its own: at exit afl-fuzz 4.04c SIGKILLs the process group it finds its
        # fork servers in, which is otherwise emsan's own (and the shell's).
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            with console.status("starting afl-fuzz", spinner="dots") as status:
                while proc.poll() is None:
                    time.sleep(1.0)
                    link_reports(out, linked)
                    st = stats(out)
                    if st and not ns.quiet:
                        status.update(f"[bold]fuzz[/bold] {os.path.basename(program)}: "
                                      f"{st.get('execs_done', '0')} execs, {st.get('execs_per_sec', '0')}/s, "
                                      f"corpus {st.get('corpus_count', '0')}, crashes {st.get('saved_crashes', '0')}, "
                                      f"hangs {st.get('saved_hangs', '0')}, {time.monotonic() - t0:.0f} s")
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)      # afl-fuzz saves its state and stops
            proc.wait()
    wall = time.monotonic() - t0
    st = stats(out)
    if not st:
        tail = _log_tail(log_path)
        raise EmsanError(f"afl-fuzz did not start: {tail} (see {log_path})")

    # Crashes whose report the child could not leave: run them once more (emsan.session.fuzz
    # without AFL++ runs one input and writes its report the same way).
    for path in link_reports(out, linked):
        subprocess.run(target_command(cfg_path, out)[:-1] + [path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    link_reports(out, linked)

    crashes = crash_files(out)
    console.print(f"emsan fuzz: {st.get('execs_done', '0')} executions in {wall:.1f} s "
                  f"({st.get('execs_per_sec', '0')}/s by AFL++'s count), corpus {st.get('corpus_count', '0')}, "
                  f"{len(crashes)} crashes saved, {st.get('saved_hangs', '0')} hangs", markup=False)
    if crashes:
        first = min(crashes, key=lambda c: afl_time_ms(c, "time") or 0)
        console.print(f"first crash after {(afl_time_ms(first, 'time') or 0) / 1000:.1f} s and "
                      f"{afl_time_ms(first, 'execs')} executions: {first}", markup=False)
        console.print(f"reports are next to each input (NAME.emsan.txt, NAME.emsan.json); "
                      f"group them with: emsan triage {ns.out}", markup=False)
    errors = os.path.join(out, ".emsan", "errors.log")
    if os.path.exists(errors):
        with open(errors, errors="replace") as f:
            logged = f.read()
        failed = sum(ln.startswith("input ") for ln in logged.splitlines())
        print(f"emsan: internal error in the target on {failed} inputs (they count as no crash); the last: "
              f"{logged.strip().splitlines()[-1]} (see {errors})", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_REPORT if crashes else 0


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return "no log"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\(B", "", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    abort = next((ln for ln in lines if "PROGRAM ABORT" in ln), None)
    return abort.replace("[-] PROGRAM ABORT : ", "") if abort else (lines[-1] if lines else "no output")
