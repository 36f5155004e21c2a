"""Native KASAN (native/kasan.h): emsan's allocator with the generic or a tag-based mode behind
it, its shadow (or memory tags), quarantine and string interceptors; and KasanMode, what the
three KASAN modes (generic, tag-based, compiler-assisted) share."""
from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from emsan.report.model import AllocRequest, ObjectInfo, Report, Task
from emsan.sanitizer.entrypoints import (LIBC, direct_callees, has_symtab, imported_functions, libc_functions,
                                        module_entry_points, string_code_ranges)
from emsan.sanitizer.mode import Capabilities, ModuleInfo, Target, stream_seed
from emsan.sanitizer.runtime import Error, Runtime
from emsan.sanitizer.stacks import confirm_candidate

UNTAGGED = (1 << 56) - 1                    # an arm64 address without its top byte (pointer tag)
RUN_OWN_CODE = frozenset(LIBC.values())     # checked at their entry (native/libc.c), not stood in for
CHECKED_INSIDE = frozenset(("FGETS_CHK", "FGETS_UNLOCKED_CHK", "SPRINTF_CHK", "VSPRINTF_CHK"))  # glibc's check fails inside

STATES = {0: "free", 1: "allocated", 2: "freed"}
KINDS = {0: "malloc", 1: "new", 2: "new[]"}
MODES = {"generic": "EMSAN_KASAN_GENERIC", "sw-tags": "EMSAN_KASAN_SW_TAGS", "hw-tags": "EMSAN_KASAN_HW_TAGS"}


