"""`emsan` command line. Errors are one line on stderr with a documented exit status."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable

from emsan.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_REPORT, EmsanError
from emsan.session.options import RunOptions



class ModeNames:
    """--mode's choices: none, and the modes registered in emsan.sanitizer.modes, imported only
    when a mode other than none is checked or the choices are listed (help, a bad choice)."""

    def _names(self) -> list[str]:
        from emsan.sanitizer.modes import mode_names
        return ["none", *mode_names()]

    def __contains__(self, name: object) -> bool:
        from emsan.sanitizer.modes import mode_class
        try:
            return name == "none" or (isinstance(name, str) and mode_class(name) is not None)
        except KeyError:
            return False

    def __iter__(self):
        return iter(self._names())


def _env_pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    k, v = text.split("=", 1)
    return k, v


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if not 0 <= value < 1 << 63:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return value


def _integer(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}: {text!r}")
        return v
    return parse


_positive = _integer(1, (1 << 63) - 1)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < v < 1e9:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return v


def run_option_tokens(head: list[str], command: str, own: dict[str, bool], positional=()) -> list[str]:
    """The `emsan run` options among the tokens before a fleet/fuzz/triage's program: everything
    but the command's own options (name -> takes a value), its positionals and `--`."""
    out: list[str] = []
    i = 0
    while i < len(head):
        tok = head[i]
        name = tok.split("=", 1)[0]
        if (i == 0 and tok == command) or tok == "--" or tok in positional:
            pass
        elif name in own:
            if own[name] and "=" not in tok:
                i += 1
        else:
            out.append(tok)
        i += 1
    return out


def has_option(tokens: list[str], name: str) -> bool:
    """Is option `name` (--seed) among the tokens, as `--seed N` or `--seed=N`?"""
    return any(t == name or t.startswith(name + "=") for t in tokens)


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=ModeNames(), default="generic", metavar="MODE",
                   help="sanitizer mode: %(choices)s (default: generic; compiler-assisted for a program built "
                        "with clang $(emsan cflags))")
    p.add_argument("--sysroot", metavar="DIR", help="root for the guest's libraries (arm64 default: "
                                                     "Debian's cross root /usr/aarch64-linux-gnu)")
    p.add_argument("--env", action="append", default=[], type=_env_pair, metavar="K=V", help="set a guest variable")
    p.add_argument("--unset-env", action="append", default=[], metavar="K", help="remove a guest variable")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="stop the guest after this wall time")
    p.add_argument("--max-instructions", type=_positive, metavar="N", help="stop the guest after N instructions")
    p.add_argument("--seed", type=_integer(0, (1 << 64) - 1),
                   help="seed for guest randomness (AT_RANDOM, getrandom), sampling and tags")
    p.add_argument("--trace-syscalls", action="store_true", help="print each system call on stderr")
    p.add_argument("--threads-slice", type=_positive, metavar="N",
                   help="guest threads: translated blocks a thread runs before the next one's turn (default "
                        "20000); the schedule is deterministic, so runs with --seed interleave the same way")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="also write reports as JSON to FILE")
    p.add_argument("--sarif", dest="sarif_path", metavar="FILE",
                   help="also write reports as a SARIF 2.1.0 log to FILE (code-scanning dashboards)")
    p.add_argument("--error-exitcode", type=_integer(0, 255), default=EXIT_REPORT,
                   help=f"exit status after a report: when it stops the run, or with --continue when the "
                        f"guest exits after one (default {EXIT_REPORT})")
    p.add_argument("--continue", dest="keep_going", action="store_true",
                   help="keep running after a report (each distinct bug is reported once)")
    p.add_argument("--quarantine-size", type=_size, default=256 << 20, metavar="BYTES",
                   help="bytes of freed objects kept poisoned before reuse (default 256M)")
    p.add_argument("--allocator-errors", choices=("report", "null"), default="report",
                   help="KASAN modes: report an allocation the allocator refuses (size too big, overflow, "
                        "invalid alignment, out of memory) as ASan does (default), or only fail it as the C "
                        "library does (NULL and errno, std::bad_alloc)")
    p.add_argument("--stats", action="store_true", help="print sanitizer statistics at exit")
    p.add_argument("--shadow", choices=("per-page", "full"), default="per-page",
                   help="shadow pages shared where nothing needs its own (default), or private wherever written")
    p.add_argument("--checks", choices=("inline", "mmio", "hook"), default="inline",
                   help="generic and tag modes: check heap accesses in translated code (default; x86-64 hosts, "
                        "the MMIO view elsewhere), through an MMIO view of the heap (tag modes: where the TLB finds "
                        "a page with other tags), or every access in a memory hook")
    p.add_argument("--no-mmap-shadow", dest="mmap_shadow", action="store_false",
                   help="no vmalloc-like shadow for the mmap area (holes then fault without a KASAN report)")
    p.add_argument("--kfence-objects", type=_integer(1, 65535), default=255, metavar="N",
                   help="kfence: objects in the guarded pool, (N+1)*2 pages (default 255)")
    p.add_argument("--sample-interval", type=_integer(1, (1 << 31) - 1), default=100, metavar="N",
                   help="kfence: send every Nth allocation to the pool (default 100)")
    p.add_argument("--sample-instructions", type=_positive, default=0, metavar="N",
                   help="kfence: sample by guest time instead: one allocation per N guest instructions")
    p.add_argument("--stacks", choices=("auto", "fp", "cfi", "scs", "x18", "none"), default="auto",
                   help="allocation/free stack collector (default: auto, the cheapest complete one)")
    p.add_argument("--stack-checks", choices=("auto", "none", "ret", "full"), default="auto",
                   help="ret: keep each call's return address and report a return through an overwritten "
                        "one; full: ret, and ranges libc functions and system calls touch on the stack checked "
                        "against the frame's local variables (DWARF) or its bounds (default auto: full where the "
                        "scs stack collector runs, none in the kfence and compiler-assisted modes and with "
                        "the other collectors)")
    p.add_argument("--no-depot", action="store_true", help="store every stack trace separately (no dedup)")
    p.add_argument("--leaks", action="store_true", default=None,
                   help="find leaks when the guest ends, as kmemleak does (default: on in every mode with "
                        "emsan's allocator, i.e. all but kfence)")
    p.add_argument("--no-leaks", dest="leaks", action="store_false", help="no leak scan")
    p.add_argument("--suppress", metavar="FILE", help="leak suppressions, LeakSanitizer's leak:PATTERN lines")
    p.add_argument("--leaks-scan-every", type=_positive, default=0, metavar="N",
                   help="also scan for leaks every N guest instructions (only new leaks are reported)")
    p.add_argument("--leaks-ignore-before-main", action="store_true",
                   help="objects allocated before main() are never leaks")
    p.add_argument("--shadow-limit", type=_size, metavar="BYTES",
                   help="private shadow emsan may use before it stops the run (default and most: 4G)")
    p.add_argument("--no-follow-exec", dest="follow_exec", action="store_false",
                   help="run the images a guest execs natively, not under emsan (faster, unchecked)")
    # How a guest's execve hands its state to the new image (emsan re-executes itself with these).
    hidden = argparse.SUPPRESS
    p.add_argument("--argv0", help=hidden)
    p.add_argument("--env-fd", type=int, help=hidden)
    p.add_argument("--guest-fds", type=lambda t: [int(x) for x in t.split(",") if x], help=hidden)
    p.add_argument("--log-fd", type=int, help=hidden)
    p.add_argument("--signals", type=lambda t: tuple(int(x) for x in t.split(":")), default=(0, 0), help=hidden)
    p.add_argument("--child", dest="is_child", action="store_true", help=hidden)
    p.add_argument("--json-base", help=hidden)
    p.add_argument("--json-append", action="store_true", help=hidden)


