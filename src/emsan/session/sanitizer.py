"""The sanitizer of one run: a mode attached to a Linux guest (its memory, modules as they load,
system-call buffers, libc's string IFUNCs), and its errors turned into printed reports, JSON
and exit decisions. Nothing here depends on which mode runs: the mode's capabilities say what
to wire (emsan.sanitizer.mode)."""
from __future__ import annotations

import sys
from typing import cast

import resource

from emsan.errors import EmsanError
from emsan.os.linux.cpu import missing_isa_words
from emsan.os.linux.memory import (MMAP_BOTTOM, MMAP_TOP, PAGE, SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE, TAG_VIEWS,
                                   Module)
from emsan.os.linux.process import ExitInfo
from emsan.report.debuginfo import debug_file
from emsan.report.model import LeakReport, Report, Task
from emsan.sanitizer.entrypoints import has_symtab, string_function, string_ifuncs
from emsan.sanitizer import returns
from emsan.sanitizer.kasan import KasanMode
from emsan.sanitizer.mode import HeapMode, Layout, Mode, ShadowMode, Target
from emsan.sanitizer.runtime import Runtime
from emsan.sanitizer.shadow import shadow_window
from emsan.sanitizer.stackobjects import StackObjects
from emsan.sanitizer.stacks import Stacks, choose as choose_collector
from emsan.session.crash import call_trace_pcs
from emsan.session.leaks import LeakCheck
from emsan.session.outputs import write_outputs
from emsan.session.unwind import is_call_return

LAYOUT = Layout(heap=SANITIZER_HEAP_BASE, heap_size=SANITIZER_HEAP_SIZE, tag_views=TAG_VIEWS)
VMALLOC_INVALID = 0xF8       # the shadow of a hole in the mmap area


RLIMIT_DATA, RLIMIT_AS = 2, 9     # the same numbers on x86-64 and arm64
RLIM_INF = 2**64 - 1


def heap_budget(mappings, limits: dict[int, tuple[int, int]]) -> int | None:
    """Bytes of objects the guest's limits leave emsan's heap: RLIMIT_AS less the guest's own
    mappings, RLIMIT_DATA less its private writable ones (as Linux counts them); None if no limit."""
    own = [mp for mp in mappings if not mp.name.startswith(("[emsan", "[kfence"))]
    left = []
    if limits.get(RLIMIT_AS, (RLIM_INF,))[0] != RLIM_INF:
        left.append(limits[RLIMIT_AS][0] - sum(mp.end - mp.start for mp in own))
    if limits.get(RLIMIT_DATA, (RLIM_INF,))[0] != RLIM_INF:
        left.append(limits[RLIMIT_DATA][0] - sum(mp.end - mp.start for mp in own
                                                 if mp.prot & 2 and mp.name != "[stack]"))
    return min(left) if left else None