class Kasan:
    def __init__(self, runtime: Runtime, mode: str, base: int, size: int, quarantine_bytes: int, seed: int = 0):
        self.runtime = runtime
        self.ffi, self.lib = ffi, lib = runtime.ffi, runtime.lib
        self.machine = runtime.machine
        self.base, self.size = base, size
        self.tags = mode != "generic"
        k = lib.emsan_kasan_new(runtime.rt, getattr(lib, MODES[mode]), base, size, quarantine_bytes,
                                seed & (2**64 - 1))
        if k == ffi.NULL:
            raise MemoryError("no host memory for emsan's shadow")
        self.k = ffi.gc(k, lib.emsan_kasan_destroy)
        self.heap_memory = int(ffi.cast("uintptr_t", lib.emsan_kasan_heap_memory(k)))    # host address
        self._entry_cb = ffi.addressof(lib, "emsan_kasan_entry_cb")
        self._obj = ffi.new("emsan_obj_info *")
        self.hooked: dict[int, str] = {}

    # --- wiring ----------------------------------------------------------------------------------
    def intercept(self, addr: int, fn: str) -> None:
        """Stand in for the function at `addr` (an allocator entry point or a string function)."""
        if addr in self.hooked:
            return
        entry = self.lib.emsan_kasan_entry(self.k, self.runtime.fn_id(fn))
        if entry == self.ffi.NULL:
            return
        self.hooked[addr] = fn
        if fn not in RUN_OWN_CODE:          # checked at entry, then the guest's code runs and returns
            self.runtime.intercepted(addr)
        self.machine.hook_code_native(self._entry_cb, entry, addr)

    def check_accesses(self) -> None:
        """The mode's native check on every guest load and store (a memory hook)."""
        self.machine.hook_mem_access_native(self.lib.emsan_kasan_access_cb(self.k), self.k, 1, 0)

    def check_range(self, addr: int, size: int, is_write: bool, pc: int) -> None:
        """A range touched on the guest's behalf (a system call's buffer), checked as one access."""
        self.lib.emsan_kasan_check_range(self.k, addr, size, int(is_write), pc)

    def tolerate_overreads(self, lo: int, hi: int) -> None:
        self.lib.emsan_kasan_add_tolerant_range(self.k, lo, hi)

    # --- shadow ------------------------------------------------------------------------------
    def full_shadow(self) -> None:
        """Give every written chunk its own shadow page (the ablation of per-page shadow)."""
        self.lib.emsan_shadow_full(self.k)

    def shadow_mmap_area(self, lo: int, hi: int) -> None:
        """Shadow [lo, hi) as the kernel shadows vmalloc space: from what is mapped, lazily."""
        self.lib.emsan_vm_area(self.k, lo, hi)

    def mapping_changed(self, lo: int, hi: int, mapped: bool) -> None:
        (self.lib.emsan_vm_map if mapped else self.lib.emsan_vm_unmap)(self.k, lo, hi)

    def expose_shadow(self) -> None:
        """Map the shadow into the guest at EMSAN_SHADOW_OFFSET (compiler-instrumented guests read
        it themselves); switches the engine to its virtual TLB."""
        pool = int(self.ffi.cast("uintptr_t", self.lib.emsan_shadow_pool(self.k)))
        self.machine.map_ptr(self.lib.EMSAN_SHADOW_POOL_PA, self.lib.emsan_shadow_pool_bytes(), 3, pool)
        self.lib.emsan_shadow_expose(self.k)
        self.machine.use_virtual_tlb(self.ffi.addressof(self.lib, "emsan_shadow_tlb_cb"), self.k)

    def shadow_byte(self, addr: int) -> int | None:
        v = self.lib.emsan_shadow_byte(self.k, addr)
        return None if v < 0 else v

    def tag_at(self, addr: int) -> int | None:
        v = self.lib.emsan_tag_at(self.k, addr)
        return None if v < 0 else v

    # --- --checks inline ----------------------------------------------------------------------
    def check_inline(self, map_memory) -> bool:
        """Check heap accesses in translated code against a flat copy of the shadow, or of the
        tags in tag modes (inline.c); False when the engine cannot on this host (nothing was
        changed then). Tag modes keep the pointer tag in the address the TLB sees
        (Machine.tagged_tlb), which a virtual-TLB fill takes off."""
        lib, ffi, m = self.lib, self.ffi, self.machine
        recovery = m.pc_recovery()
        get_cpu, restore = recovery if recovery is not None else (0, 0)
        if not lib.emsan_inline_init(self.k, ffi.cast("void *", get_cpu), ffi.cast("void *", restore)):
            return False
        map_memory(self.base, self.base + self.size, 3, "[emsan-heap]", self.heap_memory)
        if self.tags:
            m.use_virtual_tlb(ffi.addressof(lib, "emsan_inline_tlb_cb"), self.k)
            m.tagged_tlb(True)
        return True

    # --- --checks mmio ------------------------------------------------------------------------
    def check_through_mmio(self, view_pa: int, map_memory) -> None:
        """Check heap accesses in an MMIO view of the heap instead of a memory hook (mmio.c).
        map_memory(lo, hi, prot, name, host) maps the heap's host memory at its guest address.
        Tag modes have a view per pointer tag, and the TLB sees the tags (Machine.tagged_tlb)."""
        lib, ffi, m = self.lib, self.ffi, self.machine
        host = lib.emsan_mmio_init(self.k, view_pa)
        if host == ffi.NULL:
            raise MemoryError("no host memory for emsan's heap")
        map_memory(self.base, self.base + self.size, 3, "[emsan-heap]", int(ffi.cast("uintptr_t", host)))
        prefix = "emsan_tags_mmio" if self.tags else "emsan_mmio"
        m.mmio_map(view_pa, lib.emsan_mmio_view_bytes(self.k), ffi.addressof(lib, prefix + "_read"),
                   ffi.addressof(lib, prefix + "_write"), self.k)
        m.use_virtual_tlb(ffi.addressof(lib, "emsan_mmio_tlb_cb"), self.k)
        if self.tags:
            m.tagged_tlb(True)
        recovery = m.pc_recovery()
        if recovery is not None:
            get_cpu, restore = recovery
            lib.emsan_mmio_set_pc_recovery(self.k, ffi.cast("void *", get_cpu), ffi.cast("void *", restore))

    def mmio_copy_on_write(self) -> None:
        """Guest memory is copy-on-write from now on (Machine.snapshot): the checking view reads
        and writes the heap's current copy through the engine, not emsan's host memory."""
        self.lib.emsan_mmio_copy_on_write(self.k, 1)

    # --- reports ----------------------------------------------------------------------------------
    def describe(self, addr: int, size: int = 0):
        """What the mode knows about the object at addr (emsan_obj_info; tag modes also about the
        access [addr, addr+size)): the native record, valid until the next call."""
        self.lib.emsan_kasan_describe(self.k, addr, size, self._obj)
        return self._obj

    def object_info(self, info) -> ObjectInfo | None:
        """The report's object from an emsan_obj_info."""
        if not info.found:
            return None
        stack = self.runtime.stack
        return ObjectInfo(info.start, info.size, info.cache_size, STATES[info.state], bool(info.large),
                          stack(info.alloc_stack), stack(info.free_stack), KINDS[info.kind], info.align,
                          info.alloc_tid, info.free_tid)

    def stats(self) -> dict[str, int]:
        return self.runtime.counters("emsan_kasan_stats", self.lib.emsan_kasan_get_stats, self.k)

    # --- a persistent fuzzing loop (native/checkpoint.c) -------------------------------------------
    def checkpoint(self) -> None:
        self.lib.emsan_kasan_checkpoint(self.k)

    def rollback(self) -> None:
        self.lib.emsan_kasan_rollback(self.k)

    def reseed(self, seed: int) -> None:
        self.lib.emsan_kasan_reseed(self.k, seed & (2**64 - 1))