class _Version(argparse.Action):
    """`emsan --version`: emsan's version and the engine build that runs (library, patches)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from emsan import __version__
        try:
            from emsan.machine import unicorn_lib
            text = unicorn_lib.describe()
        except EmsanError as e:
            print(f"emsan {__version__}\nemsan: {e}", file=sys.stderr)
            parser.exit(e.status)
        print(f"emsan {__version__}\n{text}")
        parser.exit(0)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """emsan's parser. With `argv` starting with `run`, only the run command's: the others import
    their modules (fleet's process pools, triage's hashing) and add ~50 options each, a fifth of
    the start-up of a short run; what argparse makes of `emsan run ...` is the same either way."""
    parser = argparse.ArgumentParser(prog="emsan", description="Memory error detection for programs run under emulation")
    parser.add_argument("--version", action=_Version, help="print emsan's version and its engine build, and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run a Linux x86-64 or arm64 program under emsan")
    add_run_options(run_p)
    run_p.add_argument("program", help="the ELF executable (searched in PATH if it has no slash)")
    run_p.add_argument("args", nargs=argparse.REMAINDER, help="the program's arguments")
    if argv and argv[0] == "run":
        return parser
    from emsan.cli import fleet, fuzz, triage
    fleet.add_parser(sub, add_run_options)
    fuzz.add_parser(sub, add_run_options)
    triage.add_parser(sub, add_run_options, fleet.add_scheduler_option)
    cf = sub.add_parser("cflags", help="print the clang flags of compiler-assisted mode: clang $(emsan cflags) ...")
    cf.add_argument("--arch", choices=("x86_64", "arm64"), help="the guest's architecture (default: the host's)")
    cf.add_argument("--outline", action="store_true",
                    help="outline instrumentation (a call per access instead of inline checks)")
    return parser


def run_options(ns: argparse.Namespace) -> RunOptions:
    return RunOptions(program=ns.program, args=ns.args, env_set=dict(ns.env), env_unset=ns.unset_env,
                      sysroot=ns.sysroot, mode=ns.mode, timeout=ns.timeout, max_instructions=ns.max_instructions,
                      seed=ns.seed, trace_syscalls=ns.trace_syscalls, json_path=ns.json_path,
                      threads_slice=ns.threads_slice,
                      sarif_path=ns.sarif_path,
                      error_exitcode=ns.error_exitcode, keep_going=ns.keep_going,
                      quarantine_size=ns.quarantine_size, allocator_errors=ns.allocator_errors, stats=ns.stats, shadow=ns.shadow, mmap_shadow=ns.mmap_shadow, checks=ns.checks,
                      kfence_objects=ns.kfence_objects, sample_interval=ns.sample_interval,
                      sample_instructions=ns.sample_instructions,
                      stacks=ns.stacks, stack_checks=ns.stack_checks, no_depot=ns.no_depot, leaks=True if ns.leaks_scan_every else ns.leaks,
                      suppress=ns.suppress, leaks_scan_every=ns.leaks_scan_every,
                      leaks_ignore_before_main=ns.leaks_ignore_before_main,
                      shadow_limit=ns.shadow_limit,
                      follow_exec=ns.follow_exec, argv0=ns.argv0, env_fd=ns.env_fd, guest_fds=ns.guest_fds,
                      log_fd=ns.log_fd, signals=ns.signals, is_child=ns.is_child, json_base=ns.json_base,
                      json_append=ns.json_append)


def one_line(text: str) -> str:
    """A message on one line whatever a file's bytes put in it (a path with a newline, control
    characters, bytes that are not UTF-8): those are shown escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


