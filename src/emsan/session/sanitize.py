"""Wires a sanitizer mode to a Linux guest: the heap region, entry points as modules load,
and turning the mode's errors into printed reports, JSON and exit decisions."""
from __future__ import annotations

import sys

import resource

from emsan.os.linux.memory import MMAP_BOTTOM, MMAP_TOP, PAGE, SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE, Module
from emsan.os.linux.process import ExitInfo
from emsan.report.json import to_json
from emsan.report.text import render
from emsan.os.linux.loader import HWCAP
from emsan.sanitizer.entrypoints import (has_symtab, module_entry_points, string_code_ranges, string_function,
                                         string_ifuncs)
from emsan.sanitizer.generic import GenericMode
from emsan.sanitizer.report import Report, shadow_window
from emsan.session.crash import call_trace_pcs
from emsan.session.outputs import write_outputs
from emsan.session.unwind import is_call_return
from emsan.sanitizer.stacks import Stacks, choose as choose_collector


# --checks mmio: the physical address of the heap's checking view, between emsan's heap and the
# KFENCE pool (session/kfence.py), a range no guest address maps to.
MMIO_VIEW_PA = 0x0640_0000_0000


class LinuxSanitizer:
    shadows_mmap = True         # the mmap area gets vmalloc-like shadow (modes with a shadow)
    reports_faults = True       # a fault on a hole of the mmap area is a vmalloc-out-of-bounds report

    def __init__(self, session):
        self.s = session
        opts = session.opts
        mem, m = session.mem, session.machine
        self.mode = self.create_mode()
        self.mode.set_stack(*mem.stack)
        if opts.shadow == "full" and hasattr(self.mode, "heap"):
            self.mode.heap.full_shadow()
        if self.shadows_mmap and opts.mmap_shadow:
            self.watch_mmap_area()
        arm64 = session.arch.name == "arm64"
        collector = opts.stacks
        if collector == "auto":
            collector = choose_collector([mod.path for mod in mem.modules], arm64)
        self.stacks = Stacks(m, self.mode.heap, arm64, collector, opts.no_depot)
        self.mode.stacks = self.stacks
        self.reports: list[dict] = []
        self.seen: set[tuple[str, int]] = set()
        self.last_addr: int | None = None
        for mod in list(mem.modules):
            self.module_loaded(mod)
        mem.module_listeners.append(self.module_loaded)
        self.resolved: set[str] = set()
        self.want_ifuncs = False
        loaded = session.loaded
        # Once relocation is done (the program's entry), resolve libc's string IFUNCs.
        m.hook_code_once(loaded.image.entry + loaded.bias, self.stop_for_ifuncs)
        session.process.on_stop.append(self.on_stop)
        if opts.keep_going:
            # Multi-shot: report from inside the engine and let the guest run on, so the
            # faulting instruction completes exactly once.
            self.mode.on_error(self.report_pending)
        session.process.buffer_check = lambda addr, size, w: self.mode.check_range(addr, size, w, m.pc)

    def create_mode(self):
        """The sanitizer mode, with the guest memory it needs (other modes override this)."""
        opts, mem = self.s.opts, self.s.mem
        mmio = opts.checks == "mmio"
        if not mmio:
            mem.map(SANITIZER_HEAP_BASE, SANITIZER_HEAP_BASE + SANITIZER_HEAP_SIZE, 3, "[emsan-heap]")
        mode = GenericMode(self.s.machine, self.s.arch, SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE,
                           opts.quarantine_size, self.is_call_return, check_accesses=not mmio)
        if mmio:
            mode.heap.check_through_mmio(self.s.machine, self.s.arch, mem, MMIO_VIEW_PA, "[emsan-heap]")
        return mode

    def watch_mmap_area(self) -> None:
        """Shadow the mmap area like the kernel's vmalloc space: mapped pages accessible, holes
        KASAN_VMALLOC_INVALID, populated lazily and released lazily after munmap."""
        heap, mem = self.mode.heap, self.s.mem
        heap.shadow_mmap_area(MMAP_BOTTOM, MMAP_TOP)
        for mp in mem.mappings:
            if MMAP_BOTTOM <= mp.start < MMAP_TOP:
                heap.mapping_changed(mp.start, min(mp.end, MMAP_TOP), True)
        mem.change_listeners.append(heap.mapping_changed)

    def report_key(self, rep) -> tuple:
        """What makes a bug distinct: reported once per key (other modes override this)."""
        return (rep.bug_type, rep.pc)

    # Report renderings (text in the kernel's layout, JSON); other modes override these.
    render_text = staticmethod(render)
    render_json = staticmethod(to_json)

    def is_call_return(self, pc: int, ret: int) -> bool:
        s = self.s
        return is_call_return(s.machine, s.arch, s.mem, s.symbolizer, pc, ret)

    def is_store_exclusive(self, pc: int) -> bool:
        if self.s.arch.name != "arm64":
            return False
        word = self.s.machine.try_read(pc, 4)
        return bool(word) and int.from_bytes(word, "little") & 0x3FC00000 == 0x08000000   # STXR/STLXR/STXP

    def module_loaded(self, mod: Module) -> None:
        self.stacks.module_loaded(mod.path, mod.base)
        for ep in module_entry_points(mod.path, mod.base, tags=self.s.opts.mode in ("sw-tags", "hw-tags")):
            self.mode.intercept(ep.addr, ep.fn)
        if not has_symtab(mod.path):
            # A stripped library (Debian's libc): its string variants have no names, so all of
            # its code may make the aligned over-reads they make.
            self.mode.tolerate_overreads(mod.start, mod.end)
        else:
            for lo, hi in string_code_ranges(mod.path, mod.base):
                self.mode.tolerate_overreads(lo, hi)

    def stop_for_ifuncs(self) -> None:
        self.want_ifuncs = True
        self.s.machine.stop("ifuncs")       # resolvers run between two engine runs

    def resolve_ifuncs(self) -> None:
        m, arch = self.s.machine, self.s.arch
        hwcap = HWCAP[arch.name]
        for mod in list(self.s.mem.modules):
            if mod.path in self.resolved:
                continue
            self.resolved.add(mod.path)
            if has_symtab(mod.path):
                continue        # variants have names there, and resolvers may not be relocated yet
            for resolver, name in string_ifuncs(mod.path, mod.base):
                # glibc's aarch64 resolvers take (hwcap | _IFUNC_ARG_HWCAP, &arg); x86's take nothing.
                impl = m.call(arch, resolver, [hwcap, 0])
                fn = string_function(name)
                if impl and fn:
                    self.mode.intercept(impl, fn)

    def on_stop(self) -> ExitInfo | str | None:
        if getattr(self.mode, "callback_error", None) is not None:
            raise self.mode.callback_error
        if self.reports_faults and self.shadows_mmap and self.s.opts.mmap_shadow and self.vmalloc_fault():
            return None if self.s.opts.keep_going else ExitInfo("report", self.s.opts.error_exitcode)
        if self.want_ifuncs:
            self.want_ifuncs = False
            self.resolve_ifuncs()
            if not self.mode.pending():
                return "continue"
        if self.s.opts.keep_going:
            self.report_pending()
            return None
        if not self.report_pending():
            return None
        return ExitInfo("report", self.s.opts.error_exitcode)

    def vmalloc_fault(self) -> bool:
        """A fault on a hole of the mmap area is the kernel's vmalloc-out-of-bounds: report it
        (the fault itself is then delivered as usual with --continue)."""
        f = self.s.machine.fault
        if f is None or f.kind != "segv" or f.mapped or f.access == "fetch":
            return False
        if not MMAP_BOTTOM <= f.addr < MMAP_TOP or self.mode.heap.shadow_byte(f.addr) != 0xF8:
            return False
        proc, heap = self.s.process, self.mode.heap
        stack = call_trace_pcs(proc, self.s.symbolizer)
        rep = Report(self.mode.name, "vmalloc-out-of-bounds", f.access, f.addr, f.size, f.pc, proc.comm, proc.pid,
                     stack, 0, None, f.addr)
        rep.shadow_rows = shadow_window(heap.shadow_byte, f.addr)
        below = [mp for mp in self.s.mem.mappings if mp.end <= f.addr and mp.end > f.addr - (1 << 20)]
        if below:
            mp = below[-1]
            rep.notes.append(f"The buggy address is located {f.addr - mp.end} bytes to the right of the mapping "
                             f"[{mp.start:#x}, {mp.end:#x}){' ' + mp.name if mp.name else ''}, in an unmapped hole "
                             f"of the mmap area.")
        self.emit(rep)
        return True

    def report_pending(self) -> bool:
        """Print the queued errors' reports (each distinct bug once); True if any."""
        errors = self.mode.pending()
        proc = self.s.process
        for e in errors:
            if self.emit(self.mode.build(e, proc.comm, proc.pid)) and not self.s.opts.keep_going:
                break
        return bool(errors)

    def emit(self, rep) -> bool:
        """Print a report and add it to the JSON, unless this bug was reported already."""
        # One bug per place (a loop reports once); an arm64 store-exclusive completing the
        # load-exclusive just reported (one atomic operation) is the same bug.
        key = self.report_key(rep)
        pair = self.is_store_exclusive(rep.pc) and self.last_addr == rep.addr
        self.last_addr = rep.addr
        if key in self.seen or pair:
            return False
        self.seen.add(key)
        sys.stdout.flush()
        print(self.render_text(rep, self.s.symbolizer, self.s.arch.name), file=sys.stderr, flush=True)
        self.reports.append(self.render_json(rep, self.s.symbolizer))
        self.write_json()
        return True

    def write_json(self, crash: dict | None = None) -> None:
        write_outputs(self.s.opts, self.reports, crash)

    def finish(self, crash: dict | None = None) -> None:
        self.write_json(crash)
        if self.s.opts.stats:
            st = self.mode.stats()
            if "shadow_pages" in st:
                st["shadow_resident_bytes"] = st["shadow_pages"] * PAGE
            st["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            st.update(self.stacks.stats())
            print("emsan: stats: " + ", ".join(f"{k}={v}" for k, v in st.items()), file=sys.stderr)