# How a report names the functions emsan stands in for (C++ operators as demangled)
CALL_NAMES = {
    "MALLOC": "malloc", "CALLOC": "calloc", "REALLOC": "realloc", "REALLOCARRAY": "reallocarray",
    "MEMALIGN": "memalign", "ALIGNED_ALLOC": "aligned_alloc", "MEMALIGN_OR_ALIGNED_ALLOC": "memalign/aligned_alloc", "POSIX_MEMALIGN": "posix_memalign",
    "VALLOC": "valloc", "PVALLOC": "pvalloc", "FREE": "free",
    "NEW": "operator new(unsigned long)", "NEW_ARRAY": "operator new[](unsigned long)",
    "NEW_ALIGNED": "operator new(unsigned long, std::align_val_t)",
    "NEW_ARRAY_ALIGNED": "operator new[](unsigned long, std::align_val_t)",
    "NEW_NOTHROW": "operator new(unsigned long, std::nothrow_t const&)",
    "NEW_ARRAY_NOTHROW": "operator new[](unsigned long, std::nothrow_t const&)",
    "NEW_ALIGNED_NOTHROW": "operator new(unsigned long, std::align_val_t, std::nothrow_t const&)",
    "NEW_ARRAY_ALIGNED_NOTHROW": "operator new[](unsigned long, std::align_val_t, std::nothrow_t const&)",
    "DELETE": "operator delete", "DELETE_ARRAY": "operator delete[]",
    "DELETE_SIZED": "operator delete(void*, unsigned long)",
    "DELETE_ARRAY_SIZED": "operator delete[](void*, unsigned long)",
    "DELETE_ALIGNED": "operator delete(void*, std::align_val_t)",
    "DELETE_ARRAY_ALIGNED": "operator delete[](void*, std::align_val_t)",
    "DELETE_SIZED_ALIGNED": "operator delete(void*, unsigned long, std::align_val_t)",
    "DELETE_ARRAY_SIZED_ALIGNED": "operator delete[](void*, unsigned long, std::align_val_t)",
}
# The calls that take an alignment (a report shows it, 0 included)
ALIGNED_CALLS = {"MEMALIGN", "ALIGNED_ALLOC", "MEMALIGN_OR_ALIGNED_ALLOC", "POSIX_MEMALIGN", "NEW_ALIGNED", "NEW_ARRAY_ALIGNED",
                 "NEW_ALIGNED_NOTHROW", "NEW_ARRAY_ALIGNED_NOTHROW"}
ALLOC_NAMES = {"malloc": "malloc()", "new": "operator new", "new[]": "operator new[]"}
# Allocation errors, by EMSAN_ALLOCERR_* suffix: ASan's bug types. The kernel has none (its
# allocators WARN and return NULL), and these are the names users of user-space reports know.
ALLOC_BUGS = {"SIZE": "allocation-size-too-big", "CALLOC_OVERFLOW": "calloc-overflow",
              "REALLOCARRAY_OVERFLOW": "reallocarray-overflow", "PVALLOC_OVERFLOW": "pvalloc-overflow",
              "ALIGNMENT": "invalid-allocation-alignment", "ALIGNED_ALLOC": "invalid-aligned-alloc-alignment",
              "POSIX_MEMALIGN": "invalid-posix-memalign-alignment", "OOM": "out-of-memory"}


