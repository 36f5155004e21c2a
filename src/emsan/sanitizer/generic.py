"""Generic KASAN mode for unmodified binaries: a native shadow check on every heap access,
emsan's own allocator at the guest's allocator entry points, a quarantine, and interceptors."""
from __future__ import annotations

from emsan.sanitizer.callbacks import guarded_callback
from emsan.sanitizer.stacks import confirm_candidate
from emsan.sanitizer.native_heap import KINDS, STATES, Error, NativeHeap
from emsan.sanitizer.report import ObjectInfo, Report, first_bad_addr, shadow_bug_type, shadow_window

FN_NAMES = {"FREE": "free", "DELETE": "operator delete", "DELETE_ARRAY": "operator delete[]",
            "REALLOC": "realloc", "REALLOCARRAY": "reallocarray"}


class GenericMode:
    name = "generic"
    access_hook = "emsan_mem_cb"      # the native per-access check

    def prepare_heap(self) -> None:
        """Configure the native heap before any hook can reach it (tag modes override this)."""

    def __init__(self, machine, arch, heap_base: int, heap_size: int, quarantine_bytes: int,
                 is_call_return=lambda pc, ret: False, check_accesses: bool = True):
        # is_call_return(pc, ret): does `ret` follow a call instruction, in another function
        # than `pc`? It confirms a leaf function's unsaved return address.
        self.is_call_return = is_call_return
        self.machine = machine
        self.arch = arch
        self.heap = NativeHeap(machine, arch, heap_base, heap_size, quarantine_bytes)
        lib = self.heap.lib
        self._entry_cb = self.heap.ffi.addressof(lib, "emsan_entry_cb")
        self.prepare_heap()
        # Unbounded on purpose: unicorn 2.1.3 syncs the PC before a memory hook only when the
        # hook covers every address (a range-bounded hook on arm64 sees the block's first PC;
        # tests/test_machine.py). The C callback does the range test itself, at the same cost.
        # check_accesses=False: the guest checks its own accesses (compiler-assisted mode).
        if check_accesses:
            machine.hook_mem_access_native(self.heap.ffi.addressof(lib, self.access_hook), self.heap.h, 1, 0)
        self.hooked: dict[int, str] = {}
        self.stacks = None          # a sanitizer.stacks.Stacks, once the session picks a collector
        self._fn_by_id = {getattr(lib, n): n[len("EMSAN_FN_"):] for n in dir(lib) if n.startswith("EMSAN_FN_")}

    # --- wiring ---------------------------------------------------------------------------------
    def intercept(self, addr: int, fn: str) -> None:
        """Stand in for the function at `addr` (an allocator entry point or a string function)."""
        if addr in self.hooked:
            return
        self.hooked[addr] = fn
        if self.stacks is not None:
            self.stacks.intercepted(addr)
        self.machine.hook_code_native(self._entry_cb, self.heap.entry(fn), addr)

    def set_stack(self, lo: int, hi: int) -> None:
        self.heap.set_stack(lo, hi)

    def on_error(self, cb) -> None:
        """Have cb() called from inside the engine as soon as an error is queued."""
        self._error_cb = guarded_callback(self.heap.ffi, self.machine, self, cb)
        self.heap.lib.emsan_set_error_callback(self.heap.h, self._error_cb)

    def check_range(self, addr: int, size: int, is_write: bool, pc: int) -> None:
        """A range touched on the guest's behalf (a system call's buffer), checked as one access."""
        self.heap.lib.emsan_check_range_at(self.heap.h, addr, size, int(is_write), pc)

    def tolerate_overreads(self, lo: int, hi: int) -> None:
        self.heap.add_tolerant_range(lo, hi)

    # --- reports ----------------------------------------------------------------------------------
    def pending(self) -> list[Error]:
        out = []
        while (e := self.heap.pop_error()) is not None:
            out.append(e)
        return out

    def build(self, e: Error, comm: str, pid: int) -> Report | None:
        heap = self.heap
        lib = heap.lib
        stack = confirm_candidate(heap.stack(e.stack), self.is_call_return) or [e.pc]
        fn = self._fn_by_id.get(e.fn, "")
        if e.type == lib.EMSAN_ERR_ACCESS and (ctx := heap.mmio_error_context()) is not None:
            # Seen by the MMIO view: the size is that of one piece and the PC is unknown. The
            # instruction is one of those near the candidates QEMU gave, else found by
            # decoding on from the PC Unicorn last synced.
            block, regs, cands = ctx
            found = None
            for c in cands:
                found = self.arch.locate_access(self.machine, c, regs, e.addr, e.is_write, 2, e.size)
                if found is not None:
                    break
            if found is None and cands:             # the access is at or just after them
                found = self.arch.locate_access(self.machine, min(cands), regs, e.addr, e.is_write, 8, e.size)
            if found is None:
                found = self.arch.locate_access(self.machine, block, regs, e.addr, e.is_write, 0, e.size)
            if found is not None:
                pc, ea, size = found
                if not e.is_write and self._accessible(ea, size):
                    # QEMU performs an unaligned load from MMIO as the two aligned loads around
                    # it: the piece that looked bad reaches past the bytes the instruction reads.
                    return None
                e = Error(e.type, e.is_write, ea, size, pc, e.stack, e.fn, e.kind)
                stack = [pc] + stack[1:]
        if e.type == lib.EMSAN_ERR_ACCESS:
            size = e.size
            wraps = e.addr + size > 1 << 64
            first_bad = first_bad_addr(heap.shadow_byte, e.addr, size)
            bug = "out-of-bounds" if wraps else shadow_bug_type(heap.shadow_byte, first_bad)
            access = "write" if e.is_write else "read"
            title = 1 if fn and len(stack) > 1 else 0      # interceptors: the caller is to blame
        else:
            bug = {lib.EMSAN_ERR_DOUBLE_FREE: "double-free", lib.EMSAN_ERR_INVALID_FREE: "invalid-free",
                   lib.EMSAN_ERR_MISMATCH: "alloc-dealloc-mismatch"}[e.type]
            access, size, first_bad = "free", 0, e.addr
            title = 1 if len(stack) > 1 else 0
        obj = self._object(first_bad if e.type == lib.EMSAN_ERR_ACCESS else e.addr)
        rep = Report(self.name, bug, access, e.addr, size, e.pc, comm, pid, stack, title, obj, first_bad)
        if heap.shadow_byte(first_bad) is not None:
            rep.shadow_rows = shadow_window(heap.shadow_byte, first_bad)
        self.add_notes(rep, e, fn)
        return rep

    def _accessible(self, addr: int, size: int) -> bool:
        """Is every byte of [addr, addr+size) accessible by the shadow (00, or the 01-07 prefix)?"""
        g = addr & ~7
        while g < addr + size:
            s = self.heap.shadow_byte(g)
            if s is None or (s != 0 and not (s < 8 and addr + size - g <= s)):
                return False
            g += 8
        return True

    def add_notes(self, rep: Report, e: Error, fn: str) -> None:
        """What the kernel's layout has no line for: who made the access, a mismatched family."""
        lib, obj = self.heap.lib, rep.obj
        if fn and e.type == lib.EMSAN_ERR_ACCESS:
            rep.notes.append(f"The access was made by {fn.lower()}() on behalf of its caller.")
        if e.type == lib.EMSAN_ERR_MISMATCH and obj is not None:
            rep.notes.append(f"The object was allocated with {_alloc_name(obj.kind)} and freed with "
                             f"{FN_NAMES.get(fn, fn.lower())}.")
        if e.type == lib.EMSAN_ERR_INVALID_FREE and obj is None:
            rep.notes.append("The address is not in emsan's heap: it was never returned by an allocator.")

    def _object(self, addr: int) -> ObjectInfo | None:
        info = self.heap.describe(addr)
        if info is None:
            return None
        return ObjectInfo(info.start, info.size, info.cache_size, STATES[info.state], bool(info.large),
                          self.heap.stack(info.alloc_stack), self.heap.stack(info.free_stack), KINDS[info.kind])

    def stats(self) -> dict[str, int]:
        return self.heap.stats()


def _alloc_name(kind: str) -> str:
    return {"malloc": "malloc()", "new": "operator new", "new[]": "operator new[]"}[kind]
