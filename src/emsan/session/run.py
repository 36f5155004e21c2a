"""`emsan run`: load a program, attach the chosen sanitizer mode, run it, report, exit."""
from __future__ import annotations

import os
import shutil
import sys
from typing import Callable

from emsan.errors import EXIT_RESOURCES, EmsanError
from emsan.machine import Machine
from emsan.os.linux.elf import open_elf
from emsan.os.linux.loader import load_program
from emsan.os.linux.memory import MemoryMap
from emsan.os.linux.process import ExitInfo, Process
from emsan.report.symbolize import Symbolizer
from emsan.session.crash import oops, oops_json
from emsan.os.linux.execve import read_env
from emsan.session import processes
from emsan.session.options import RunOptions
from emsan.session.outputs import write_outputs

# Signals whose default action dumps core: a crash worth a report. Others (SIGPIPE, SIGTERM...)
# end the run as quietly as a shell would show them.
CORE_SIGNALS = {3, 4, 5, 6, 7, 8, 11, 24, 25, 31}
DEBIAN_ARM64_SYSROOT = "/usr/aarch64-linux-gnu"
BARE_SHADOW = "bare-shadow"      # --mode none on an instrumented program: its shadow and nothing else


def find_program(name: str) -> str:
    if "/" in name:
        return name
    found = shutil.which(name)
    if found is None:
        raise EmsanError(f"{name}: command not found in PATH")
    return found


def guest_env(opts: RunOptions) -> list[str]:
    env = dict(os.environ)
    for k in opts.env_unset:
        env.pop(k, None)
    env.update(opts.env_set)
    return [f"{k}={v}" for k, v in env.items()]


def choose_mode(mode: str, path: str, data: bytes) -> str:
    """Compiler-assisted mode whenever the program was built for it (it cannot run without its
    shadow): generic becomes compiler-assisted, and none becomes the bare shadow mapping with no
    emsan policy (the benchmarks' baseline for the instrumented binary)."""
    from emsan.runtime import REPORT_SYMBOL

    instrumented = False
    if REPORT_SYMBOL.encode() + b"\0" in data:         # the file's bytes first: no ELF parsing for most
        from emsan.sanitizer.modes.compiler import is_instrumented
        instrumented = is_instrumented(path)
    if mode == "compiler-assisted" and not instrumented:
        raise EmsanError(f"{path}: not built for compiler-assisted mode (build it with clang $(emsan cflags))")
    if not instrumented:
        return mode
    if mode == "kfence":
        raise EmsanError(f"{path}: built for compiler-assisted mode (clang $(emsan cflags)); "
                         "it runs with --mode generic or none, not kfence")
    return {"generic": "compiler-assisted", "none": BARE_SHADOW}.get(mode, mode)


