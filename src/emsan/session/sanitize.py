"""Wires a sanitizer mode to a Linux guest: the heap region, entry points as modules load,
and turning the mode's errors into printed reports, JSON and exit decisions."""
from __future__ import annotations

import json
import sys

from emsan.os.linux.memory import SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE, Module
from emsan.os.linux.process import ExitInfo
from emsan.report.json import to_json
from emsan.report.symbolize import module_symbols
from emsan.report.text import render
from emsan.os.linux.loader import HWCAP
from emsan.sanitizer.entrypoints import module_entry_points, string_code_ranges, string_function, string_ifuncs
from emsan.sanitizer.generic import GenericMode


class LinuxSanitizer:
    def __init__(self, session):
        self.s = session
        opts = session.opts
        mem, m = session.mem, session.machine
        mem.map(SANITIZER_HEAP_BASE, SANITIZER_HEAP_BASE + SANITIZER_HEAP_SIZE, 3, "[emsan-heap]")
        self.mode = GenericMode(m, session.arch, SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE, opts.quarantine_size)
        self.mode.set_stack(*mem.stack)
        self.reports: list[dict] = []
        self.seen: set[tuple[str, int]] = set()
        for mod in list(mem.modules):
            self.module_loaded(mod)
        mem.module_listeners.append(self.module_loaded)
        self.resolved: set[str] = set()
        self.want_ifuncs = False
        loaded = session.loaded
        # Once relocation is done (the program's entry), resolve libc's string IFUNCs.
        m.hook_code_once(loaded.image.entry + loaded.bias, self.stop_for_ifuncs)
        session.process.on_stop.append(self.on_stop)

    def module_loaded(self, mod: Module) -> None:
        for ep in module_entry_points(mod.path, mod.base):
            self.mode.intercept(ep.addr, ep.fn)
        syms = module_symbols(mod.path)
        if syms.elf is not None and syms.elf.get_section_by_name(".symtab") is None:
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
            syms = module_symbols(mod.path)
            if syms.elf is None or syms.elf.get_section_by_name(".symtab") is not None:
                continue        # variants have names there, and resolvers may not be relocated yet
            for resolver, name in string_ifuncs(mod.path, mod.base):
                # glibc's aarch64 resolvers take (hwcap | _IFUNC_ARG_HWCAP, &arg); x86's take nothing.
                impl = m.call(arch, resolver, [hwcap, 0])
                fn = string_function(name)
                if impl and fn:
                    self.mode.intercept(impl, fn)

    def on_stop(self) -> ExitInfo | str | None:
        if self.want_ifuncs:
            self.want_ifuncs = False
            self.resolve_ifuncs()
            if not self.mode.pending():
                return "continue"
        errors = self.mode.pending()
        if not errors:
            return None
        opts, proc = self.s.opts, self.s.process
        for e in errors:
            rep = self.mode.build(e, proc.comm, proc.pid)
            key = (rep.bug_type, rep.pc)
            if key in self.seen:
                continue
            self.seen.add(key)
            sys.stdout.flush()
            print(render(rep, self.s.symbolizer, self.s.arch.name), file=sys.stderr, flush=True)
            self.reports.append(to_json(rep, self.s.symbolizer))
            self.write_json()
            if not opts.keep_going:
                break
        if opts.keep_going:
            return "continue"
        return ExitInfo("report", opts.error_exitcode)

    def write_json(self) -> None:
        path = self.s.opts.json_path
        if path:
            with open(path, "w") as f:
                json.dump({"tool": "emsan", "reports": self.reports}, f, indent=2)

    def finish(self) -> None:
        self.write_json()
        if self.s.opts.stats:
            st = self.mode.stats()
            print("emsan: stats: " + ", ".join(f"{k}={v}" for k, v in st.items()), file=sys.stderr)
