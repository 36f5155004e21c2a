"""KFENCE mode: sampled objects on pages between guard pages, behind Unicorn's virtual TLB.

No memory-access hook at all. Every allocator entry point carries a C callback (native/kfence.c)
behind a gate the engine tests in translated code: only the allocation that is sampled and a free
or realloc of a pointer in emsan's pool or spill arena call it, everything else is the guest's own
allocator, untouched. Python runs for reports only (and for the rare protection fault)."""
from __future__ import annotations

from emsan.machine import engine_ok
from emsan.report.model import KfenceObject, KfenceReport, Task
from emsan.sanitizer.entrypoints import module_entry_points
from emsan.sanitizer.mode import Capabilities, ModuleInfo, Target, stream_seed
from emsan.sanitizer.modes import register
from emsan.sanitizer.runtime import Error
from emsan.sanitizer.stacks import confirm_candidate

PAGE = 0x1000
STATES = {0: "unused", 1: "allocated", 2: "freed"}
SKIP_COVERED_THRESH = 75     # kfence.skip_covered_thresh, percent of the pool in use
ARENA_SIZE = 1 << 32         # the spill arena after the pool (lazily backed)


@register
class KfenceMode:
    name = "kfence"
    # Only sampled objects keep stacks, so the frame-pointer walk (or .eh_frame unwinding, on
    # request) is enough; the shadow call stack's per-block hook is not worth its cost here, and
    # its bookkeeping assumes every intercepted call is answered by emsan.
    caps = Capabilities(string_interceptors=False, own_allocator=False, shadow=False, reports_mmap_faults=False,
                        default_stacks="fp", shadow_call_stack=False, leaks=False, heap=False,
                        default_stack_checks="none")
    report_in_engine = False

    def __init__(self, target: Target):
        self.target = target
        self.machine = m = target.machine
        self.runtime = rt = target.runtime
        ffi, lib = rt.ffi, rt.lib
        opts, layout = target.options, target.layout
        n = opts.kfence_objects
        pool, trap = layout.kfence_pool, layout.kfence_trap
        pool_size = (n + 1) * 2 * PAGE
        target.map_memory(pool, pool + pool_size, 3, "[kfence-pool]", None)
        target.map_memory(pool + pool_size, pool + pool_size + ARENA_SIZE, 3, "[kfence-spill]", None)
        target.map_memory(trap, trap + pool_size, 0, "[kfence-trap]", None)
        self.k = ffi.gc(lib.emsan_kfence_new(rt.rt, pool, n, trap, ARENA_SIZE, stream_seed(opts.seed, "kfence"),
                                             opts.sample_interval, opts.sample_instructions, SKIP_COVERED_THRESH),
                        lib.emsan_kfence_destroy)
        m.use_virtual_tlb(ffi.addressof(lib, "emsan_kfence_tlb_cb"), self.k)
        m.hook_mem_prot(self._fault)
        if opts.sample_instructions:
            m.hook_block_native(ffi.addressof(lib, "emsan_kfence_block_cb"), self.k)
        self._entry_cb = ffi.addressof(lib, "emsan_kfence_entry_cb")
        self.hooked: dict[int, str] = {}
        self.kinds = {lib.EMSAN_ERR_KFENCE_OOB: "out-of-bounds", lib.EMSAN_ERR_KFENCE_UAF: "use-after-free",
                      lib.EMSAN_ERR_KFENCE_CORRUPTION: "memory corruption", lib.EMSAN_ERR_KFENCE_INVALID: "invalid",
                      lib.EMSAN_ERR_KFENCE_INVALID_FREE: "invalid free"}
        self.access_errors = (lib.EMSAN_ERR_KFENCE_OOB, lib.EMSAN_ERR_KFENCE_UAF, lib.EMSAN_ERR_KFENCE_INVALID)

    # --- wiring ---------------------------------------------------------------------------------
    def module_loaded(self, module: ModuleInfo) -> None:
        for ep in module_entry_points(module.path, module.base, strings=False):
            self.intercept(ep.addr, ep.fn)

    def intercept(self, addr: int, fn: str) -> None:
        """Put the sampling fast path in front of the allocator entry point at `addr`."""
        if addr in self.hooked:
            return
        rt = self.runtime
        entry = rt.lib.emsan_kfence_entry(self.k, rt.fn_id(fn))
        if entry == rt.ffi.NULL:
            return
        self.hooked[addr] = fn
        hh = self.machine.hook_code_native(self._entry_cb, entry, addr)
        engine_ok(rt.lib.emsan_kfence_gate(self.k, rt.fn_id(fn), hh))

    def _fault(self, access: int, addr: int, size: int) -> bool:
        try:
            if not self.runtime.lib.emsan_kfence_fault(self.k, access, addr):
                return False
        except Exception as e:           # never let a traceback escape from inside the engine
            self.runtime.callback_error = e
            self.machine.stop("internal-error")
            return False
        f = self.machine.fault           # the engine's own fault hook saw it first: not a SIGSEGV
        if f is not None and f.addr == addr:
            self.machine.fault = None
        return True

    def check_range(self, addr: int, size: int, is_write: bool, pc: int) -> None:
        self.runtime.lib.emsan_kfence_check_range(self.k, addr, size, int(is_write))

    # --- reports ----------------------------------------------------------------------------------
    def build(self, e: Error, task: Task) -> KfenceReport:
        is_access = e.type in self.access_errors
        stack = self.runtime.stack(e.stack)
        if is_access:
            stack = confirm_candidate(stack, self.target.is_call_return) or [e.pc]
        access = ("write" if e.is_write else "read") if is_access else "free"
        o = e.record.kfence
        obj = None
        if o.index >= 0:
            obj = KfenceObject(o.index, o.addr, o.size, STATES.get(o.state, "?"), self.runtime.stack(o.alloc_stack),
                               self.runtime.stack(o.free_stack), o.alloc_ns / 1e9, o.free_ns / 1e9,
                               o.alloc_tid, o.free_tid)
        rep = KfenceReport(self.name, self.kinds[e.type], access, e.addr, e.pc, task, stack, is_access, obj,
                           o.now_ns / 1e9)
        if e.type == self.runtime.lib.EMSAN_ERR_KFENCE_CORRUPTION:
            rep.corrupted = [None if o.intact[i] else o.bytes[i] for i in range(o.nbytes)]
        return rep

    def report_key(self, report: KfenceReport) -> tuple:
        # Frees are reported at the allocator's caller, often one helper for the whole program:
        # the call stack tells two corruptions (or invalid frees) apart.
        return (report.bug_type, tuple(report.stack[:8]))

    def stats(self) -> dict[str, int]:
        return self.runtime.counters("emsan_kfence_stats", self.runtime.lib.emsan_kfence_get_stats, self.k)

    def reseed(self, seed: int) -> None:
        self.runtime.lib.emsan_kfence_reseed(self.k, stream_seed(seed, "kfence"))

    def checkpoint(self) -> None:
        self.runtime.lib.emsan_kfence_checkpoint(self.k)

    def rollback(self) -> None:
        self.runtime.lib.emsan_kfence_rollback(self.k)
