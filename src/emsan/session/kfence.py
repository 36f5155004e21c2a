"""Wires KFENCE mode to a Linux guest: the pool, its trap twin and spill arena in the guest's
address space, the allocator entry points of each module as it loads, and reports.

Everything else (reporting each distinct bug once, --continue, JSON, exit decisions) is the
generic wiring's (emsan.session.sanitize.LinuxSanitizer)."""
from __future__ import annotations

import hashlib
import os
import struct
from functools import lru_cache

from elftools.elf.elffile import ELFFile

from emsan.os.linux.memory import Module
from emsan.report import kfence_text
from emsan.sanitizer.entrypoints import ALLOCATOR
from emsan.sanitizer.kfence import PAGE, KfenceMode
from emsan.session.sanitize import LinuxSanitizer

# Between emsan's generic heap (0x0600_0000_0000 + 8 GiB) and the mmap area (0x0700_0000_0000);
# all of it below 2**44, the arm64 physical range.
KFENCE_POOL_BASE = 0x0680_0000_0000
KFENCE_TRAP_BASE = 0x06C0_0000_0000          # the PROT_NONE twin guard and freed pages map to
KFENCE_ARENA_SIZE = 1 << 32                  # spill arena after the pool (lazily backed)


class KfenceSanitizer(LinuxSanitizer):
    def __init__(self, session):
        # Only sampled objects keep stacks, so the frame-pointer walk (or .eh_frame unwinding,
        # on request) is enough; the shadow call stack's per-block hook is not worth its cost
        # here, and its bookkeeping assumes every intercepted call is answered by emsan.
        if getattr(session.opts, "stacks", "fp") in ("auto", "scs"):
            session.opts.stacks = "fp"
        super().__init__(session)

    def create_mode(self) -> KfenceMode:
        opts, mem = self.s.opts, self.s.mem
        n = opts.kfence_objects
        pool_size = (n + 1) * 2 * PAGE
        mem.map(KFENCE_POOL_BASE, KFENCE_POOL_BASE + pool_size, 3, "[kfence-pool]")
        mem.map(KFENCE_POOL_BASE + pool_size, KFENCE_POOL_BASE + pool_size + KFENCE_ARENA_SIZE, 3, "[kfence-spill]")
        mem.map(KFENCE_TRAP_BASE, KFENCE_TRAP_BASE + pool_size, 0, "[kfence-trap]")
        seed = opts.seed if opts.seed is not None else int.from_bytes(os.urandom(8), "little")
        # The same --seed drives guest randomness; sampling gets its own stream, hashed so that
        # consecutive seeds (a fleet's) give unrelated streams.
        seed = int.from_bytes(hashlib.blake2b(b"kfence:%d" % seed, digest_size=8).digest(), "little")
        return KfenceMode(self.s.machine, self.s.arch, KFENCE_POOL_BASE, KFENCE_TRAP_BASE, n, KFENCE_ARENA_SIZE,
                          seed, opts.sample_interval, opts.sample_instructions,
                          is_call_return=self.is_call_return)

    render_text = staticmethod(kfence_text.render)
    render_json = staticmethod(kfence_text.to_json)

    def report_key(self, rep) -> tuple:
        # Frees are reported at the allocator's caller, often one helper for the whole program:
        # the call stack tells two corruptions (or invalid frees) apart.
        return (rep.bug_type, tuple(rep.stack[:8]))

    def module_loaded(self, mod: Module) -> None:
        stacks = getattr(self, "stacks", None)
        if stacks is not None:
            stacks.module_loaded(mod.path, mod.base)
        for addr, fn in allocator_entry_points(mod.path, mod.base):
            self.mode.intercept(addr, fn)

    def stop_for_ifuncs(self) -> None:
        pass                                 # no string interceptors in this mode


_SYM = struct.Struct("<IBBHQQ")          # Elf64_Sym


@lru_cache(maxsize=None)
def _allocator_symbols(path: str) -> tuple[tuple[int, str], ...]:
    """(link address, function id name) of the allocator entry points a module defines.

    Only these few names are wanted, so the symbol tables are scanned with struct rather than
    pyelftools' per-symbol parser (0.8 s for a static glibc program, most of a short run)."""
    found: dict[int, str] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for secname in (".symtab", ".dynsym"):
                sec = elf.get_section_by_name(secname)
                if sec is None or sec["sh_entsize"] != _SYM.size:
                    continue
                strtab = elf.get_section(sec["sh_link"]).data()
                data = sec.data()
                for off in range(0, len(data) - _SYM.size + 1, _SYM.size):
                    name_off, info, _other, shndx, value, _size = _SYM.unpack_from(data, off)
                    if info & 0xF != 2 or not value or shndx == 0:      # STT_FUNC, defined
                        continue
                    end = strtab.find(b"\0", name_off)
                    name = strtab[name_off:end].decode(errors="replace").split("@")[0]
                    fn = ALLOCATOR.get(name)
                    if fn and value not in found:
                        found[value] = fn
    except Exception:                       # not an ELF we can read: nothing to intercept
        return ()
    return tuple(found.items())


def allocator_entry_points(path: str, base: int) -> list[tuple[int, str]]:
    return [(addr + base, fn) for addr, fn in _allocator_symbols(path)]