def call_name(fn: str) -> str:
    if fn.endswith("_CHK"):                     # _FORTIFY_SOURCE's: __memcpy_chk
        return "__" + fn.lower()
    return CALL_NAMES.get(fn, fn.lower())


def allocation_error_note(bug: str, q: AllocRequest, heap_size: int, max_size: int) -> str:
    """What was wrong with a refused request, in one sentence."""
    c = q.call if "(" in q.call else q.call + "()"
    if bug == "allocation-size-too-big":
        return f"{c} asked for {q.size:#x} bytes, more than the largest allocation emsan supports ({max_size:#x})."
    if bug in ("calloc-overflow", "reallocarray-overflow"):
        args = f"{q.count}, {q.size}" if bug == "calloc-overflow" else f"ptr, {q.count}, {q.size}"
        return f"{q.call}({args}): count * size cannot be represented in size_t."
    if bug == "pvalloc-overflow":
        return f"pvalloc({q.size:#x}): the size rounded up to the page size cannot be represented in size_t."
    if bug == "invalid-posix-memalign-alignment":
        return (f"posix_memalign(&ptr, {q.align}, {q.size}): the alignment must be a power of two and a "
                f"multiple of sizeof(void *) (8).")
    if bug in ("invalid-allocation-alignment", "invalid-aligned-alloc-alignment"):
        return f"{c} was asked for alignment {q.align}, which is not a power of two."
    if q.limit is not None:
        return (f"{c} asked for {q.size} bytes; the guest's resource limits (RLIMIT_AS, RLIMIT_DATA) leave "
                f"the heap {q.limit} bytes and it holds {q.in_use}.")
    return f"{c} asked for {q.size} bytes, which emsan's heap ({heap_size} bytes, holding {q.in_use}) cannot give."


