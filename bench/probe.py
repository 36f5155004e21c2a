#!/usr/bin/env python3
"""In-process instrumentation shared by both sides of every comparison.

    python3 bench/probe.py STATS_JSON MODE TARGET PROGRAM [ARGS...]

TARGET  emsan          runs `emsan run --mode none PROGRAM ARGS...` through emsan's own CLI entry point
        emsan-generic  the same with `--mode generic`; the sanitizer's counters (what `--stats`
                       prints: allocs, frees, intercepted...) are read from the mode object
                       after the run and written to STATS_JSON as "sanitizer_stats"
        emsan-hook, emsan-kfence, emsan-sw-tags, emsan-hw-tags
                       the same with `--mode generic --checks hook`, kfence, sw-tags, hw-tags
        emsan-generic-nostacks, emsan-generic-noquarantine
                       generic mode with `--stacks none`, and also `--quarantine-size 0`
                       (bench/modes.py --ablations: where generic mode's cost goes)
        emsan-memhook  `--mode none` plus a native memory hook that does nothing
                       (bench/noop_hook.c, built by the runner into NOOP_HOOK_LIB) over the whole
                       address space, as `--checks hook` registers its check: Unicorn's own
                       per-access cost
        bare           runs bench/bare_unicorn.py PROGRAM ARGS... on the library the binding finds
                       (the unicorn wheel's own, or $LIBUNICORN_PATH's)
MODE    time    sums the wall time spent inside Uc.emu_start (emulation, syscall hooks included)
                as emu_s, and the CPU time of the calling thread over the same spans as emu_cpu_s
                (the engine runs in that thread; CPU time is less sensitive to a loaded machine)
        first   as `time`, plus a Python UC_HOOK_CODE hook on the first emu_start's begin address
                (the ELF entry) that records when the first guest instruction executes
        count   emsan targets only: counts guest instructions with emsan's native counting hook
                (emsan_count_insn_cb via Machine.hook_native); nothing is timed
        count-mem  as `count`, plus guest loads and stores ("mem_accesses") with a counting
                native memory hook over all addresses (bench_count_mem_cb in NOOP_HOOK_LIB)

The same wrapper around `unicorn.Uc.emu_start` is installed for both targets, so whatever it
costs is paid by both. $EMSAN_BENCH_HEAP_SHIFT=N first mallocs N bytes (bench/ab.py varies the
memory layout with it). Timestamps are CLOCK_MONOTONIC, which is system-wide on Linux and can be
compared with the runner's clock. Results go to STATS_JSON; the exit status is the guest's.
"""
import time

T_START = time.clock_gettime(time.CLOCK_MONOTONIC)   # first thing: the interpreter is up

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def _shift_heap() -> None:
    """$EMSAN_BENCH_HEAP_SHIFT bytes of malloc'd memory before anything else: everything the
    engine and emsan allocate later moves by that much. How fast Unicorn walks its hook lists
    depends on where they land (by several per cent), so bench/ab.py compares two installs
    over several such layouts instead of the one each happens to get."""
    n = int(os.environ.get("EMSAN_BENCH_HEAP_SHIFT", "0") or 0)
    if n > 0:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc(ctypes.c_size_t(n))


_shift_heap()

STATE = {"t_probe_start": T_START, "t_emu_first_call": None, "t_first_insn": None,
         "emu_s": 0.0, "emu_cpu_s": 0.0, "emu_calls": 0}


def _install(first_insn: bool, emsan: bool) -> None:
    if emsan:
        import emsan.machine  # noqa: F401  first: the binding must load emsan's engine
    from unicorn import UC_HOOK_CODE
    from unicorn.unicorn_py3.unicorn import Uc

    orig = Uc.emu_start
    perf = time.perf_counter
    cpu = time.thread_time

    def on_entry(uc, address, size, ud):
        if STATE["t_first_insn"] is None:
            STATE["t_first_insn"] = time.clock_gettime(time.CLOCK_MONOTONIC)

    def emu_start(self, begin, until, timeout=0, count=0):
        if STATE["t_emu_first_call"] is None:
            STATE["t_emu_first_call"] = time.clock_gettime(time.CLOCK_MONOTONIC)
            if first_insn:
                self.hook_add(UC_HOOK_CODE, on_entry, None, begin, begin)
        STATE["emu_calls"] += 1
        c, t = cpu(), perf()
        try:
            return orig(self, begin, until, timeout, count)
        finally:
            STATE["emu_s"] += perf() - t
            STATE["emu_cpu_s"] += cpu() - c

    Uc.emu_start = emu_start