class Sanitizer:
    def __init__(self, session, mode_class: type[Mode]):
        self.s = s = session
        opts, mem, m = s.opts, s.mem, s.machine
        caps = mode_class.caps
        if s.arch.name not in caps.arches:
            raise EmsanError(f"--mode {mode_class.name} needs an {' or '.join(caps.arches)} guest "
                             f"({caps.arch_note}); {opts.program} is {s.arch.name}")
        self.caps = caps
        self.runtime = Runtime(m, s.arch)
        self.runtime.set_stack(*mem.stack)
        target = Target(machine=m, arch=s.arch, runtime=self.runtime, options=opts, map_memory=self.map_memory,
                        layout=LAYOUT, is_call_return=self.is_call_return, stack_of=self.stack_of,
                        symbolize=lambda pc: str(s.symbolizer.frame(pc)), debug_file=self.debug_file,
                        absent_isa=missing_isa_words(m, s.arch.name, (s.loaded.hwcap, s.loaded.hwcap2)))
        self.mode: Mode = mode_class(target)
        # Capabilities.shadow: the mode is a ShadowMode
        self.shadow = cast(ShadowMode, self.mode) if caps.shadow else None
        if self.shadow is not None and opts.mmap_shadow:
            self.watch_mmap_area(self.shadow)
        collector = self.collector(opts.stacks)
        self.stack_checks = opts.stack_checks
        if opts.stack_checks == "auto":
            # full (or the mode's choice) where the shadow call stack's block hook runs anyway (the
            # scs collector): it then costs at most +5%; the hook alone costs +5-29%
            # (bench/stack_checks.py)
            self.stack_checks = caps.default_stack_checks if collector == "scs" else "none"
        self.stacks = Stacks(m, self.runtime, s.arch.name == "arm64", collector, opts.no_depot,
                             timed=opts.stats, ret_checks=self.stack_checks in ("ret", "full"))
        self.stack_objects: StackObjects | None = None
        if self.stack_checks == "full":
            if not isinstance(self.mode, KasanMode):
                raise EmsanError(f"--stack-checks full needs a KASAN mode (generic, sw-tags, hw-tags or "
                                 f"compiler-assisted); --mode {mode_class.name} checks libc's ranges itself")
            self.stack_objects = StackObjects(self.runtime, mem, s.symbolizer, s.arch.name == "arm64")
            self.stacks.checks_name = "full"
        self.leaks: LeakCheck | None = None
        if opts.leaks or (opts.leaks is None and caps.leaks):
            if not caps.leaks:
                raise EmsanError(f"--leaks needs emsan's allocator, which --mode {mode_class.name} leaves to the "
                                 f"guest for most allocations")
            self.leaks = LeakCheck(self, cast(KasanMode, self.mode).kasan)
        self.leak_scans: list[dict] = []
        self.reports: list[dict] = []        # JSON renderings, in order
        if opts.json_append and opts.json_path:      # the image before exec wrote these (session/processes.py)
            from emsan.session.processes import load_reports
            self.reports = load_reports(opts.json_path)[0]
        self.texts: list[str] = []           # the text of each, as printed
        self.seen: set[tuple] = set()
        self.last_addr: int | None = None
        for mod in list(mem.modules):
            self.module_loaded(mod)
        mem.module_listeners.append(self.module_loaded)
        self.resolved: set[str] = set()
        self.want_ifuncs = False
        if caps.string_interceptors:
            # Once relocation is done (the program's entry), resolve libc's string IFUNCs.
            m.hook_code_once(s.loaded.image.entry + s.loaded.bias, self.stop_for_ifuncs)
        s.process.on_stop.append(self.on_stop)
        self.stopped_by_report = False
        if opts.keep_going or self.mode.report_in_engine:
            # Report from inside the engine and let the faulting instruction complete exactly
            # once: multi-shot goes on; an error the mode may find no bug after all (an MMIO
            # piece of an unaligned load) must not have the guest run that access again.
            self.runtime.on_error(self.report_in_engine)
        s.process.buffer_check = lambda addr, size, w: self.mode.check_range(addr, size, w, m.pc)
        if caps.heap:
            s.process.rlimit_listeners.append(self.limits_changed)
            self.limited = False
        self.runtime.lib.emsan_set_tid(self.runtime.rt, s.process.pid)
        s.process.after_fork.append(lambda: self.runtime.lib.emsan_set_tid(self.runtime.rt, s.process.pid))
        s.process.on_threads.append(self.threads_started)

    def threads_started(self, threads) -> None:
        """The guest made its first thread: each has its own shadow call stack and stack bounds,
        and allocation and free records name the thread that made them."""
        lib, rt = self.runtime.lib, self.runtime.rt
        if self.stacks.collector == "scs" or self.stacks.ret_checks:
            threads.scs_new = lib.emsan_scs_thread_new
            threads.scs_swap = lambda handle: lib.emsan_scs_thread_swap(rt, handle)
            threads.scs_free = lib.emsan_scs_thread_free

        def switched(t) -> None:
            lib.emsan_set_tid(rt, t.tid)
            self.runtime.set_stack(*t.stack)
        threads.on_switch.append(switched)

    def collector(self, asked: str) -> str:
        """The stack collector: --stacks, where the mode allows it."""
        if asked == "auto":
            asked = self.caps.default_stacks
        if asked == "auto":
            return choose_collector([mod.path for mod in self.s.mem.modules], self.s.arch.name == "arm64")
        if asked == "scs" and not self.caps.shadow_call_stack:
            return "fp"
        return asked

    # --- what the mode is told about the guest ---------------------------------------------------
    def map_memory(self, lo: int, hi: int, prot: int, name: str, host: int | None) -> None:
        if host is None:
            self.s.mem.map(lo, hi, prot, name)
        else:
            self.s.mem.map_host(lo, hi, prot, name, host)

    def is_call_return(self, pc: int, ret: int) -> bool:
        s = self.s
        return is_call_return(s.machine, s.arch, s.mem, s.symbolizer, pc, ret)

    def stack_of(self, addr: int) -> tuple[int, int] | None:
        """The stack mapping holding addr: the main thread's, or a thread's (an anonymous
        mapping below the main stack's guard)."""
        lo, hi = self.s.mem.stack
        if lo <= addr < hi:
            return lo, hi
        mp = self.s.mem.find(addr)
        if mp is not None and mp.name in ("[stack]", "[anon]") and mp.prot & 3 == 3:
            return mp.start, mp.end
        return None

    def watch_mmap_area(self, mode: ShadowMode) -> None:
        """Shadow the mmap area like the kernel's vmalloc space: mapped pages accessible, holes
        KASAN_VMALLOC_INVALID, populated lazily and released lazily after munmap."""
        mem = self.s.mem
        mode.shadow_mmap_area(MMAP_BOTTOM, MMAP_TOP)
        for mp in mem.mappings:
            if MMAP_BOTTOM <= mp.start < MMAP_TOP:
                mode.mapping_changed(mp.start, min(mp.end, MMAP_TOP), True)
        mem.change_listeners.append(mode.mapping_changed)

    def limits_changed(self) -> None:
        """The guest set a resource limit: from now on the heap gets what RLIMIT_AS and
        RLIMIT_DATA leave beside the guest's own mappings (emsan's regions not counted)."""
        limits = self.s.process.rlimits
        if not self.limited and any(r in limits for r in (RLIMIT_AS, RLIMIT_DATA)):
            self.limited = True
            self.s.mem.change_listeners.append(lambda lo, hi, mapped: self.limits_changed())
        if self.limited:
            cast(HeapMode, self.mode).limit_heap(heap_budget(self.s.mem.mappings, limits))

    def module_loaded(self, mod: Module) -> None:
        self.stacks.module_loaded(mod.path, mod.base)
        self.mode.module_loaded(mod)
        if self.leaks is not None:
            self.leaks.module_loaded(mod)

    def debug_file(self, path: str) -> str | None:
        """The separate debug file of a module (Debian's libc6-dbg), where found."""
        return debug_file(path, self.s.symbolizer.roots)

    def stop_for_ifuncs(self) -> None:
        self.want_ifuncs = True
        self.s.machine.stop("ifuncs")       # resolvers run between two engine runs

    def resolve_ifuncs(self) -> None:
        m, arch = self.s.machine, self.s.arch
        hwcap = self.s.loaded.hwcap
        for mod in list(self.s.mem.modules):
            if mod.path in self.resolved:
                continue
            self.resolved.add(mod.path)
            if has_symtab(mod.path) or self.debug_file(mod.path):
                continue        # variants have names there, and resolvers may not be relocated yet
            for resolver, name in string_ifuncs(mod.path, mod.base):
                # glibc's aarch64 resolvers take (hwcap | _IFUNC_ARG_HWCAP, &arg); x86's take nothing.
                impl = m.call(arch, resolver, [hwcap, 0])
                fn = string_function(name)
                if impl and fn:
                    self.mode.intercept(impl, fn)

    # --- reports ----------------------------------------------------------------------------------
    def on_stop(self) -> ExitInfo | str | None:
        if self.runtime.callback_error is not None:
            raise self.runtime.callback_error
        opts = self.s.opts
        if self.stopped_by_report:
            return ExitInfo("report", opts.error_exitcode)
        if self.bad_return():
            return None if opts.keep_going else ExitInfo("report", opts.error_exitcode)
        if self.shadow is not None and self.caps.reports_mmap_faults and opts.mmap_shadow and \
                self.vmalloc_fault(self.shadow):
            return None if opts.keep_going else ExitInfo("report", opts.error_exitcode)
        if self.want_ifuncs:
            self.want_ifuncs = False
            self.resolve_ifuncs()
            if not self.runtime.queued():
                return "continue"
        if opts.keep_going:
            self.report_pending()
            return None
        if not self.report_pending():
            return None
        return ExitInfo("report", opts.error_exitcode)

    @property
    def task(self) -> Task:
        p = self.s.process
        if p.threads is None:
            return Task(p.comm, p.pid)
        return Task(p.threads.current.comm, p.threads.tid)

    def bad_return(self) -> bool:
        """A fetch fault right after a return: a return through an overwritten return address to
        memory that cannot run (the fault itself is then delivered as usual with --continue)."""
        f = self.s.machine.fault
        if self.stack_checks not in ("ret", "full") or f is None or f.access != "fetch":
            return False
        if not self.runtime.lib.emsan_scs_check_fetch(self.runtime.rt, f.pc):
            return False
        if self.runtime.queued():           # else the error callback reported it already
            self.report_pending()
        return True

    def vmalloc_fault(self, mode: ShadowMode) -> bool:
        """A fault on a hole of the mmap area is the kernel's vmalloc-out-of-bounds: report it
        (the fault itself is then delivered as usual with --continue)."""
        f = self.s.machine.fault
        if f is None or f.kind != "segv" or f.mapped or f.access == "fetch":
            return False
        if not MMAP_BOTTOM <= f.addr < MMAP_TOP or mode.shadow_byte(f.addr) != VMALLOC_INVALID:
            return False
        stack = call_trace_pcs(self.s.process, self.s.symbolizer)
        rep = Report(mode.name, "vmalloc-out-of-bounds", f.access, f.addr, f.size, f.pc, self.task,
                     stack, 0, None, f.addr)
        rep.shadow_rows = shadow_window(mode.shadow_byte, f.addr)
        below = [mp for mp in self.s.mem.mappings if mp.end <= f.addr and mp.end > f.addr - (1 << 20)]
        if below:
            mp = below[-1]
            rep.notes.append(f"The buggy address is located {f.addr - mp.end} bytes to the right of the mapping "
                             f"[{mp.start:#x}, {mp.end:#x}){' ' + mp.name if mp.name else ''}, in an unmapped hole "
                             f"of the mmap area.")
        self.emit(rep)
        return True

    def report_in_engine(self) -> None:
        if self.stopped_by_report:          # the engine has yet to stop after the report
            self.runtime.pending()
            return
        if self.report_pending() and not self.s.opts.keep_going:
            self.stopped_by_report = True
            self.s.machine.stop("report")

    def report_pending(self) -> bool:
        """Print the queued errors' reports (each distinct bug once); True if any. An error the
        mode finds no bug after all (build() gives None) is dropped."""
        real = False
        for e in self.runtime.pending():
            rep = self.build(e)
            if rep is None:
                continue
            real = True
            if self.emit(rep) and not self.s.opts.keep_going:
                break
        return real

    def build(self, e) -> Report | None:
        if e.type == self.runtime.lib.EMSAN_ERR_STACK_OOB and self.stack_objects is not None:
            return self.stack_objects.build(self.mode, e, self.task)
        if e.type != self.runtime.lib.EMSAN_ERR_RET_OVERWRITE:
            return self.mode.build(e, self.task)
        s = self.s
        return returns.build(self.runtime, e, self.task, self.mode.name, s.arch.name == "arm64", s.machine.try_read,
                             lambda a, ret: s.symbolizer.frame(a, is_return_address=ret))

    def is_store_exclusive(self, pc: int) -> bool:
        if self.s.arch.name != "arm64":
            return False
        word = self.s.machine.try_read(pc, 4)
        return bool(word) and int.from_bytes(word, "little") & 0x3FC00000 == 0x08000000   # STXR/STLXR/STXP

    def emit(self, rep) -> bool:
        """Print a report and add it to the JSON, unless this bug was reported already."""
        # One bug per place (a loop reports once); an arm64 store-exclusive completing the
        # load-exclusive just reported (one atomic operation) is the same bug.
        key = self.mode.report_key(rep)
        pair = self.is_store_exclusive(rep.pc) and self.last_addr == rep.addr
        self.last_addr = rep.addr
        if key in self.seen or pair:
            return False
        self.seen.add(key)
        from emsan.report.json import to_json as render_json       # rendering: only once there is a report
        from emsan.report.text import render as render_text
        sys.stdout.flush()
        text = render_text(rep, self.s.symbolizer, self.s.arch.name)
        print(text, file=sys.stderr, flush=True)
        self.texts.append(text)
        self.reports.append(render_json(rep, self.s.symbolizer))
        # as it goes: a run killed later keeps them
        write_outputs(self.s.opts, self.reports, warn=self.s.process.warn_once, extra=self.json_extra())
        return True

    def emit_leak(self, rep: LeakReport) -> None:
        """Print a leak report (the indirect ones go to the JSON only, as Valgrind shows
        indirectly lost blocks only in its summary) and add it to the JSON."""
        from emsan.report.json import to_json as render_json
        from emsan.report.text import render as render_text
        if not rep.indirect:
            sys.stdout.flush()
            text = render_text(rep, self.s.symbolizer, self.s.arch.name)
            print(text, file=sys.stderr, flush=True)
            self.texts.append(text)
        self.reports.append(render_json(rep, self.s.symbolizer))

    def leak_scan_done(self, summary: dict) -> None:
        self.leak_scans.append(summary)
        write_outputs(self.s.opts, self.reports, warn=self.s.process.warn_once, extra=self.json_extra())

    def json_extra(self) -> dict:
        """What the JSON holds besides the reports: the leak scans' summaries."""
        return {"leak_scans": self.leak_scans} if self.leaks is not None else {}

    def finish(self, info: ExitInfo) -> int:
        """The guest has ended: the leak scan (unless a report stopped the run) and the
        statistics (the session writes the final JSON and SARIF); the exit status
        (--error-exitcode when leaks were found, as LeakSanitizer's)."""
        status = info.status
        if self.leaks is not None and info.kind in ("exit", "signal"):
            self.leaks.at_exit()
            if self.leaks.leaks:
                status = self.s.opts.error_exitcode
        if self.s.opts.stats:
            st = self.mode.stats()
            if "shadow_pages" in st:
                st["shadow_resident_bytes"] = st["shadow_pages"] * PAGE
            st["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            st.update(self.stacks.stats())
            if self.stack_objects is not None:
                st.update(self.stack_objects.stats())
            if self.leaks is not None:
                st.update({f"leak_{k}": v for k, v in self.leaks.kml.stats().items()})
            print("emsan: stats: " + ", ".join(f"{k}={v}" for k, v in st.items()), file=sys.stderr)
        return status
