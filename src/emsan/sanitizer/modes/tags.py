"""Tag-based KASAN modes for arm64 guests, after the kernel's SW_TAGS and HW_TAGS.

emsan's allocator gives every object a random tag, stored per 16-byte granule in a host-side
table and returned in the pointer's top byte; every access compares the two. By default
(--checks inline, x86-64 hosts) translated code compares them (native/inline.c, engine/patches/015);
with --checks mmio (and on other hosts) the engine's TLB sees the pointer tag and sends a (tag,
page) pair to a checking MMIO view only where some granule of the page carries another tag
(native/mmio.c); --checks hook checks every access in a memory hook, which is also what checks
memory outside the heap that a guest tags itself. No redzones and no quarantine, as in the kernel. Reports take their bug type from a
ring of recent allocations and frees and print `Pointer tag: [xx], memory tag: [yy]`.

hw-tags uses the kernel's MTE tag range (0xF0-0xFD, 4 bits compared) and emulates the MTE
instructions a guest may use itself, which Unicorn traps as undefined."""
from __future__ import annotations

from emsan.report.model import Report, Task
from emsan.sanitizer.kasan import KasanMode
from emsan.sanitizer.mode import Capabilities, Target, stream_seed
from emsan.sanitizer.modes import register
from emsan.sanitizer.runtime import Error
from emsan.sanitizer.shadow import shadow_window

TAG_GRANULE = 16
TAG_CAPS = Capabilities(
    arches=("arm64",),
    arch_note="pointer tags live in the top byte that arm64's Top-Byte-Ignore leaves to software")


def tag_bug_type(addr: int, size: int, ring: str, large: bool) -> str:
    """The bug type of a tag mismatch (the kernel's tag-mode report): from what the stack ring
    holds for the pointer's tag ("free", "alloc" or "none"), after the negative-size check of
    get_common_bug_type(). Freed large objects have no slab: plain use-after-free."""
    if (addr & ((1 << 56) - 1)) + size > 1 << 64 or size >= 1 << 63:
        return "out-of-bounds"
    if ring == "free":
        return "use-after-free" if large else "slab-use-after-free"
    if ring == "alloc":
        return "slab-out-of-bounds"
    return "invalid-access"


class TagMode(KasanMode):
    tag_functions = True

    def __init__(self, target: Target):
        super().__init__(target, stream_seed(target.options.seed, "tags"))
        target.machine.top_byte_ignore()      # pointers carry their tags (a harness's engine too)
        checks = target.options.checks
        if checks == "inline" and not self.kasan.check_inline(target.map_memory):
            checks = "mmio"                    # not an x86-64 host
        self.checks = checks
        self.mmio = checks == "mmio"
        if checks == "inline":
            self.report_in_engine = True       # the engine's helper makes the access once it returns
        elif self.mmio:
            layout = target.layout
            views = layout.mmio_view if layout.tag_views is None else layout.tag_views
            self.kasan.check_through_mmio(views, target.map_memory)
        else:
            self.map_heap()
            self.kasan.check_accesses()
        lib = self.runtime.lib
        self.ring_words = {lib.EMSAN_TAGBUG_UAF: "free", lib.EMSAN_TAGBUG_OOB: "alloc"}

    def build(self, e: Error, task: Task) -> Report:
        if e.type == self.alloc_error:
            return self.allocation_report(e, task)
        kasan = self.kasan
        e, stack = self.locate_site(e, self.call_trace(e))
        is_access = e.type == self.access_error
        t = kasan.describe(e.addr, e.size if is_access else 1)
        if is_access:
            access, size = self.arch.access_kind(self.machine, e.pc, e.is_write), e.size
            bug = tag_bug_type(e.addr, e.size, self.ring_words.get(t.tag_bug, "none"), bool(t.large))
        else:
            access, size = "free", 0
            bug = self.free_bugs[e.type]
        first_bad, memory_tag = t.first_bad, None if t.mem_tag < 0 else t.mem_tag
        rep = Report(self.name, bug, access, e.addr, size, e.pc, task, stack, self.title_frame(e, stack),
                     kasan.object_info(t), first_bad, pointer_tag=e.addr >> 56, memory_tag=memory_tag,
                     granule=TAG_GRANULE)
        if kasan.tag_at(first_bad) is not None:
            rep.shadow_rows = shadow_window(kasan.tag_at, first_bad, TAG_GRANULE)
        self.add_notes(rep, e)
        return rep

    def checkpoint(self) -> None:
        super().checkpoint()
        if self.mmio:
            self.kasan.mmio_copy_on_write()

    def tag_stats(self) -> list[int]:
        """Private tag pages, MTE instructions emulated, foreign tag pages, ring records."""
        out = self.runtime.ffi.new("uint64_t[4]")
        self.runtime.lib.emsan_tag_stats(self.kasan.k, out)
        return list(out)

    def report_key(self, report: Report) -> tuple:
        # The same instruction meeting another memory tag is another finding (match_all_mem_tag).
        return super().report_key(report) + (report.memory_tag,)

    def stats(self) -> dict[str, int]:
        st = super().stats()
        out = self.tag_stats()
        st.update(tag_pages=out[0], mte_emulated=out[1], foreign_tag_pages=out[2], ring_records=out[3])
        return st


@register
class SwTagsMode(TagMode):
    name = "sw-tags"
    caps = TAG_CAPS
    native_mode = "sw-tags"


@register
class HwTagsMode(TagMode):
    name = "hw-tags"
    caps = TAG_CAPS
    native_mode = "hw-tags"

    def __init__(self, target: Target):
        super().__init__(target)
        lib, k = self.runtime.lib, self.kasan.k
        self.machine.emulate_undefined(lambda pc: bool(lib.emsan_mte_emulate(k)))
