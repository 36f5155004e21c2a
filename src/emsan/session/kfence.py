"""Wires KFENCE mode to a Linux guest: the pool, its trap twin and spill arena in the guest's
address space, the allocator entry points of each module as it loads, and reports.

Everything else (reporting each distinct bug once, --continue, JSON, exit decisions) is the
generic wiring's (emsan.session.sanitize.LinuxSanitizer)."""
from __future__ import annotations

import hashlib
import os

from emsan.os.linux.memory import Module
from emsan.report import kfence_text
from emsan.sanitizer.entrypoints import module_entry_points
from emsan.sanitizer.kfence import PAGE, KfenceMode
from emsan.session.sanitize import LinuxSanitizer

# Between emsan's generic heap (0x0600_0000_0000 + 8 GiB) and the mmap area (0x0700_0000_0000);
# all of it below 2**44, the arm64 physical range.
KFENCE_POOL_BASE = 0x0680_0000_0000
KFENCE_TRAP_BASE = 0x06C0_0000_0000          # the PROT_NONE twin guard and freed pages map to
KFENCE_ARENA_SIZE = 1 << 32                  # spill arena after the pool (lazily backed)


class KfenceSanitizer(LinuxSanitizer):
    shadows_mmap = False        # no shadow in this mode
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
        for ep in module_entry_points(mod.path, mod.base, strings=False):
            self.mode.intercept(ep.addr, ep.fn)

    def stop_for_ifuncs(self) -> None:
        pass                                 # no string interceptors in this mode
