"""emsan's native runtime on one engine (native/runtime.h): the registers it reads, the stack
depot and collectors, and the queue of errors every detector (a KASAN mode, KFENCE) fills.

It needs only a Machine: emsan's own, or one wrapping an engine a harness made."""
from __future__ import annotations

from typing import Callable

from emsan.lazyclass import dataclass
from emsan.machine import native
from emsan.sanitizer.callbacks import guarded_callback

STACK_DEPTH = 64                 # EMSAN_STACK_DEPTH, the kernel's KASAN_STACK_DEPTH


@dataclass(frozen=True)
class AccessSite:
    """Where an access seen without its exact PC (an MMIO callback) was made: the general
    registers when it accessed memory, and the guest PCs QEMU recovered near it."""

    regs: dict[str, int]
    candidates: list[int]


@dataclass
class Error:
    """One queued error, as the detector saw it."""

    type: int                    # EMSAN_ERR_*
    is_write: bool
    addr: int
    size: int
    pc: int
    stack: int                   # depot handle of the access (or free) stack
    fn: str                      # the function emsan stood in for (FREE, STRLEN...), "" for accesses
    kind: int                    # deallocation family (alloc-dealloc-mismatch)
    site: AccessSite | None      # None: pc is exact
    record: object               # the native record, for details of one detector (KFENCE's object)


class Runtime:
    def __init__(self, machine, arch):
        self.ffi, self.lib = ffi, lib = native.load()
        self.machine = machine
        ids = machine.reg_ids
        regs = [ids[r] for r in arch.args[:6]] + [ids[arch.ret], ids[arch.sp], ids[arch.pc],
                                                  ids["lr"] if arch.name == "arm64" else 0, ids[arch.fp]]
        self.gprs = arch.gprs
        self._regs = ffi.new("int[]", regs)
        self._gprs = ffi.new("int[]", [ids[r] for r in arch.gprs])
        self.rt = ffi.gc(lib.emsan_runtime_new(ffi.cast("void *", machine.handle_int), int(arch.name == "arm64"),
                                               self._regs, self._gprs, len(arch.gprs)),
                         lib.emsan_runtime_destroy)
        self._fp = ffi.new("int[]", [ids[("q" if arch.name == "arm64" else "xmm") + str(i)] for i in range(8)])
        lib.emsan_runtime_set_fp_args(self.rt, self._fp)
        self.callback_error: Exception | None = None
        self._fn_names = {getattr(lib, n): n[len("EMSAN_FN_"):] for n in dir(lib) if n.startswith("EMSAN_FN_")}
        self._err = ffi.new("emsan_error *")
        self._frames = ffi.new("uint64_t[]", STACK_DEPTH)

    def fn_id(self, name: str) -> int:
        """The native id of a function emsan stands in for (MALLOC, STRLEN...)."""
        return getattr(self.lib, "EMSAN_FN_" + name)

    def set_stack(self, lo: int, hi: int) -> None:
        """The stack the frame-pointer walks may read."""
        self.lib.emsan_runtime_set_stack(self.rt, lo, hi)

    def counters(self, ctype: str, fill, owner) -> dict[str, int]:
        """A native counters struct as a dict: fill(owner, struct *) fills a `ctype`."""
        st = self.ffi.new(ctype + " *")
        fill(owner, st)
        return {f: getattr(st, f) for f in dir(st)}

    def intercepted(self, addr: int) -> None:
        """The function at addr is stood in for: it never runs its own code (nor its ret), which
        the shadow call stack must know."""
        self.lib.emsan_scs_mark_intercept(self.rt, addr)

    def stack(self, handle: int) -> list[int]:
        """The frames a depot handle names, innermost first."""
        n = self.lib.emsan_depot_get(self.rt, handle, self._frames, STACK_DEPTH)
        return list(self._frames[0:n])

    def on_error(self, cb: Callable[[], object]) -> None:
        """Have cb() called from inside the engine as soon as an error is queued."""
        self._error_cb = guarded_callback(self.ffi, self.machine, self, cb)
        self.lib.emsan_set_error_callback(self.rt, self._error_cb)

    def queued(self) -> int:
        """How many errors wait in the queue."""
        return self.lib.emsan_errors_queued(self.rt)

    def pending(self) -> list[Error]:
        """The queued errors, oldest first (the queue is empty afterwards)."""
        out = []
        while self.lib.emsan_pop_error(self.rt, self._err):
            e = self.ffi.new("emsan_error *", self._err[0])
            s = e.site
            site = None
            if s.nregs:
                site = AccessSite(dict(zip(self.gprs, s.regs[0:s.nregs])), list(s.cand[0:s.ncand]))
            out.append(Error(e.type, bool(e.is_write), e.addr, e.size, e.pc, e.stack,
                             self._fn_names.get(e.fn, ""), e.kind, site, e))
        return out
