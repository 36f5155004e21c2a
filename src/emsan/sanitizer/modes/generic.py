"""Generic KASAN for unmodified binaries: emsan's allocator at the guest's allocator entry
points, its shadow checked on every heap access (by translated code, through an MMIO view of
the heap where the engine cannot, or by a memory hook with --checks hook), a quarantine, and the
string interceptors."""
from __future__ import annotations

from dataclasses import replace

from emsan.report.model import Report, Task
from emsan.sanitizer.kasan import KasanMode
from emsan.sanitizer.mode import Capabilities, Target
from emsan.sanitizer.modes import register
from emsan.sanitizer.runtime import Error
from emsan.sanitizer.shadow import accessible, first_bad_addr, shadow_bug_type, shadow_window


@register
class GenericMode(KasanMode):
    name = "generic"
    caps = Capabilities()

    def __init__(self, target: Target):
        super().__init__(target)
        checks = target.options.checks
        # Translated code checks only on x86-64 hosts (engine/patches/011): the MMIO view elsewhere.
        if checks == "inline" and not self.kasan.check_inline(target.map_memory):
            checks = "mmio"
        self.checks = checks
        self.mmio = checks == "mmio"
        if checks == "inline":
            self.report_in_engine = True
        elif self.mmio:
            self.kasan.check_through_mmio(target.layout.mmio_view, target.map_memory)
            self.report_in_engine = True        # build() may find an error no bug
        else:
            self.map_heap()
            self.kasan.check_accesses()
            self.hooks_accesses = True

    def checkpoint(self) -> None:
        super().checkpoint()
        if self.mmio:
            self.kasan.mmio_copy_on_write()

    def build(self, e: Error, task: Task) -> Report | None:
        if e.site is not None and not e.is_write:
            # QEMU performs an unaligned load from MMIO as the aligned loads around it (of up to
            # 8 bytes each): a piece that looked bad may reach past the bytes the instruction
            # reads, and those are all accessible then.
            found = self.arch.locate(self.machine, e.site.candidates, e.pc, e.site.regs, e.addr, False, e.size)
            if found is not None and accessible(self.kasan.shadow_byte, found[1], found[2]):
                return None
        return shadow_report(self, e, task)


def shadow_report(mode: KasanMode, e: Error, task: Task) -> Report:
    """A report from the generic shadow: the bug type from the first bad granule's shadow byte
    (the kernel's generic report), the object around it, and the shadow window."""
    if e.type == mode.alloc_error:
        return mode.allocation_report(e, task)
    kasan = mode.kasan
    e, stack = mode.locate_site(e, mode.call_trace(e))
    hooked: list[int] = []
    if e.site is None and e.type == mode.access_error and not e.fn and mode.hooks_accesses:
        # The memory hook's PC, which may be stale (arch.hooked_access_pcs).
        hooked = mode.arch.hooked_access_pcs(mode.machine, e.pc, e.addr, e.is_write) or [e.pc]
        if hooked[0] != e.pc:
            e = replace(e, pc=hooked[0])
            stack = [hooked[0]] + stack[1:]
    if e.type == mode.access_error:
        access, size = mode.arch.access_kind(mode.machine, e.pc, e.is_write), e.size
        first_bad = first_bad_addr(kasan.shadow_byte, e.addr, size)
        wraps = e.addr + size > 1 << 64
        bug = "out-of-bounds" if wraps else shadow_bug_type(kasan.shadow_byte, first_bad)
    else:
        access, size, first_bad = "free", 0, e.addr
        bug = mode.free_bugs[e.type]
    obj = kasan.object_info(kasan.describe(first_bad))
    rep = Report(mode.name, bug, access, e.addr, size, e.pc, task, stack, mode.title_frame(e, stack), obj, first_bad)
    if kasan.shadow_byte(first_bad) is not None:
        rep.shadow_rows = shadow_window(kasan.shadow_byte, first_bad)
    mode.add_notes(rep, e)
    if len(hooked) > 1:
        rep.notes.append("Unicorn's memory hook did not say which instruction made this access (it syncs no PC "
                         "before an atomic read-modify-write): it is one of those at "
                         + ", ".join(f"{pc:#x}" for pc in hooked)
                         + ", which touch the same address; --checks mmio reports each of them exactly.")
    return rep
