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
        self.mode = GenericMode(m, session.arch, SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE, opts.quarantine_size,
                                self.is_call_return)
        self.mode.set_stack(*mem.stack)
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

    def is_call_return(self, pc: int, ret: int) -> bool:
        """Is `ret` a return address into another function than the one at `pc`?"""
        mapping = self.s.mem.find(ret)
        if mapping is None or not mapping.prot & 4:
            return False
        sym = self.s.symbolizer
        here, there = sym.frame(pc), sym.frame(ret, is_return_address=True)
        if here.function is not None and here.function == there.function:
            return False
        m = self.s.machine
        if self.s.arch.name == "arm64":
            word = m.try_read(ret - 4, 4)
            insn = int.from_bytes(word, "little") if word else 0
            return insn & 0xFC000000 == 0x94000000 or insn & 0xFFFFFC1F == 0xD63F0000   # bl / blr
        code = m.try_read(ret - 7, 7) or b""
        if len(code) < 7:
            return False
        if code[2] == 0xE8:                                  # call rel32
            return True
        # call r/m64: ff /2, two to seven bytes long
        return any(code[7 - n] == 0xFF and (code[8 - n] >> 3) & 7 == 2 for n in range(2, 8))

    def is_store_exclusive(self, pc: int) -> bool:
        if self.s.arch.name != "arm64":
            return False
        word = self.s.machine.try_read(pc, 4)
        return bool(word) and int.from_bytes(word, "little") & 0x3FC00000 == 0x08000000   # STXR/STLXR/STXP

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
        if getattr(self.mode, "callback_error", None) is not None:
            raise self.mode.callback_error
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

    def report_pending(self) -> bool:
        """Print the queued errors' reports (each distinct bug once); True if any."""
        errors = self.mode.pending()
        proc = self.s.process
        for e in errors:
            rep = self.mode.build(e, proc.comm, proc.pid)
            # One bug per place (a loop reports once); an arm64 store-exclusive completing the
            # load-exclusive just reported (one atomic operation) is the same bug.
            key = (rep.bug_type, rep.pc)
            pair = self.is_store_exclusive(rep.pc) and self.last_addr == rep.addr
            self.last_addr = rep.addr
            if key in self.seen or pair:
                continue
            self.seen.add(key)
            sys.stdout.flush()
            print(render(rep, self.s.symbolizer, self.s.arch.name), file=sys.stderr, flush=True)
            self.reports.append(to_json(rep, self.s.symbolizer))
            self.write_json()
            if not self.s.opts.keep_going:
                break
        return bool(errors)

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
