"""Leak detection for a Linux guest (`--leaks`): the roots of a Linux process, a scan when it
ends (exit_group, a fatal signal) and every N instructions on request, suppressions, and the
reports, in kmemleak's layout (emsan.sanitizer.kmemleak does the scan)."""
from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from emsan.errors import EmsanError
from emsan.lazyclass import dataclass
from emsan.os.linux.memory import PROT_EXEC, PROT_READ, PROT_WRITE, Module
from emsan.report.model import LeakReport
from emsan.sanitizer.entrypoints import function_symbols
from emsan.sanitizer.kasan import Kasan
from emsan.sanitizer.kmemleak import Kmemleak, LeakGroup, Roots

if TYPE_CHECKING:
    from emsan.session.sanitizer import Sanitizer

# Registers that hold the thread pointer (TLS), beside the general ones.
THREAD_POINTER = {"x86_64": ("fs_base", "gs_base"), "arm64": ("tpidr_el0",)}
# Bytes below the stack pointer a leaf function may use without moving it (the x86-64 System V
# red zone; arm64 has none): live data when a scan stops the guest mid-function.
RED_ZONE = {"x86_64": 128, "arm64": 0}


@dataclass(frozen=True)
class Suppression:
    """A LeakSanitizer suppression, `leak:PATTERN`: PATTERN matches a function, source file or
    module name of any frame of the allocation stack; `*` is any text, `^` and `$` anchor it,
    and without anchors it may match anywhere in the name."""

    text: str
    regex: re.Pattern

    @classmethod
    def parse(cls, pattern: str) -> "Suppression":
        start, end = pattern.startswith("^"), pattern.endswith("$") and len(pattern) > 1
        core = pattern[1 if start else 0:len(pattern) - (1 if end else 0)]
        body = ".*".join(re.escape(part) for part in core.split("*"))
        return cls("leak:" + pattern, re.compile(("^" if start else "") + body + ("$" if end else "")))

    def matches(self, names: list[str]) -> bool:
        return any(self.regex.search(n) for n in names)