class LossyStream:
    """emsan's own diagnostics on stderr: when the stream cannot take them (a full disk, a closed
    pipe, a file-size limit), they are lost, not the run and its exit status."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def guarded(body: Callable[[], int]) -> int:
    """body()'s exit status, or the status of how it failed: bad input (one line, its own status),
    an interrupt, or a bug in emsan (one `emsan: internal error` line, the traceback only with
    EMSAN_DEBUG=1)."""
    try:
        return body()
    except EmsanError as e:
        print(f"emsan: {one_line(str(e))}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:                # our stdout's reader went away (`emsan --version | head -0`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail again
        return 128 + signal.SIGPIPE            # what a shell shows for a program SIGPIPE ended
    except Exception as e:  # a bug in emsan
        if os.environ.get("EMSAN_DEBUG"):
            raise
        print(f"emsan: internal error: {type(e).__name__}: {one_line(str(e))} (set EMSAN_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    if not isinstance(sys.stderr, LossyStream):
        sys.stderr = LossyStream(sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: command(build_parser(args).parse_args(args), args))


def entry() -> None:
    """The `emsan` command and `python -m emsan`. After `emsan run`, the process leaves as a
    guest's child process does (session/processes.leave: output flushed, then os._exit), without
    the interpreter's finalization: tearing down ~250 modules and the engine (its translation
    buffer, the guest's memory, the shadow), which the kernel frees at exit anyway, was 20-35 ms
    of every short run (bench/startup.py). A run keeps no buffered file and no atexit work; the
    other commands (process pools, dask) exit normally."""
    args = sys.argv[1:]
    status = main(args)
    if args[:1] == ["run"]:
        try:
            from emsan.session.processes import leave
        except EmsanError:              # no engine to run on (reported already): nothing ran
            sys.exit(status)
        leave(status)
    sys.exit(status)


def command(ns: argparse.Namespace, argv: list[str]) -> int:
    if ns.command == "run":
        from emsan.session.run import run
        opts = run_options(ns)
        if opts.log_fd is not None:           # an image after a guest's execve (session/processes.py)
            sys.stderr = LossyStream(os.fdopen(opts.log_fd, "w", buffering=1))
            os.set_inheritable(opts.log_fd, False)
        if not opts.json_append:
            opts.check_outputs()
        return run(opts)
    if ns.command == "cflags":
        from emsan.runtime import cflags
        print(" ".join(cflags(ns.arch, ns.outline)))
        return 0
    if ns.command == "fleet":
        from emsan.cli.fleet import run_fleet
        return run_fleet(argv, ns)
    if ns.command == "fuzz":
        from emsan.cli.fuzz import run_fuzz
        return run_fuzz(argv, ns)
    if ns.command == "triage":
        from emsan.cli.triage import run_triage
        return run_triage(argv, ns)
    return EXIT_BAD_INPUT
