"""emsan on a Unicorn engine the user made: `emsan.attach(uc, "x86_64", mode=..., ...)`.

A fuzzing harness or a firmware rehosting script already has its `Uc`, its memory map and its own
way of running code. emsan attaches to it the way the Linux session attaches to its own engine:
the runtime on the engine, a `Target` saying where emsan's memory goes (a region of its own, clear
of the harness's: `layout`), and the mode from the mode table, reached only through the Mode
protocol. Any registered mode whose architectures include the harness's attaches: generic KASAN
(its heap checked by translated code, through an MMIO view with checks="mmio", or a memory hook
with checks="hook"), KFENCE (sampling
the target's own allocator), sw-tags and hw-tags on arm64 (Top-Byte-Ignore is turned on in the
engine for them). The target's allocator entry points are named in `allocator` (or none, when the
harness places every input through `malloc()` here). Reports come back as Python objects with
their kernel-style text and JSON: raised as `ReportError` from `run()`/`check()`, or handed to an
`on_report` callback as they happen. `fuzz()` serves AFL++ from the engine's current state, a
report being a crash.
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import field
from typing import Callable

from emsan.errors import EmsanError
from emsan.lazyclass import dataclass
from emsan.machine import Machine
from emsan.os.linux.memory import Module
from emsan.report.json import to_json
from emsan.report.model import Task
from emsan.report.symbolize import Symbolizer
from emsan.report.text import render
from emsan.sanitizer.mode import Layout, Mode, Target
from emsan.sanitizer.runtime import Runtime
from emsan.sanitizer.stacks import Stacks

PAGE = 0x1000
# Below 2^40, inside the physical range of every arm64 CPU model (a harness's engine keeps the
# model it was made with), and far from where harnesses usually map.
LAYOUT = Layout(heap=0x60_0000_0000, heap_size=256 << 20, mmio_view=0x64_0000_0000,
                kfence_pool=0x68_0000_0000, kfence_trap=0x6C_0000_0000)


@dataclass
class Options:
    """What a mode reads (emsan.sanitizer.mode.ModeOptions), with `emsan run`'s defaults but a
    smaller quarantine; attach() takes them as keyword arguments."""

    quarantine_size: int = 16 << 20
    allocator_errors: str = "report"   # refused allocations reported (ASan's names), then failed
    seed: int | None = None
    checks: str = "inline"             # generic mode: "inline", "mmio" or "hook"
    shadow: str = "per-page"
    kfence_objects: int = 255
    sample_interval: int = 100
    sample_instructions: int = 0


@dataclass
class Report:
    """One sanitizer report: what the kernel's text says, as fields, plus its renderings."""
    bug_type: str
    access: str                         # read / write / free
    address: int
    size: int
    pc: int
    function: str | None
    text: str                           # the kernel's KASAN or KFENCE layout
    json: dict                          # emsan's JSON (the same as `emsan run --json` writes)
    frames: list[dict] = field(default_factory=list)
    model: object = None                # the report as data (emsan.report.model)

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
    def __init__(self, uc, arch: str, *, mode: str = "generic", heap: tuple[int, int] | None = None,
                 layout: Layout | None = None, allocator: dict[str, int] | None = None,
                 modules: list[tuple[str, int]] = (), stack: tuple[int, int] | None = None,
                 on_report: Callable[[Report], None] | None = None, comm: str = "harness", **options):
        from emsan.arch import ARCHES
        from emsan.sanitizer.modes import mode_class
        if arch not in ARCHES:
            raise EmsanError(f"attach: unsupported architecture {arch!r} (x86_64 or arm64)")
        try:
            cls = mode_class(mode)
        except KeyError:
            raise EmsanError(f"attach: no mode {mode!r}") from None
        if arch not in cls.caps.arches:
            raise EmsanError(f"attach: mode {mode} needs an {' or '.join(cls.caps.arches)} engine "
                             f"({cls.caps.arch_note})")
        if not cls.caps.own_allocator and not allocator:
            raise EmsanError(f"attach: mode {mode} samples the target's allocator: name its entry points (allocator=)")
        unknown = set(options) - set(Options.__dataclass_fields__)
        if unknown:
            raise EmsanError(f"attach: no option {', '.join(sorted(unknown))} (options: "
                             f"{', '.join(Options.__dataclass_fields__)})")
        self.arch = ARCHES[arch]
        self.uc = uc
        self.machine = Machine(arch, uc)
        self.options = Options(**options)
        layout = layout or LAYOUT
        if heap is not None:
            layout = Layout(heap[0], heap[1], layout.mmio_view, layout.kfence_pool, layout.kfence_trap)
        self.layout = layout
        self.stack = stack or (0, 1 << 48)
        mods = []
        for path, bias in modules:
            from emsan.os.linux.elf import open_elf
            lo, hi = open_elf(path, what="module", need_exec=False).span
            mods.append(Module(path, bias, lo + bias, hi + bias))
        self.symbolizer = Symbolizer(_Modules(mods))
        self.runtime = Runtime(self.machine, self.arch)
        self.runtime.set_stack(*self.stack)
        target = Target(machine=self.machine, arch=self.arch, runtime=self.runtime, options=self.options,
                        map_memory=self._map, layout=layout, stack_of=self._stack_of,
                        symbolize=lambda pc: str(self.symbolizer.frame(pc)))
        self.mode: Mode = cls(target)
        self.stacks = Stacks(self.machine, self.runtime, arch == "arm64", "fp", False)
        self.task = Task(comm[:15], os.getpid())
        self.reports: list[Report] = []
        self._pending: list[Report] = []
        # A page pair for calls made from Python (malloc/free below): its code and its stack.
        self.scratch = self._free_pages(layout.heap + layout.heap_size, 4 * PAGE)
        uc.mem_map(self.scratch, 4 * PAGE)
        self.allocator = dict(allocator or {})
        for name, addr in self.allocator.items():
            self.intercept(name, addr)
        # malloc()/free() from Python: the target's own entry points when it has them (KFENCE
        # samples the target's allocator), else emsan's, at two scratch addresses.
        self._ret_at = self.scratch + 0x20
        self._malloc_at = self.allocator.get("malloc", self.scratch)
        self._free_at = self.allocator.get("free", self.scratch + 0x10)
        if "malloc" not in self.allocator:
            self.mode.intercept(self._malloc_at, "MALLOC")
        if "free" not in self.allocator:
            self.mode.intercept(self._free_at, "FREE")
        self.on_report = on_report
        if on_report is not None:
            self.runtime.on_error(self._report_now)
        elif self.mode.report_in_engine:
            # The mode may find no bug in an error after all (build() gives None: generic's MMIO
            # view sees an unaligned load as the aligned loads around it): decide in the engine
            # and stop it only for a real one, as the Linux session does.
            self.runtime.on_error(self._stop_on_report)

    # --- what the mode is told about the harness -----------------------------------------------
    def _map(self, lo: int, hi: int, prot: int, name: str, host: int | None) -> None:
        if host is None:
            self.machine.map(lo, hi - lo, prot)
        else:
            self.machine.map_ptr(lo, hi - lo, prot, host)

    def _stack_of(self, addr: int) -> tuple[int, int] | None:
        lo, hi = self.stack
        return (lo, hi) if lo <= addr < hi else None

    def _free_pages(self, start: int, size: int) -> int:
        """The first address from `start` where `size` bytes are unmapped in the engine."""
        regions = sorted((lo, hi + 1) for lo, hi, _ in self.uc.mem_regions())
        for lo, hi in regions:
            if lo < start + size and start < hi:
                start = (hi + PAGE - 1) & ~(PAGE - 1)
        return start

    # --- wiring ------------------------------------------------------------------------------------
    def intercept(self, name: str, addr: int) -> None:
        """emsan's `name` (malloc, free, calloc, realloc, memalign, aligned_alloc, new, new[],
        delete, delete[], memcpy, strlen, ...) stands in for the function at `addr`."""
        fn = _fn_name(name)
        if not hasattr(self.runtime.lib, "EMSAN_FN_" + fn):
            raise EmsanError(f"attach: emsan has no stand-in for {name!r}")
        self.mode.intercept(addr, fn)

    # --- inputs ------------------------------------------------------------------------------------
    def _call(self, addr: int, args: list[int]) -> int:
        ctx = self.machine.save_context()
        try:
            m = self.machine
            m.sp = self.scratch + 4 * PAGE - 0x100
            self.arch.setup_call(m, args, self._ret_at)
            self.uc.emu_start(addr, self._ret_at, 0, 1_000_000)
            return m.reg(self.arch.ret)
        finally:
            self.machine.restore_context(ctx)

    def malloc(self, size: int) -> int:
        """An object of exactly `size` bytes from the mode's allocator (emsan's heap with redzones
        or tags; under KFENCE the target's allocator, sampled), for an input."""
        p = self._call(self._malloc_at, [size])
        self.check()
        if not p:
            raise MemoryError(f"no room for {size} bytes")
        return p

    def free(self, addr: int) -> None:
        self._call(self._free_at, [addr])
        self.check()

    def place(self, data: bytes) -> int:
        """malloc(len(data)) with the bytes written in: an input the target may not overrun."""
        p = self.malloc(len(data))
        self.machine.write(p, bytes(data))
        return p

    # --- reports -----------------------------------------------------------------------------------
    def _build(self) -> list[Report]:
        out = []
        for e in self.runtime.pending():
            rep = self.mode.build(e, self.task)
            if rep is None:                     # no bug after all
                continue
            d = to_json(rep, self.symbolizer)
            text = render(rep, self.symbolizer, self.arch.name)
            r = Report(d["bug_type"], d["access"], rep.addr, d["size"], rep.pc, d["function"], text, d, d["stack"],
                       rep)
            out.append(r)
            self.reports.append(r)
        return out

    def _report_now(self) -> None:
        for r in self._build():
            self.on_report(r)

    def _stop_on_report(self) -> None:
        if self._pending:                       # the engine has yet to stop after the report
            self.runtime.pending()
            return
        self._pending += self._build()
        if self._pending:
            self.machine.stop("report")

    def check(self) -> None:
        """Raise ReportError if the engine stopped on a bug since the last check."""
        if self.runtime.callback_error is not None:
            err, self.runtime.callback_error = self.runtime.callback_error, None
            raise err
        self._pending += self._build()
        if self._pending:
            first, self._pending = self._pending[0], []
            raise ReportError(first)

    def run(self, begin: int, until: int, timeout: int = 0, count: int = 0) -> None:
        """uc.emu_start(), then check(): a bug stops the engine and raises ReportError."""
        import unicorn
        self.machine.fault = None
        self.uc.emu_start(begin, until, timeout, count)
        self.check()
        if self.machine.fault is not None:       # an undefined instruction no mode emulates
            raise unicorn.UcError(unicorn.UC_ERR_EXCEPTION)

    def text(self) -> str:
        return "\n".join(r.text for r in self.reports)

    def stats(self) -> dict[str, int]:
        return self.mode.stats()

    # --- AFL++ -------------------------------------------------------------------------------------
    def fuzz(self, run_input: Callable[[bytes], object], cover: list[tuple[int, int]] = (),
             input_file: str | None = None, persistent: int = 1) -> bool:
        """Serve AFL++ (`afl-fuzz ... -- python3 harness.py`) from the engine's state now: each
        forked child calls run_input(data), which places the input (place()) and runs the target
        (run()), and dies by SIGABRT, a crash for AFL++, on a report or an emulation error (as
        unicornafl counts them); any other exception is raised when run by hand and is a crash
        (with its traceback) under AFL++. `cover`: code ranges whose edges AFL++ sees. With
        `persistent` N > 1 each child runs up to N inputs, the engine's registers and memory and
        the mode's state going back to what they are now after each. Every input gets its own
        random choices (KFENCE's sampling, tags), the same whenever it runs again. Without
        AFL++ it runs the input in `input_file` once and returns whether it crashed."""
        from emsan.machine.afl import CHILD, FINISHED, ForkServer
        server = ForkServer(self.machine.handle_int, self.arch.name)
        for lo, hi in cover:
            server.cover(lo, hi - 1)
        snap = None
        if persistent > 1:
            snap = self.machine.snapshot()
            self.mode.checkpoint()
        role = server.serve()
        if role == FINISHED:
            os._exit(0)
        crashed = False
        for i in range(persistent if role == CHILD else 1):
            if i and not server.next():
                break
            crashed = self._fuzz_one(run_input, server.input(input_file), role == CHILD)
            if crashed:
                break
            if snap is not None:
                self.mode.rollback()
                self.machine.restore_snapshot(snap)
        if role == CHILD:
            sys.stderr.flush()
            if crashed:
                os.abort()
            os._exit(0)
        return crashed

    def _fuzz_one(self, run_input: Callable[[bytes], object], data: bytes, in_child: bool) -> bool:
        import unicorn
        from emsan.sanitizer.mode import input_seed
        self.mode.reseed(input_seed(self.options.seed, data))
        try:
            run_input(data)
            self.check()
        except ReportError as e:
            print(e.report.text, file=sys.stderr)
            return True
        except unicorn.UcError as e:
            print(f"emsan: the input ended in an emulation error: {e}", file=sys.stderr)
            return True
        except Exception:
            if not in_child:
                raise                   # by hand: the harness's (or emsan's) bug, with its traceback
            traceback.print_exc()
            return True                 # under AFL++: kept as a crash, where it can be seen
        return False


def attach(uc, arch: str, **kw) -> Sanitizer:
    """Attach an emsan mode (default generic KASAN) to a Unicorn engine made by the caller (see
    Sanitizer)."""
    return Sanitizer(uc, arch, **kw)
