"""Python face of the native generic-mode heap (src/emsan/native/heap.c and friends)."""
from __future__ import annotations

from dataclasses import dataclass

from emsan.machine import native

STATES = {0: "free", 1: "allocated", 2: "freed"}
KINDS = {0: "malloc", 1: "new", 2: "new[]"}


@dataclass
class Error:
    type: int
    is_write: bool
    addr: int
    size: int
    pc: int
    stack: int
    fn: int
    kind: int


class NativeHeap:
    def __init__(self, machine, arch, base: int, size: int, quarantine_bytes: int):
        self.ffi, self.lib = native.load()
        ids = machine.reg_ids
        regs = [ids[r] for r in arch.args[:6]] + [ids[arch.ret], ids[arch.sp], ids[arch.pc],
                                                  ids["lr"] if arch.name == "arm64" else 0, ids[arch.fp]]
        self._regs = self.ffi.new("int[]", regs)
        self.h = self.ffi.gc(self.lib.emsan_heap_new(self.ffi.cast("void *", machine.handle_int),
                                                     int(arch.name == "arm64"), base, size, quarantine_bytes,
                                                     self._regs), self.lib.emsan_heap_free)
        self.base, self.size = base, size
        self._err = self.ffi.new("emsan_error *")
        self._obj = self.ffi.new("emsan_obj_info *")
        self._frames = self.ffi.new("uint64_t[]", 64)

    def fn_id(self, name: str) -> int:
        return getattr(self.lib, "EMSAN_FN_" + name)

    def entry(self, fn_name: str):
        return self.lib.emsan_heap_entry(self.h, self.fn_id(fn_name))

    def set_stack(self, lo: int, hi: int) -> None:
        self.lib.emsan_heap_set_stack(self.h, lo, hi)

    def add_tolerant_range(self, lo: int, hi: int) -> None:
        self.lib.emsan_add_tolerant_range(self.h, lo, hi)

    # --- shadow ------------------------------------------------------------------------------
    def full_shadow(self) -> None:
        """Give every written chunk its own shadow page (the ablation of per-page shadow)."""
        self.lib.emsan_shadow_full(self.h)

    def shadow_mmap_area(self, lo: int, hi: int) -> None:
        """Shadow [lo, hi) as the kernel shadows vmalloc space: from what is mapped, lazily."""
        self.lib.emsan_vm_area(self.h, lo, hi)

    def mapping_changed(self, lo: int, hi: int, mapped: bool) -> None:
        (self.lib.emsan_vm_map if mapped else self.lib.emsan_vm_unmap)(self.h, lo, hi)

    def expose_shadow(self, machine) -> None:
        """Map the shadow into the guest at EMSAN_SHADOW_OFFSET (compiler-instrumented guests read
        it themselves); switches the engine to its virtual TLB."""
        pool = int(self.ffi.cast("uintptr_t", self.lib.emsan_shadow_pool(self.h)))
        machine.map_ptr(self.lib.EMSAN_SHADOW_POOL_PA, self.lib.emsan_shadow_pool_bytes(), 3, pool)
        self.lib.emsan_shadow_expose(self.h)
        machine.use_virtual_tlb(self.ffi.addressof(self.lib, "emsan_shadow_tlb_cb"), self.h)

    def shadow_recheck(self, addr: int, size: int) -> bool:
        """Is [addr, addr+size) poisoned now? False: a guest check read a stale mapping."""
        return bool(self.lib.emsan_shadow_recheck(self.h, addr, size))

    # --- --checks mmio ------------------------------------------------------------------------
    def check_through_mmio(self, machine, arch, mem, view_pa: int, name: str) -> None:
        """Check heap accesses in an MMIO view of the heap instead of a memory hook (mmio.c)."""
        self._mmio_regs = arch.gprs
        ids = self.ffi.new("int[]", [machine.reg_ids[r] for r in arch.gprs])
        host = self.lib.emsan_mmio_init(self.h, view_pa, len(arch.gprs), ids)
        if host == self.ffi.NULL:
            raise MemoryError("no host memory for emsan's heap")
        mem.map_host(self.base, self.base + self.size, 3, name, int(self.ffi.cast("uintptr_t", host)))
        lib = self.lib
        machine.mmio_map(view_pa, self.size, self.ffi.addressof(lib, "emsan_mmio_read"),
                         self.ffi.addressof(lib, "emsan_mmio_write"), self.h)
        machine.use_virtual_tlb(self.ffi.addressof(lib, "emsan_mmio_tlb_cb"), self.h)
        self._mmio_block = self.ffi.new("uint64_t *")
        self._mmio_vals = self.ffi.new("uint64_t[]", 40)
        self._mmio_cands = self.ffi.new("uint64_t[]", 4)
        self._mmio_ncand = self.ffi.new("int *")
        recovery = machine.pc_recovery()
        if recovery is not None:
            get_cpu, restore = recovery
            lib.emsan_mmio_set_pc_recovery(self.h, self.ffi.cast("void *", get_cpu), self.ffi.cast("void *", restore))

    def mmio_error_context(self) -> tuple[int, dict[str, int], list[int]] | None:
        """The block, registers and candidate PCs of the first bad access since the last call."""
        if not hasattr(self, "_mmio_block"):
            return None
        n = self.lib.emsan_mmio_last_error(self.h, self._mmio_block, self._mmio_vals, self._mmio_cands,
                                           self._mmio_ncand)
        if not n:
            return None
        return (self._mmio_block[0], dict(zip(self._mmio_regs, self._mmio_vals[0:n])),
                list(self._mmio_cands[0:self._mmio_ncand[0]]))

    def pop_error(self) -> Error | None:
        if not self.lib.emsan_pop_error(self.h, self._err):
            return None
        e = self._err
        return Error(e.type, bool(e.is_write), e.addr, e.size, e.pc, e.stack, e.fn, e.kind)

    def describe(self, addr: int):
        if not self.lib.emsan_describe(self.h, addr, self._obj):
            return None
        return self._obj

    def shadow_byte(self, addr: int) -> int | None:
        v = self.lib.emsan_shadow_byte(self.h, addr)
        return None if v < 0 else v

    def stack(self, handle: int) -> list[int]:
        n = self.lib.emsan_depot_get(self.h, handle, self._frames, 64)
        return list(self._frames[0:n])

    def stats(self) -> dict[str, int]:
        st = self.ffi.new("emsan_stats *")
        self.lib.emsan_get_stats(self.h, st)
        return {f: getattr(st, f) for f in dir(st)}
