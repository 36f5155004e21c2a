"""emsan on a Unicorn engine the user made: `emsan.attach(uc, "x86_64", ...)`.

A fuzzing harness or a firmware rehosting script already has its `Uc`, its memory map and its own
way of running code. emsan adds generic KASAN to it: a heap region of its own (mapped into the
engine), its allocator standing in for the target's at the entry points the user names (or none,
when the harness places every input through `malloc()` here), a native shadow check on every
memory access, and reports as Python objects, kernel-style text and JSON: raised as
`ReportError` from `run()`/`check()`, or handed to an `on_report` callback as they happen.
`fuzz()` serves AFL++ from the engine's current state, a report being a crash.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from emsan.errors import EmsanError
from emsan.machine import Machine
from emsan.os.linux.memory import Module
from emsan.report.json import to_json
from emsan.report.symbolize import Symbolizer
from emsan.report.text import render
from emsan.sanitizer.generic import GenericMode
from emsan.sanitizer.stacks import Stacks

DEFAULT_HEAP = 0x60_0000_0000            # below 2**40: inside the physical range of every arm64 CPU model
PAGE = 0x1000


@dataclass
class Report:
    """One sanitizer report: what the kernel's text says, as fields, plus its renderings."""
    bug_type: str
    access: str                         # read / write / free
    address: int
    size: int
    pc: int
    function: str | None
    text: str                           # the kernel's KASAN layout
    json: dict                          # emsan's JSON (the same as `emsan run --json` writes)
    frames: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


class ReportError(Exception):
    """Raised by Sanitizer.run() and check() when the engine stopped on a report."""

    def __init__(self, report: Report):
        super().__init__(report.text.splitlines()[1] if report.text else report.bug_type)
        self.report = report


class _Modules:
    """The memory-map face the symbolizer needs: which module an address belongs to."""

    def __init__(self, modules: list[Module]):
        self.modules = modules

    def module_at(self, addr: int) -> Module | None:
        return next((m for m in self.modules if m.start <= addr < m.end), None)

    def find(self, addr: int):
        return None


def _fn_name(key: str) -> str:
    return key.replace("[]", "_array").replace(" ", "_").upper()


