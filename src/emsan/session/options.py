"""Everything a run can be told, independent of how the CLI spells it."""
from __future__ import annotations

import errno
import os
from dataclasses import field

from emsan.errors import EXIT_REPORT, EmsanError
from emsan.lazyclass import dataclass

EMPTY_JSON = b'{"tool": "emsan", "reports": []}\n'


@dataclass
class RunOptions:
    """Everything `emsan run` was asked for."""

    program: str
    args: list[str] = field(default_factory=list)
    env_set: dict[str, str] = field(default_factory=dict)
    env_unset: list[str] = field(default_factory=list)
    sysroot: str | None = None
    mode: str = "generic"
    timeout: float | None = None
    max_instructions: int | None = None
    seed: int | None = None
    trace_syscalls: bool = False
    json_path: str | None = None
    sarif_path: str | None = None     # --sarif: reports as a SARIF 2.1.0 log
    error_exitcode: int = EXIT_REPORT
    keep_going: bool = False          # --continue: the kernel's multi-shot
    quarantine_size: int = 256 << 20
    allocator_errors: str = "report"  # --allocator-errors: report refused allocations, or only fail them
    stats: bool = False
    shadow: str = "per-page"          # --shadow: per-page (shared zero/black pages) or full
    checks: str = "inline"            # --checks: heap accesses checked by translated code, through MMIO, or by a memory hook
    mmap_shadow: bool = True          # --no-mmap-shadow: leave the mmap area unshadowed (the ablation)
    stacks: str = "auto"              # --stacks: allocation/free stack collector
    no_depot: bool = False            # --no-depot: every trace stored separately
    stack_checks: str = "auto"        # --stack-checks: none, ret (return addresses), full (and stack objects)
    kfence_objects: int = 255         # --kfence-objects: pool size (CONFIG_KFENCE_NUM_OBJECTS)
    sample_interval: int = 100        # --sample-interval: every Nth allocation goes to the pool
    sample_instructions: int = 0      # --sample-instructions: or one per N guest instructions
    leaks: bool | None = None         # --leaks / --no-leaks: kmemleak's scan when the guest ends (None: the
                                      # default, on where the mode owns every allocation)
    suppress: str | None = None       # --suppress FILE: LeakSanitizer's leak:PATTERN lines
    leaks_scan_every: int = 0         # --leaks-scan-every N: also a scan every N guest instructions
    leaks_ignore_before_main: bool = False   # --leaks-ignore-before-main: objects allocated before main are roots
    shadow_limit: int | None = None   # --shadow-limit: bytes of private shadow emsan may use
    follow_exec: bool = True          # --no-follow-exec: a guest's execve runs the new image natively
    threads_slice: int | None = None  # --threads-slice: blocks a guest thread runs before the next one
    # A new image after a guest's execve (session/processes.py sets these on the command line it
    # re-executes; they are hidden from --help):
    argv0: str | None = None          # the guest's argv[0] (the program is the resolved path)
    env_fd: int | None = None         # a descriptor holding the guest's envp, NUL-separated
    guest_fds: list[int] | None = None    # the host descriptors that are the guest's, same numbers
    log_fd: int | None = None         # emsan's own stderr (the guest's fd 2 may be elsewhere)
    signals: tuple[int, int] = (0, 0) # ignored signals and the blocked mask the image inherits
    is_child: bool = False            # a child process: killed by a signal, emsan dies of it too
    json_base: str | None = None      # --json of the first process: children write json_base.PID
    json_append: bool = False         # keep the reports the file holds (the image before exec)
    json_lazy: bool = False           # a child's files: written only if it has a report or a crash

    def to_argv(self, timeout: float | None) -> list[str]:
        """The command-line options of this run, as a new image after exec takes them again."""
        a = ["--mode", self.mode, "--error-exitcode", str(self.error_exitcode),
             "--quarantine-size", str(self.quarantine_size), "--shadow", self.shadow, "--checks", self.checks,
             "--stacks", self.stacks, "--kfence-objects", str(self.kfence_objects),
             "--sample-interval", str(self.sample_interval)]
        flags = {"--trace-syscalls": self.trace_syscalls, "--continue": self.keep_going, "--stats": self.stats,
                 "--no-mmap-shadow": not self.mmap_shadow, "--no-depot": self.no_depot,
                 "--no-follow-exec": not self.follow_exec}
        a += [k for k, on in flags.items() if on]
        values = {"--sysroot": self.sysroot and os.path.abspath(self.sysroot), "--timeout": timeout,
                  "--max-instructions": self.max_instructions, "--seed": self.seed,
                  "--sample-instructions": self.sample_instructions or None, "--shadow-limit": self.shadow_limit,
                  "--threads-slice": self.threads_slice}
        for k, v in values.items():
            if v is not None:
                a += [k, str(v)]
        if self.json_path:
            a += ["--json", os.path.abspath(self.json_path), "--json-append",
                  "--json-base", os.path.abspath(self.json_base or self.json_path)]
        if self.sarif_path:
            a += ["--sarif", os.path.abspath(self.sarif_path)]
        if self.leaks is not None:
            a += ["--leaks" if self.leaks else "--no-leaks"]
        if self.suppress:
            a += ["--suppress", os.path.abspath(self.suppress)]
        if self.leaks_scan_every:
            a += ["--leaks-scan-every", str(self.leaks_scan_every)]
        if self.leaks_ignore_before_main:
            a += ["--leaks-ignore-before-main"]
        a += ["--allocator-errors", self.allocator_errors]
        return a

    def outputs(self) -> list[tuple[str, str, bytes]]:
        """Every file a run writes: (option, path, what it holds before the first report)."""
        out = [("--json", self.json_path, EMPTY_JSON)] if self.json_path is not None else []
        if self.sarif_path is not None:
            import json

            from emsan.report.sarif import from_reports
            empty = from_reports([], " ".join([self.program, *self.args]), self.program)
            out.append(("--sarif", self.sarif_path, (json.dumps(empty, indent=2) + "\n").encode()))
        return out

    def check_outputs(self) -> None:
        """Open every output file and write its empty form before the guest runs, so that a path
        that cannot take it (missing directory, a directory, no permission, a full device, a
        FIFO nobody reads) is one clear error now, not a report lost at the end."""
        for option, path, empty in self.outputs():
            if not path:
                raise EmsanError(f"{option}: empty file name")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
                try:
                    if os.write(fd, empty) != len(empty):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                finally:
                    os.close(fd)
            except OSError as e:
                why = "no process reads that FIFO" if e.errno == errno.ENXIO else e.strerror
                raise EmsanError(f"{option} {path}: cannot write: {why}") from None