EMSAN_MODES = {"emsan": "none", "emsan-generic": "generic", "emsan-memhook": "none",
               "emsan-hook": "generic", "emsan-kfence": "kfence", "emsan-sw-tags": "sw-tags",
               "emsan-hw-tags": "hw-tags", "emsan-generic-nostacks": "generic",
               "emsan-generic-noquarantine": "generic"}
EXTRA_ARGS = {"emsan-hook": ["--checks", "hook"], "emsan-generic-nostacks": ["--stacks", "none"],
              "emsan-generic-noquarantine": ["--stacks", "none", "--quarantine-size", "0"]}
NOOP_HOOK_LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "host", "libnoop_hook.so")


def _hook_lib():
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("void bench_noop_mem_cb(void *, int, uint64_t, int, int64_t, void *);"
             "void bench_count_mem_cb(void *, int, uint64_t, int, int64_t, void *);")
    return ffi, ffi.dlopen(NOOP_HOOK_LIB)


def _add_noop_mem_hook() -> None:
    """Every emsan Session gets a do-nothing native UC_HOOK_MEM_READ|WRITE on all addresses."""
    from emsan.session.run import Session

    ffi, lib = _hook_lib()
    init = Session.__init__

    def __init__(self, *a, **kw):
        init(self, *a, **kw)
        self.machine.hook_mem_access_native(ffi.addressof(lib, "bench_noop_mem_cb"), ffi.NULL, 1, 0)

    Session.__init__ = __init__          # the closure keeps ffi and lib alive


def _watch_modes() -> list:
    """Keep every sanitizer mode a session attaches, to read its counters after the run (none
    with an emsan older than emsan.session.sanitizer: bench/ab.py times those too)."""
    try:
        from emsan.session.sanitizer import Sanitizer
    except ImportError:
        return []

    modes = []
    init = Sanitizer.__init__

    def __init__(self, *a, **kw):
        init(self, *a, **kw)
        modes.append(self.mode)

    Sanitizer.__init__ = __init__
    return modes


def _record_stats(modes: list) -> None:
    if modes:
        STATE["sanitizer_stats"] = {k: int(v) for k, v in modes[-1].stats().items()}


def _count(program: str, args: list[str], mode: str, mem: bool) -> int:
    from emsan.machine import native      # first: the binding must load emsan's engine
    from unicorn import UC_HOOK_CODE
    from emsan.session.options import RunOptions
    from emsan.session.run import Session

    modes = _watch_modes()
    session = Session(RunOptions(program=program, args=args, mode=mode))
    ffi, lib = native.load()
    counter = ffi.new("uint64_t *")
    session.machine.hook_native(UC_HOOK_CODE, ffi.addressof(lib, "emsan_count_insn_cb"), counter)
    if mem:
        hffi, hlib = _hook_lib()
        accesses = hffi.new("uint64_t *")
        session.machine.hook_mem_access_native(hffi.addressof(hlib, "bench_count_mem_cb"), accesses, 1, 0)
    info = session.run()
    sys.stdout.flush()
    STATE["instructions"] = int(counter[0])
    if mem:
        STATE["mem_accesses"] = int(accesses[0])
    _record_stats(modes)
    return info.status


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    stats_path, mode, target, program, *args = sys.argv[1:]
    status = 70
    try:
        if mode in ("count", "count-mem"):
            if target not in EMSAN_MODES:
                raise SystemExit("probe: count mode runs emsan targets only")
            status = _count(program, args, EMSAN_MODES[target], mode == "count-mem")
        else:
            _install(first_insn=(mode == "first"), emsan=target in EMSAN_MODES)
            if target in EMSAN_MODES:
                from emsan.cli.main import main as emsan_main
                modes = _watch_modes()
                if target == "emsan-memhook":
                    _add_noop_mem_hook()
                status = emsan_main(["run", "--mode", EMSAN_MODES[target], *EXTRA_ARGS.get(target, []),
                                     program, *args])
                _record_stats(modes)
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