class Sanitizer:
    def __init__(self, uc, arch: str, *, heap: tuple[int, int] | None = None,
                 allocator: dict[str, int] | None = None, modules: list[tuple[str, int]] = (),
                 stack: tuple[int, int] | None = None, quarantine: int = 16 << 20,
                 on_report: Callable[[Report], None] | None = None, comm: str = "harness"):
        if arch not in ("x86_64", "arm64"):
            raise EmsanError(f"attach: unsupported architecture {arch!r} (x86_64 or arm64)")
        from emsan.arch import ARCHES
        self.arch = ARCHES[arch]
        self.machine = Machine(arch, uc)
        self.uc = uc
        base, size = heap or (DEFAULT_HEAP, 256 << 20)
        # The heap, and a scratch page pair for calls made from Python (malloc/free below).
        uc.mem_map(base, size)
        self.scratch = base + size
        uc.mem_map(self.scratch, 4 * PAGE)
        self.mode = GenericMode(self.machine, self.arch, base, size, quarantine)
        self.mode.set_stack(*(stack or (0, 1 << 48)))
        self.stacks = Stacks(self.machine, self.mode.heap, arch == "arm64", "fp", False)
        self.mode.stacks = self.stacks
        mods = []
        for path, bias in modules:
            from emsan.os.linux.elf import open_elf
            lo, hi = open_elf(path, what="module", need_exec=False).span
            mods.append(Module(path, bias, lo + bias, hi + bias))
        self.symbolizer = Symbolizer(_Modules(mods))
        self.comm, self.pid = comm[:15], os.getpid()
        self.reports: list[Report] = []
        self._pending: list[Report] = []
        for name, addr in (allocator or {}).items():
            self.intercept(name, addr)
        # malloc()/free() from Python: emsan's entry points on two scratch addresses, called with
        # the engine's registers saved and restored around the call.
        self._malloc_at, self._free_at, self._ret_at = self.scratch, self.scratch + 0x10, self.scratch + 0x20
        self.mode.intercept(self._malloc_at, "MALLOC")
        self.mode.intercept(self._free_at, "FREE")
        self.on_report = on_report
        if on_report is not None:
            self.mode.on_error(self._report_now)

    # --- wiring ------------------------------------------------------------------------------------
    def intercept(self, name: str, addr: int) -> None:
        """emsan's `name` (malloc, free, calloc, realloc, memalign, aligned_alloc, new, new[],
        delete, delete[], memcpy, strlen, ...) stands in for the function at `addr`."""
        fn = _fn_name(name)
        if not hasattr(self.mode.heap.lib, "EMSAN_FN_" + fn):
            raise EmsanError(f"attach: emsan has no stand-in for {name!r}")
        self.mode.intercept(addr, fn)

    # --- inputs ------------------------------------------------------------------------------------
    def _call(self, addr: int, args: list[int]) -> int:
        ctx = self.uc.context_save()
        try:
            m = self.machine
            m.sp = self.scratch + 4 * PAGE - 0x100
            self.arch.setup_call(m, args, self._ret_at)
            self.uc.emu_start(addr, self._ret_at, 0, 1000)
            return m.reg(self.arch.ret)
        finally:
            self.uc.context_restore(ctx)

    def malloc(self, size: int) -> int:
        """An object of exactly `size` bytes in emsan's heap (redzones around it), for an input."""
        p = self._call(self._malloc_at, [size])
        if not p:
            raise MemoryError(f"emsan's heap has no room for {size} bytes")
        return p

    def free(self, addr: int) -> None:
        self._call(self._free_at, [addr])
        self.check()

    def place(self, data: bytes) -> int:
        """malloc(len(data)) with the bytes written in: an input the target may not overrun."""
        p = self.malloc(len(data))
        self.uc.mem_write(p, bytes(data))
        return p

    # --- reports -----------------------------------------------------------------------------------
    def _build(self) -> list[Report]:
        out = []
        for e in self.mode.pending():
            rep = self.mode.build(e, self.comm, self.pid)
            d = to_json(rep, self.symbolizer)
            text = render(rep, self.symbolizer, self.arch.name)
            r = Report(d["bug_type"], d["access"], rep.addr, d["size"], rep.pc, d["function"], text, d, d["stack"])
            out.append(r)
            self.reports.append(r)
        return out

    def _report_now(self) -> None:
        for r in self._build():
            self.on_report(r)

    def _peek(self) -> list[Report]:
        self._pending += self._build()
        return self._pending

    def check(self) -> None:
        """Raise ReportError if the engine stopped on a bug since the last check."""
        if getattr(self.mode, "callback_error", None) is not None:
            raise self.mode.callback_error
        reps = self._peek()
        if reps:
            self._pending = []
            raise ReportError(reps[0])

    def run(self, begin: int, until: int, timeout: int = 0, count: int = 0) -> None:
        """uc.emu_start(), then check(): a bug stops the engine and raises ReportError."""
        self.uc.emu_start(begin, until, timeout, count)
        self.check()

    def text(self) -> str:
        return "\n".join(r.text for r in self.reports)

    # --- AFL++ -------------------------------------------------------------------------------------
    def fuzz(self, run_input: Callable[[bytes], object], cover: list[tuple[int, int]] = (),
             input_file: str | None = None) -> bool:
        """Serve AFL++ (`afl-fuzz ... -- python3 harness.py`) from the engine's state now: each
        forked child calls run_input(data), which places the input (place()) and runs the target
        (run()), and dies by SIGABRT, a crash for AFL++, on a report or an emulation error (as
        unicornafl counts them). `cover`: code ranges whose edges AFL++ sees. Without AFL++ it
        runs the input in `input_file` once and returns whether it crashed."""
        from emsan.machine.afl import CHILD, FINISHED, ForkServer
        server = ForkServer(self.machine.handle_int, self.arch.name)
        for lo, hi in cover:
            server.cover(lo, hi - 1)
        role = server.serve()
        if role == FINISHED:
            os._exit(0)
        crashed = False
        try:
            run_input(server.input(input_file))
            self.check()
        except ReportError as e:
            crashed = True
            print(e.report.text, file=sys.stderr)
        except Exception as e:
            crashed = True
            print(f"emsan: the input ended in {type(e).__name__}: {e}", file=sys.stderr)
        if role == CHILD:
            sys.stderr.flush()
            if crashed:
                os.abort()
            os._exit(0)
        return crashed


def attach(uc, arch: str, **kw) -> Sanitizer:
    """Add emsan's generic KASAN to a Unicorn engine made by the caller (see Sanitizer)."""
    return Sanitizer(uc, arch, **kw)