class KasanMode:
    """The part of a KASAN mode that does not depend on how accesses are checked: emsan's
    allocator at the guest's allocator entry points, the string interceptors (with libc's
    read-ahead tolerance), the mmap area's shadow, and the parts of a report every mode has."""

    name: ClassVar[str]
    caps: ClassVar[Capabilities]
    native_mode: ClassVar[str] = "generic"     # the native operations behind the allocator (MODES)
    tag_functions: ClassVar[bool] = False      # also stand in for __hwasan_tag_memory
    hooks_accesses: bool = False               # a memory hook sees the accesses (its PC may be stale)
    report_in_engine: bool = False             # (the Mode protocol)

    def __init__(self, target: Target, seed: int = 0):
        self.target = target
        self.runtime = target.runtime
        self.machine, self.arch = target.machine, target.arch
        layout = target.layout
        self.kasan = Kasan(self.runtime, self.native_mode, layout.heap, layout.heap_size,
                           target.options.quarantine_size, seed)
        if target.options.shadow == "full":
            self.kasan.full_shadow()
        lib = self.runtime.lib
        self.access_error = lib.EMSAN_ERR_ACCESS
        self.free_bugs = {lib.EMSAN_ERR_DOUBLE_FREE: "double-free", lib.EMSAN_ERR_INVALID_FREE: "invalid-free",
                          lib.EMSAN_ERR_MISMATCH: "alloc-dealloc-mismatch",
                          lib.EMSAN_ERR_DELETE_MISMATCH: "new-delete-type-mismatch"}
        self.alloc_error = lib.EMSAN_ERR_ALLOC
        self.alloc_bugs = {getattr(lib, "EMSAN_ALLOCERR_" + k): v for k, v in ALLOC_BUGS.items()}
        lib.emsan_kasan_set_allocator_errors(self.kasan.k, int(target.options.allocator_errors == "report"))
        self._libc: dict[int, tuple[str, frozenset[str]]] = {}   # LIBC functions defined, not hooked
        self._imports: set[str] = set()                            # names the modules import
        self._modules = 0

    def map_heap(self) -> None:
        """Map the heap's memory, which emsan owns (the leak scanner reads objects through it)."""
        layout = self.target.layout
        self.target.map_memory(layout.heap, layout.heap + layout.heap_size, 3, "[emsan-heap]", self.kasan.heap_memory)

    # --- wiring ---------------------------------------------------------------------------------
    def module_loaded(self, module: ModuleInfo) -> None:
        # A stripped library's own copies and variants (ld.so's strchr, libc's __GI_strlen) have
        # names in its separate debug file, when one is installed (libc6-dbg).
        debug = self.target.debug_file(module.path)
        named = [module.path] + ([debug] if debug else [])
        absent = self.target.absent_isa
        for path in named:
            for ep in module_entry_points(path, module.base, strings=self.caps.string_interceptors,
                                          tags=self.tag_functions):
                if not absent & set(ep.name.split("_")):
                    self.kasan.intercept(ep.addr, ep.fn)
        if self.caps.string_interceptors:
            self.libc_callers(module, named)
        if not debug and not has_symtab(module.path):
            # A stripped library without debug file (Debian's libc): its string variants have
            # no names, so all of its code may make the read-ahead they make.
            self.kasan.tolerate_overreads(module.start, module.end)
        else:
            for path in named:
                for lo, hi in string_code_ranges(path, module.base):
                    self.kasan.tolerate_overreads(lo, hi)

    def libc_callers(self, module: ModuleInfo, named: list[str]) -> None:
        """Hook the C library functions checked at entry (native/libc.c) that something outside
        the library calls (entrypoints.py says why): in a static program (the first module, which
        defines them), those its own code calls, or all without .debug_aranges; elsewhere those
        some module imports, now or when a module importing them is loaded."""
        main, self._modules = not self._modules, self._modules + 1
        defs: dict[int, tuple[str, frozenset[str]]] = {}
        for path in named:
            defs.update(libc_functions(path, module.base))
        self._imports |= imported_functions(module.path)
        earlier = dict(self._libc)              # defined by modules that may have run already
        if main and defs:
            called = direct_callees(module.path, self.arch.name == "arm64")
            for addr, (fn, _names) in defs.items():
                if called is None or addr - module.base in called:
                    self.kasan.intercept(addr, fn)
                elif fn == "CHK_FAIL":
                    self._libc[addr] = defs[addr]      # hooked below if a call needs it
        else:
            self._libc.update(defs)
        want = [a for a, (_fn, names) in self._libc.items() if names & self._imports]
        # glibc's failed check inside a call judged at its return (__fgets_chk) judges it
        if any(fn in CHECKED_INSIDE for fn in self.kasan.hooked.values()) or \
                any(self._libc[a][0] in CHECKED_INSIDE for a in want):
            want += [a for a, (fn, _names) in self._libc.items() if fn == "CHK_FAIL"]
        for addr in dict.fromkeys(want):
            self.kasan.intercept(addr, self._libc.pop(addr)[0])
            if addr in earlier:
                self.machine.uc.ctl_remove_cache(addr, addr + 1)    # it may have run unhooked

    def intercept(self, addr: int, fn: str) -> None:
        self.kasan.intercept(addr, fn)

    def check_range(self, addr: int, size: int, is_write: bool, pc: int) -> None:
        self.kasan.check_range(addr, size, is_write, pc)

    def shadow_byte(self, addr: int) -> int | None:
        return self.kasan.shadow_byte(addr)

    def shadow_mmap_area(self, lo: int, hi: int) -> None:
        self.kasan.shadow_mmap_area(lo, hi)

    def mapping_changed(self, lo: int, hi: int, mapped: bool) -> None:
        self.kasan.mapping_changed(lo, hi, mapped)

    def limit_heap(self, live_bytes: int | None) -> None:
        self.runtime.lib.emsan_kasan_set_budget(self.kasan.k, 2**64 - 1 if live_bytes is None else max(live_bytes, 0))

    def report_key(self, report: Report) -> tuple:
        # A bug at an allocator's or interceptor's entry is one per call site, not per function (a
        # refused request that the guest's own C library then passes to another allocator entry).
        where = report.stack[report.title_frame] if report.title_frame < len(report.stack) else report.pc
        return (report.bug_type, where)

    def stats(self) -> dict[str, int]:
        return self.kasan.stats()

    def reseed(self, seed: int) -> None:
        self.kasan.reseed(stream_seed(seed, "tags"))

    def checkpoint(self) -> None:
        self.kasan.checkpoint()

    def rollback(self) -> None:
        self.kasan.rollback()

    # --- reports ----------------------------------------------------------------------------------
    def call_trace(self, e: Error) -> list[int]:
        """The access's (or free's) call trace, innermost first."""
        return confirm_candidate(self.runtime.stack(e.stack), self.target.is_call_return) or [e.pc]

    def locate_site(self, e: Error, stack: list[int]) -> tuple[Error, list[int]]:
        """An access seen by an MMIO view has a piece's size and no exact PC: the instruction is
        found by decoding near the candidate PCs (the address keeps a tag mode's pointer tag)."""
        if e.site is None:
            return e, stack
        tag = e.addr & ~UNTAGGED if self.arch.name == "arm64" else 0
        found = self.arch.locate(self.machine, e.site.candidates, e.pc, e.site.regs, e.addr & ~tag, e.is_write,
                                 e.size)
        if found is None:
            return e, stack
        pc, ea, size = found
        return replace(e, pc=pc, addr=tag | ea, size=size), [pc] + stack[1:]

    def title_frame(self, e: Error, stack: list[int]) -> int:
        """Which frame the title names: the caller, for frees and interceptors."""
        return 1 if (e.fn or e.type != self.access_error) and len(stack) > 1 else 0

    def add_notes(self, rep: Report, e: Error) -> None:
        """What the kernel's layout has no line for: who made the access, a mismatched family."""
        lib, obj, fn = self.runtime.lib, rep.obj, e.fn
        if fn and e.type == lib.EMSAN_ERR_ACCESS:
            rep.notes.append(f"The access was made by {call_name(fn)}() on behalf of its caller.")
        if e.type == lib.EMSAN_ERR_MISMATCH and obj is not None:
            rep.notes.append(f"The object was allocated with {ALLOC_NAMES[obj.kind]} and freed with "
                             f"{call_name(fn)}.")
        if e.type == lib.EMSAN_ERR_DELETE_MISMATCH:
            rep.request = AllocRequest(call_name(fn), e.size or None, None, e.record.align or None)
            if obj is not None:
                rep.notes.append(self.delete_mismatch_note(e, obj))
        if e.type == lib.EMSAN_ERR_INVALID_FREE and obj is None:
            rep.notes.append("The address is not in emsan's heap: it was never returned by an allocator.")

    def delete_mismatch_note(self, e: Error, obj) -> str:
        """SLUB's "Wrong slab cache" for C++'s sized and aligned delete: what the delete said the
        object was against what it is."""
        name, rec = call_name(e.fn), e.record
        alloc = ALLOC_NAMES[obj.kind] + (f" aligned to {obj.align}" if obj.align else "")
        if rec.size and rec.size != obj.size:
            return (f"Wrong size: {name} was given {rec.size} bytes, but the object is {obj.size} bytes "
                    f"(allocated with {alloc}).")
        have = f"aligned to {obj.align}" if obj.align else "default-aligned"
        return f"Wrong alignment: {name} was given alignment {rec.align}, but the object is {have} (allocated with {alloc})."

    def allocation_report(self, e: Error, task: Task) -> Report:
        """A request the allocator refused: the call trace is where it was made (the allocation
        stack), the title names the caller; there is no object and no shadow to show."""
        rec, lib = e.record, self.runtime.lib
        bug = self.alloc_bugs[rec.kind]
        oom = rec.kind == lib.EMSAN_ALLOCERR_OOM
        counted = bug in ("calloc-overflow", "reallocarray-overflow")
        q = AllocRequest(call_name(e.fn), e.size, rec.count if counted else None,
                         rec.align if e.fn in ALIGNED_CALLS else None,
                         (rec.count or None) if oom else None, rec.addr if oom else None)
        stack = self.call_trace(e)
        rep = Report(self.name, bug, "allocate", 0, e.size, e.pc, task, stack,
                     self.title_frame(e, stack), None, 0, request=q)
        rep.notes.append(allocation_error_note(bug, q, self.kasan.size, lib.EMSAN_MAX_ALLOCATION))
        return rep
