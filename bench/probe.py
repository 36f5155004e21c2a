#!/usr/bin/env python3
"""In-process instrumentation shared by both sides of every comparison.

    python3 bench/probe.py STATS_JSON MODE TARGET PROGRAM [ARGS...]

TARGET  emsan   runs `emsan run --mode none PROGRAM ARGS...` through emsan's own CLI entry point
        bare    runs bench/bare_unicorn.py PROGRAM ARGS...
MODE    time    sums the wall time spent inside Uc.emu_start (emulation, syscall hooks included)
        first   as `time`, plus a Python UC_HOOK_CODE hook on the first emu_start's begin address
                (the ELF entry) that records when the first guest instruction executes
        count   emsan only: counts guest instructions with emsan's native counting hook
                (emsan_count_insn_cb via Machine.hook_native); nothing is timed

The same wrapper around `unicorn.Uc.emu_start` is installed for both targets, so whatever it
costs is paid by both. Timestamps are CLOCK_MONOTONIC, which is system-wide on Linux and can be
compared with the runner's clock. Results go to STATS_JSON; the exit status is the guest's.
"""
import time

T_START = time.clock_gettime(time.CLOCK_MONOTONIC)   # first thing: the interpreter is up

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

STATE = {"t_probe_start": T_START, "t_emu_first_call": None, "t_first_insn": None,
         "emu_s": 0.0, "emu_calls": 0}


def _install(first_insn: bool) -> None:
    from unicorn import UC_HOOK_CODE
    from unicorn.unicorn_py3.unicorn import Uc

    orig = Uc.emu_start
    perf = time.perf_counter

    def on_entry(uc, address, size, ud):
        if STATE["t_first_insn"] is None:
            STATE["t_first_insn"] = time.clock_gettime(time.CLOCK_MONOTONIC)

    def emu_start(self, begin, until, timeout=0, count=0):
        if STATE["t_emu_first_call"] is None:
            STATE["t_emu_first_call"] = time.clock_gettime(time.CLOCK_MONOTONIC)
            if first_insn:
                self.hook_add(UC_HOOK_CODE, on_entry, None, begin, begin)
        STATE["emu_calls"] += 1
        t = perf()
        try:
            return orig(self, begin, until, timeout, count)
        finally:
            STATE["emu_s"] += perf() - t

    Uc.emu_start = emu_start


def _count(program: str, args: list[str]) -> int:
    from unicorn import UC_HOOK_CODE

    from emsan.machine import native
    from emsan.session.options import RunOptions
    from emsan.session.run import Session

    session = Session(RunOptions(program=program, args=args, mode="none"))
    ffi, lib = native.load()
    counter = ffi.new("uint64_t *")
    session.machine.hook_native(UC_HOOK_CODE, ffi.addressof(lib, "emsan_count_insn_cb"), counter)
    info = session.run()
    sys.stdout.flush()
    STATE["instructions"] = int(counter[0])
    return info.status


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    stats_path, mode, target, program, *args = sys.argv[1:]
    status = 70
    try:
        if mode == "count":
            if target != "emsan":
                raise SystemExit("probe: count mode runs emsan only")
            status = _count(program, args)
        else:
            _install(first_insn=(mode == "first"))
            if target == "emsan":
                from emsan.cli.main import main as emsan_main
                status = emsan_main(["run", "--mode", "none", program, *args])
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
                import bare_unicorn
                status = bare_unicorn.main([program, *args])
    finally:
        sys.stdout.flush()
        STATE["t_end"] = time.clock_gettime(time.CLOCK_MONOTONIC)
        STATE["status"] = status
        with open(stats_path, "w") as f:
            json.dump(STATE, f)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
