"""KFENCE mode: sampled objects on pages between guard pages, behind Unicorn's virtual TLB.

No memory-access hook at all. Every allocator entry point passes a C callback
(src/emsan/native/kfence.c) that lets the guest's own allocator run unless the allocation is
sampled; a free or realloc of a pointer outside emsan's pool and spill arena goes straight to
the guest's allocator. Python runs for reports only (and for the rare protection fault).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emsan.sanitizer.callbacks import guarded_callback
from emsan.sanitizer.stacks import confirm_candidate
from emsan.sanitizer.native_heap import NativeHeap

PAGE = 0x1000
STATES = {0: "unused", 1: "allocated", 2: "freed"}
# The kmalloc caches a size would come from (cache=kmalloc-N in reports).
CACHES = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096)
SKIP_COVERED_THRESH = 75     # kfence.skip_covered_thresh, percent of the pool in use


def cache_name(size: int) -> str:
    for c in CACHES:
        if size <= c:
            return f"kmalloc-{c}"
    return "kmalloc-large"


@dataclass
class KfenceObject:
    index: int
    start: int
    size: int
    state: str
    alloc_stack: list[int]
    free_stack: list[int]
    alloc_s: float
    free_s: float

    @property
    def cache(self) -> str:
        return cache_name(self.size)


@dataclass
class KfenceReport:
    mode: str
    kind: str                 # out-of-bounds, use-after-free, memory corruption, invalid, invalid free
    access: str               # read / write / free
    addr: int
    pc: int
    comm: str
    pid: int
    stack: list[int]          # innermost first
    first_is_pc: bool         # stack[0] is the faulting PC (accesses), not a return address (frees)
    obj: KfenceObject | None
    now_s: float
    corrupted: list[int | None] = field(default_factory=list)   # shown bytes, None = intact canary

    @property
    def bug_type(self) -> str:
        """The title's bug words: "out-of-bounds read", "invalid free", "memory corruption"..."""
        if self.kind in ("out-of-bounds", "use-after-free", "invalid"):
            return f"{self.kind} {self.access}"
        return self.kind

    @property
    def size(self) -> int:
        return 0


class KfenceMode:
    name = "kfence"

    def __init__(self, machine, arch, pool_base: int, trap_base: int, num_objects: int, arena_size: int,
                 seed: int, sample_interval: int, sample_instructions: int, skip_covered: int = SKIP_COVERED_THRESH,
                 is_call_return=lambda pc, ret: False):
        self.machine = machine
        self.is_call_return = is_call_return
        # A generic-mode heap object with no pages: it carries the register ids, the stack
        # walker and the depot that kfence.c shares.
        self.heap = NativeHeap(machine, arch, pool_base, PAGE, 0)
        ffi, lib = self.ffi, self.lib = self.heap.ffi, self.heap.lib
        self.pool_base = pool_base
        self.trap_base = trap_base
        self.pool_size = (num_objects + 1) * 2 * PAGE
        self.num_objects = num_objects
        self.k = ffi.gc(lib.emsan_kfence_new(self.heap.h, pool_base, num_objects, trap_base, arena_size,
                                             seed & (2**64 - 1), sample_interval, sample_instructions, skip_covered),
                        lib.emsan_kfence_destroy)
        machine.use_virtual_tlb(ffi.addressof(lib, "emsan_kfence_tlb_cb"), self.k)
        machine.hook_mem_prot(self._fault)
        if sample_instructions:
            machine.hook_block_native(ffi.addressof(lib, "emsan_kfence_block_cb"), self.k)
        self._entry_cb = ffi.addressof(lib, "emsan_kfence_entry_cb")
        self._err = ffi.new("emsan_kfence_error *")
        self.hooked: dict[int, str] = {}
        self.callback_error: Exception | None = None

    # --- wiring ---------------------------------------------------------------------------------
    def intercept(self, addr: int, fn: str) -> None:
        """Put the sampling fast path in front of the allocator entry point at `addr`."""
        if addr in self.hooked:
            return
        entry = self.lib.emsan_kfence_entry(self.k, self.heap.fn_id(fn))
        if entry == self.ffi.NULL:
            return
        self.hooked[addr] = fn
        self.machine.hook_code_native(self._entry_cb, entry, addr)

    def set_stack(self, lo: int, hi: int) -> None:
        self.heap.set_stack(lo, hi)

    def on_error(self, cb) -> None:
        """Have cb() called from inside the engine as soon as an error is queued."""
        self._error_cb = guarded_callback(self.ffi, self.machine, self, cb)
        self.lib.emsan_kfence_set_error_callback(self.k, self._error_cb)

    def _fault(self, access: int, addr: int, size: int) -> bool:
        try:
            if not self.lib.emsan_kfence_fault(self.k, access, addr):
                return False
        except Exception as e:           # never let a traceback escape from inside the engine
            self.callback_error = e
            self.machine.stop("internal-error")
            return False
        f = self.machine.fault           # the engine's own fault hook saw it first: not a SIGSEGV
        if f is not None and f.addr == addr:
            self.machine.fault = None
        return True

    def check_range(self, addr: int, size: int, is_write: bool, pc: int) -> None:
        self.lib.emsan_kfence_check_range(self.k, addr, size, int(is_write))

    def tolerate_overreads(self, lo: int, hi: int) -> None:
        pass                             # no per-access checks to tolerate

    # --- reports ----------------------------------------------------------------------------------
    def pending(self) -> list:
        out = []
        while self.lib.emsan_kfence_pop_error(self.k, self._err):
            e = self._err
            out.append(self.ffi.new("emsan_kfence_error *", e[0]))
        return out

    def build(self, e, comm: str, pid: int) -> KfenceReport:
        lib = self.lib
        kind = {lib.EMSAN_KFENCE_OOB: "out-of-bounds", lib.EMSAN_KFENCE_UAF: "use-after-free",
                lib.EMSAN_KFENCE_CORRUPTION: "memory corruption", lib.EMSAN_KFENCE_INVALID: "invalid",
                lib.EMSAN_KFENCE_INVALID_FREE: "invalid free"}[e.type]
        is_access = e.type in (lib.EMSAN_KFENCE_OOB, lib.EMSAN_KFENCE_UAF, lib.EMSAN_KFENCE_INVALID)
        stack = self.heap.stack(e.stack)
        if is_access:
            stack = confirm_candidate(stack, self.is_call_return) or [e.pc]
        access = ("write" if e.is_write else "read") if is_access else "free"
        obj = None
        if e.obj >= 0:
            obj = KfenceObject(e.obj, e.obj_addr, e.obj_size, STATES.get(e.obj_state, "?"),
                               self.heap.stack(e.alloc_stack), self.heap.stack(e.free_stack),
                               e.alloc_ns / 1e9, e.free_ns / 1e9)
        rep = KfenceReport(self.name, kind, access, e.addr, e.pc, comm, pid, stack, is_access, obj, e.now_ns / 1e9)
        if e.type == lib.EMSAN_KFENCE_CORRUPTION:
            rep.corrupted = [None if e.intact[i] else e.bytes[i] for i in range(e.nbytes)]
        return rep

    def stats(self) -> dict[str, int]:
        st = self.ffi.new("emsan_kfence_stats *")
        self.lib.emsan_kfence_get_stats(self.k, st)
        return {f: getattr(st, f) for f in dir(st)}
