"""Tag-based KASAN modes for arm64 guests, after the kernel's SW_TAGS and HW_TAGS.

emsan's allocator (the generic mode's native heap with a tag-mode flag) gives every object a
random tag, stored per 16-byte granule in a host-side table and returned in the pointer's top
byte; a native memory hook compares the two on every access. No redzones and no quarantine,
as in the kernel. Reports take their bug type from a ring of recent allocations and frees
(mm/kasan/report_tags.c) and print `Pointer tag: [xx], memory tag: [yy]`.

hw-tags uses the kernel's MTE tag range (0xF0-0xFD, 4 bits compared) and emulates the MTE
instructions a guest may use itself, which Unicorn traps as undefined.
"""
from __future__ import annotations

from emsan.sanitizer.generic import GenericMode
from emsan.sanitizer.native_heap import KINDS, Error
from emsan.sanitizer.report import ObjectInfo, Report, shadow_window
from emsan.sanitizer.stacks import confirm_candidate

TAG_GRANULE = 16
UNDEF = 1                                  # QEMU's EXCP_UDEF as Unicorn's interrupt number
MODES = {"sw-tags": "EMSAN_TAGS_SW", "hw-tags": "EMSAN_TAGS_HW"}


class TagMode(GenericMode):
    access_hook = "emsan_tag_mem_cb"

    def __init__(self, machine, arch, heap_base: int, heap_size: int, mode: str, seed: int,
                 is_call_return=lambda pc, ret: False):
        self.name = mode
        self._seed = seed
        super().__init__(machine, arch, heap_base, heap_size, 0, is_call_return)
        lib = self.heap.lib
        self._tr = self.heap.ffi.new("emsan_tag_report *")
        if mode == "hw-tags":
            h = self.heap.h
            machine.arm64_exception_handlers[UNDEF] = lambda pc: bool(lib.emsan_mte_emulate(h))

    def prepare_heap(self) -> None:
        ffi, lib = self.heap.ffi, self.heap.lib
        ids = self.machine.reg_ids
        xregs = [ids[f"x{i}"] for i in range(29)] + [ids["x29"], ids["x30"], ids["sp"]]
        self._xregs = ffi.new("int[]", xregs)
        lib.emsan_tags_init(self.heap.h, getattr(lib, MODES[self.name]), self._seed, self._xregs)

    def tag_at(self, addr: int) -> int | None:
        v = self.heap.lib.emsan_tag_at(self.heap.h, addr)
        return None if v < 0 else v

    def build(self, e: Error, comm: str, pid: int) -> Report:
        heap, lib = self.heap, self.heap.lib
        stack = confirm_candidate(heap.stack(e.stack), self.is_call_return) or [e.pc]
        fn = self._fn_by_id.get(e.fn, "")
        size = e.size if e.type == lib.EMSAN_ERR_ACCESS else 1
        lib.emsan_tag_describe(heap.h, e.addr, size, self._tr)
        t = self._tr
        if e.type == lib.EMSAN_ERR_ACCESS:
            access = self.arch.access_kind(self.machine, e.pc, e.is_write)
            if (e.addr & ((1 << 56) - 1)) + e.size > 1 << 64 or e.size >= 1 << 63:
                bug = "out-of-bounds"                 # a negative size (get_common_bug_type)
            elif t.bug == lib.EMSAN_TAGBUG_UAF:
                bug = "use-after-free" if t.large else "slab-use-after-free"
            elif t.bug == lib.EMSAN_TAGBUG_OOB:
                bug = "slab-out-of-bounds"
            else:
                bug = "invalid-access"
            title = 1 if fn and len(stack) > 1 else 0
        else:
            bug = {lib.EMSAN_ERR_DOUBLE_FREE: "double-free", lib.EMSAN_ERR_INVALID_FREE: "invalid-free",
                   lib.EMSAN_ERR_MISMATCH: "alloc-dealloc-mismatch"}[e.type]
            access, size = "free", 0
            title = 1 if len(stack) > 1 else 0
        obj = None
        if t.found:
            info = heap.describe(e.addr)
            kind = KINDS[info.kind] if info is not None else "malloc"
            obj = ObjectInfo(t.obj_start, t.obj_size, t.cache_size, "freed" if t.ring_free else "allocated",
                             bool(t.large), heap.stack(t.alloc_stack) if t.ring_alloc else [],
                             heap.stack(t.free_stack) if t.ring_free else [], kind)
        rep = Report(self.name, bug, access, e.addr, size if access != "free" else 0, e.pc, comm, pid, stack,
                     title, obj, t.first_bad, pointer_tag=e.addr >> 56,
                     memory_tag=None if t.mem_tag < 0 else t.mem_tag, granule=TAG_GRANULE)
        if self.tag_at(t.first_bad) is not None:
            rep.shadow_rows = shadow_window(self.tag_at, t.first_bad, TAG_GRANULE)
        self.add_notes(rep, e, fn)
        return rep

    def stats(self) -> dict[str, int]:
        st = super().stats()
        out = self.heap.ffi.new("uint64_t[4]")
        self.heap.lib.emsan_tag_stats(self.heap.h, out)
        st.update(tag_pages=out[0], mte_emulated=out[1], foreign_tag_pages=out[2], ring_records=out[3])
        return st