def quiet_std_fds() -> None:
    """An image after exec: the guest's descriptors are its own copies now; the host's 0, 1, 2
    become /dev/null, so that the guest closing one closes it (emsan writes to --log-fd)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


class Session:
    """Everything one run of one guest needs, built in the order the layers depend on each other."""

    def __init__(self, opts: RunOptions):
        from emsan.arch import BY_ELF_MACHINE

        self.opts = opts
        path = find_program(opts.program)
        image = open_elf(path)
        self.arch = BY_ELF_MACHINE[image.machine]
        sysroot = opts.sysroot
        if sysroot is None and self.arch.name == "arm64" and os.path.isdir(DEBIAN_ARM64_SYSROOT):
            sysroot = DEBIAN_ARM64_SYSROOT
        if sysroot is not None and not os.path.isdir(sysroot):
            raise EmsanError(f"--sysroot {sysroot}: not a directory")
        self.machine = Machine(self.arch.name)
        self.mem = MemoryMap(self.machine)
        seed_bytes = (opts.seed or 0).to_bytes(16, "little") if opts.seed is not None else os.urandom(16)
        env = guest_env(opts) if opts.env_fd is None else read_env(opts.env_fd)
        argv0 = opts.program if opts.argv0 is None else opts.argv0
        self.loaded = load_program(self.mem, self.arch.name, path, [argv0, *opts.args], env, sysroot, seed_bytes)
        self.machine.sp = self.loaded.sp
        self.process = Process(self.machine, self.arch, self.mem, os.path.abspath(path), sysroot,
                               opts.seed, opts.trace_syscalls, inherit_fds=opts.guest_fds,
                               threads_slice=opts.threads_slice)
        if opts.guest_fds is not None:
            quiet_std_fds()
        processes.attach(self)
        processes.adopt_signals(self.process, *opts.signals)
        self.symbolizer = Symbolizer(self.mem, sysroot)
        self.mode = choose_mode(opts.mode, path, image.data)
        self.sanitizer = None
        if self.mode == BARE_SHADOW:
            from emsan.os.linux.memory import SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE
            from emsan.sanitizer.modes.compiler import BareShadow
            self.sanitizer = BareShadow(self.machine, self.arch, opts.stats, (SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE))
        elif self.mode != "none":
            from emsan.sanitizer.modes import mode_class
            from emsan.session.sanitizer import Sanitizer
            self.sanitizer = Sanitizer(self, mode_class(self.mode))
        self.limit_resources()

    def limit_resources(self) -> None:
        """--shadow-limit, and the end of the run when emsan's own state runs out (native/exhaust.c):
        one line and EXIT_RESOURCES, not a guest that meets a half-built shadow."""
        from emsan.machine import native
        ffi, lib = native.load()
        kasan = getattr(getattr(self.sanitizer, "mode", None), "kasan", None) or getattr(self.sanitizer, "kasan", None)
        if self.opts.shadow_limit is not None and kasan is not None:
            lib.emsan_shadow_set_limit(kasan.k, self.opts.shadow_limit >> 12)

        def exhausted():
            what = lib.emsan_exhausted()
            if what == ffi.NULL:
                return None
            self.out_of = ffi.string(what).decode()
            return ExitInfo("resources", EXIT_RESOURCES)
        self.out_of = ""
        self.process.on_stop.insert(0, exhausted)

    def run(self) -> ExitInfo:
        return self.process.run(self.loaded.entry, self.opts.timeout, self.opts.max_instructions)

    @property
    def reports(self) -> list[dict]:
        """The JSON of every report so far (none without a reporting mode)."""
        return getattr(self.sanitizer, "reports", [])

    @property
    def json_extra(self) -> dict:
        """What the JSON holds besides the reports (the leak scans)."""
        extra = getattr(self.sanitizer, "json_extra", None)
        return extra() if extra is not None else {}

    @property
    def texts(self) -> list[str]:
        """The text of every report so far, as printed (the same order)."""
        return getattr(self.sanitizer, "texts", [])


def deadlock_message(s: Session) -> str:
    """Every thread waits and nothing (a descriptor, a timeout, a timer, another process) could
    ever wake one: each thread's PC and what it waits for."""
    p = s.process
    lines = [f"emsan: deadlock: all {len(p.threads.all)} threads of {p.comm}/{p.pid} wait forever "
             "(no descriptor, timeout or timer could wake any):"]
    for tid, pc, what in p.threads.deadlock:
        lines.append(f"  thread {tid} at {s.symbolizer.frame(pc)}: {what}")
    return "\n".join(lines)


def run(opts: RunOptions, started: Callable[[], None] | None = None) -> int:
    """Run the guest to its end and report; started() is called once everything is set up, before
    the guest's first instruction."""
    s = Session(opts)
    if started is not None:
        started()
    info = s.run()
    sys.stdout.flush()
    fatal = info.kind == "signal" and info.signal in CORE_SIGNALS
    if info.kind == "resources":
        limit = f" (--shadow-limit {opts.shadow_limit})" if s.out_of == "shadow memory" and opts.shadow_limit else ""
        print(f"emsan: out of {s.out_of}{limit}: the run stops here, at {s.symbolizer.frame(s.machine.pc)}",
              file=sys.stderr)
    elif fatal:
        print(oops(s.process, info, s.symbolizer), file=sys.stderr)
    elif info.kind == "timeout":
        print(f"emsan: time limit of {opts.timeout:g} s reached; guest stopped at {s.symbolizer.frame(s.machine.pc)}",
              file=sys.stderr)
    elif info.kind == "deadlock":
        print(deadlock_message(s), file=sys.stderr)
    elif info.kind == "max-instructions":
        print(f"emsan: instruction limit of {opts.max_instructions} reached; guest stopped at "
              f"{s.symbolizer.frame(s.machine.pc)}", file=sys.stderr)
    status = s.sanitizer.finish(info) if s.sanitizer is not None else info.status
    if opts.json_path or opts.sarif_path:
        # a fatal signal is a record there too (what triage groups when no report was made)
        write_outputs(opts, s.reports, oops_json(s.process, info, s.symbolizer) if fatal else None,
                      warn=s.process.warn_once, extra=s.json_extra)
    if info.kind == "exit" and getattr(s.sanitizer, "reports", None):
        # --continue: a run that reported ends with the error status even though the guest
        # exited on its own (Valgrind's --error-exitcode), so CI notices.
        status = opts.error_exitcode
    if s.process.is_child:          # a child process: its parent's wait4 sees what it would natively
        if info.kind == "signal":
            processes.die_like(info.signal)
        processes.leave(status)
    return status
    return info.status