def load_suppressions(path: str) -> list[Suppression]:
    """LeakSanitizer's suppression file: `leak:PATTERN` lines, `#` comments, blank lines."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise EmsanError(f"--suppress {path}: {e.strerror}") from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, pattern = line.partition(":")
        if kind.strip() != "leak" or not pattern.strip():
            raise EmsanError(f"--suppress {path}:{n}: expected leak:PATTERN, got {line!r}")
        out.append(Suppression.parse(pattern.strip()))
    return out


@dataclass
class Thread:
    """What a scan needs of one thread: its registers and where its stack pointer is."""

    regs: list[int]
    sp: int


class LeakCheck:
    def __init__(self, sanitizer: Sanitizer, kasan: Kasan):
        self.san = sanitizer
        self.s = s = sanitizer.s
        opts = s.opts
        self.kml = Kmemleak(kasan)
        self.heap = (kasan.base, kasan.base + kasan.size)
        self.suppressions = load_suppressions(opts.suppress) if opts.suppress else []
        self.ignore_before_main = opts.leaks_ignore_before_main
        self.interp = s.loaded.interp
        self.leaks = 0                     # leaks reported (direct, not suppressed), every scan
        self.start_hooked = False
        if opts.leaks_scan_every:
            self.kml.scan_every(opts.leaks_scan_every)
        s.process.on_stop.append(self.on_stop)

    # --- the guest's world ---------------------------------------------------------------------
    def module_loaded(self, mod: Module) -> None:
        if self.interp is not None and mod.path == self.interp.path:
            # ld.so's allocations (TLS blocks and the dynamic thread vector of dlopen'ed
            # modules) are reached only through pointers glibc keeps outside what a scan sees:
            # LeakSanitizer makes them roots too.
            self.kml.ignore_callers(mod.start, mod.end)
        # main's start matters only to --leaks-ignore-before-main: without it, no code hook (a
        # deleted one stays in the engine's hook list, walked at every hooked call, until the
        # emulation stops; bench/leaks.py measured 8% of a malloc/free loop's CPU time).
        if self.ignore_before_main and not self.start_hooked:
            for value, _size, _kind, name in function_symbols(mod.path):
                if name == "__libc_start_main":
                    self.start_hooked = True
                    self.s.machine.hook_code_once(value + mod.base, self.libc_start_main)
                    break

    def libc_start_main(self) -> None:
        """__libc_start_main(main, ...): main's address is its first argument."""
        m, arch = self.s.machine, self.s.arch
        main = m.reg(arch.args[0])
        m.hook_code_once(main, self.kml.main_started)

    def threads(self) -> list[Thread]:
        """Every thread of the process: the running one's registers, and each parked thread's
        from its saved context (os/linux/threads.py)."""
        from emsan.os.linux.threads import loaded
        m, arch = self.s.machine, self.s.arch

        def here() -> Thread:
            return Thread([m.reg(r) for r in arch.gprs] + [m.reg(r) for r in THREAD_POINTER[arch.name]], m.sp)
        out = [here()]
        guest = self.s.process.threads
        for t in guest.all if guest is not None else []:
            if t is not guest.current and t.ctx is not None:
                with loaded(m, t.ctx):
                    out.append(here())
        return out

    def roots(self) -> Roots:
        """Module data, BSS and RELRO, the guest's own writable mappings (brk, mmap, TLS), each
        thread's stack from its stack pointer up and its registers; never emsan's heap."""
        mem, arch = self.s.mem, self.s.arch
        threads = self.threads()
        stacks = {}
        for t in threads:
            mp = mem.find(t.sp)
            if mp is not None:
                stacks[mp.start] = (max(t.sp - RED_ZONE[arch.name], mp.start), mp.end)
        spans = [(mod.start, mod.end) for mod in mem.modules]
        roots = Roots()
        for mp in mem.mappings:
            if mp.start < self.heap[1] and self.heap[0] < mp.end:
                continue
            if mp.start in stacks:
                roots.ranges.append(stacks[mp.start])
                continue
            module_data = mp.prot & PROT_READ and not mp.prot & PROT_EXEC and \
                any(lo <= mp.start < hi for lo, hi in spans)
            if mp.prot & PROT_WRITE or module_data:
                roots.ranges.append((mp.start, mp.end))
        for t in threads:
            roots.words += t.regs
        return roots

    # --- scans -----------------------------------------------------------------------------------
    def on_stop(self) -> str | None:
        if not self.kml.take_due():
            return None
        self.scan()
        return "continue"

    def at_exit(self) -> None:
        self.scan()

    def scan(self) -> None:
        groups = self.kml.scan(self.roots(), self.ignore_before_main)
        now = self.kml.stats()["now_jiffies"]
        shown = suppressed = 0
        used: dict[str, list[int]] = {}
        for g in groups:
            rep = self.report(g, now)
            if rep.suppressed_by:
                if not g.indirect:
                    n = used.setdefault(rep.suppressed_by, [0, 0])
                    n[0] += g.count
                    n[1] += g.bytes
                    suppressed += g.count
                continue
            if not g.indirect:
                shown += g.count
            self.san.emit_leak(rep)
        self.leaks += shown
        direct = [g for g in groups if not g.indirect]
        if shown:
            self.summary(groups, shown)
        for text, (n, b) in used.items():
            print(f"emsan: kmemleak: {n} leak{'s' if n > 1 else ''} ({b} bytes) suppressed by {text}",
                  file=sys.stderr)
        self.san.leak_scan_done({"new": shown, "suppressed": suppressed, "groups": len(direct),
                                 "suppressions": {t: {"objects": n, "bytes": b} for t, (n, b) in used.items()}})

    def summary(self, groups: list[LeakGroup], shown: int) -> None:
        direct = [g for g in groups if not g.indirect and not self.suppressed_by(g)]
        nbytes = sum(g.bytes for g in direct)
        ind_n, ind_b = sum(g.indirect_count for g in direct), sum(g.indirect_bytes for g in direct)
        more = f"; {ind_n} more object{'s' if ind_n > 1 else ''} ({ind_b} bytes) referenced only from them" \
            if ind_n else ""
        print(f"emsan: kmemleak: {shown} new suspected memory leak{'s' if shown > 1 else ''} ({nbytes} bytes from "
              f"{len(direct)} allocation stack{'s' if len(direct) > 1 else ''}{more})", file=sys.stderr, flush=True)

    def suppressed_by(self, g: LeakGroup) -> str:
        if not self.suppressions:
            return ""
        names: list[str] = []
        for f in self.s.symbolizer.stack(g.stack, False):
            names += [n for n in (f.function, f.file, f.module) if n]
        return next((sup.text for sup in self.suppressions if sup.matches(names)), "")

    def report(self, g: LeakGroup, now: int) -> LeakReport:
        return LeakReport(self.san.mode.name, self.san.task, g.addr, g.size, g.jiffies, max(now - g.jiffies, 0),
                          g.head, g.stack, g.count, g.bytes, g.indirect_count, g.indirect_bytes, g.objects,
                          g.indirect, self.suppressed_by(g))
