"""One Unicorn engine per guest: mapping, registers, hooks and the run loop.

Register and memory access on the paths Python takes per syscall or per allocation goes
straight through libunicorn's C API (the binding's wrappers rebuild ctypes objects on every
call and cost 3-5x more, measured on this project's machines).
"""
from __future__ import annotations

import ctypes
import threading
import time
from typing import Callable

from emsan.machine.unicorn_lib import uclib  # before unicorn: it makes the binding load emsan's engine

import unicorn
from unicorn import arm64_const, unicorn_const as uconst, x86_const

from emsan.lazyclass import dataclass
from emsan.machine import native

UNICORN_VERSION = unicorn.__version__
UC_PROT = {"r": uconst.UC_PROT_READ, "w": uconst.UC_PROT_WRITE, "x": uconst.UC_PROT_EXEC}
PAGE = 0x1000
UNTIL = 0xFFFF_FFFF_FFFF_FFF0  # an address no guest executes: emu_start never stops there
CALL_RETURN = 0x7FFF_FFFF_F000   # where call() makes a guest function return to: no guest memory

_ACCESS = {
    uconst.UC_MEM_READ_UNMAPPED: "read", uconst.UC_MEM_WRITE_UNMAPPED: "write",
    uconst.UC_MEM_FETCH_UNMAPPED: "fetch", uconst.UC_MEM_READ_PROT: "read",
    uconst.UC_MEM_WRITE_PROT: "write", uconst.UC_MEM_FETCH_PROT: "fetch",
}


def engine_ok(err: int) -> None:
    """A uc_err from the engine (Unicorn's API, or emsan's native code calling it) as the binding's
    UcError."""
    if err:
        raise unicorn.UcError(err)


@dataclass
class MachineFault:
    """Why emulation stopped when the guest did something a real CPU would trap on."""

    kind: str            # "segv", "ill", "trap", "fpe", "bus"
    pc: int
    addr: int = 0        # faulting data address (segv)
    access: str = ""     # read / write / fetch
    mapped: bool = False  # the page exists but its protection forbids the access
    size: int = 0        # bytes of the faulting data access
    page_only: bool = False  # addr is the page the access touched (the TLB knows no more)


def _reg_table(module, prefix: str) -> dict[str, int]:
    return {k[len(prefix):].lower(): v for k, v in vars(module).items()
            if k.startswith(prefix) and isinstance(v, int)}


ARCHES = {
    "x86_64": (uconst.UC_ARCH_X86, uconst.UC_MODE_64, _reg_table(x86_const, "UC_X86_REG_")),
    "arm64": (uconst.UC_ARCH_ARM64, uconst.UC_MODE_ARM, _reg_table(arm64_const, "UC_ARM64_REG_")),
}


class Waker:
    """Stops the engine when a moment of wall-clock time comes, from a host thread that sleeps
    until the earliest moment asked for (no polling; nothing runs per block until a tick is
    first asked for).

    Two kinds of moments. A tick (a guest timer expires) must let the guest resume exactly where
    it was: the thread only raises a flag, and a native block hook (native/vmem.c, installed the
    first time a tick is asked for) stops the engine at the next block start, where the PC is
    exact. A stop (--timeout) ends the run: the thread stops the engine at once, and again every
    RETRY seconds until the run is over (a stop that came between two runs would be lost)."""

    RETRY = 0.001

    def __init__(self, machine: "Machine"):
        self.machine = machine
        self.tick_at: float | None = None
        self.stop_at: float | None = None
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.flag = None                 # int[2] the block hook reads: asked, done

    def set(self, tick_at: float | None, stop_at: float | None) -> None:
        with self.cond:
            if (tick_at, stop_at) == (self.tick_at, self.stop_at):
                return
            self.tick_at, self.stop_at = tick_at, stop_at
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="emsan-waker", daemon=True)
                self.thread.start()
            self.cond.notify()

    def _loop(self) -> None:
        with self.cond:
            while True:
                now = time.monotonic()
                if self.stop_at is not None and now >= self.stop_at:
                    self.machine.wake()
                    self.cond.wait(self.RETRY)
                    continue
                if self.tick_at is not None and now >= self.tick_at and self.flag is not None:
                    self.flag[0] = 1
                    self.tick_at = None          # asked once; the next moment comes with set()
                moments = [t for t in (self.tick_at, self.stop_at) if t is not None]
                self.cond.wait(max(0.0, min(moments) - now) if moments else None)


class Machine:
    """A Unicorn engine for one architecture, with fast register access and the hooks emsan uses."""

    def __init__(self, arch: str, uc: unicorn.Uc | None = None):
        """A new engine, or `uc`, one a harness made and configured itself (then left as it is)."""
        uc_arch, uc_mode, regs = ARCHES[arch]
        self.arch = arch
        self.uc = uc if uc is not None else unicorn.Uc(uc_arch, uc_mode)
        self.handle = self.uc._uch
        self.handle_int: int = self.uc._uch.value
        self.reg_ids = regs
        self._val = ctypes.c_uint64()
        self._pval = ctypes.byref(self._val)
        self._keep: list = []            # callbacks and buffers Unicorn points at
        self.snapshotted = False         # a memory snapshot exists (see snapshot())
        self._intr_hooked = False        # arm64: an interrupt hook of emsan's exists
        self.fault: MachineFault | None = None
        self.stop_reason: str | None = None   # set by whoever calls stop()
        # handler(pc) for an undefined instruction, True when it emulated it (see emulate_undefined)
        self._undefined_handler: Callable[[int], bool] | None = None
        self._syscall_pc_bias = 0
        self.space = None      # the guest's page table and arenas (machine.vmem), once an OS sets them up
        self.running = False
        self.waker = Waker(self)
        self.slice = None                # int64[2] of the thread scheduler's block hook (use_time_slice)
        self._slice_hook = 0
        # arm64 guests may hand the kernel tagged pointers (the tagged-address ABI): emsan's own
        # reads and writes of guest memory ignore the top byte, as the MMU does with TBI.
        self.addr_mask = 0x00FF_FFFF_FFFF_FFFF if arch == "arm64" else 0xFFFF_FFFF_FFFF_FFFF
        if arch == "arm64" and uc is None:
            self._setup_arm64()
        self.pc_id = regs["rip"] if arch == "x86_64" else regs["pc"]
        self.sp_id = regs["rsp"] if arch == "x86_64" else regs["sp"]

    def _setup_arm64(self) -> None:
        uc = self.uc
        uc.ctl_set_cpu_model(arm64_const.UC_CPU_ARM64_MAX)
        self.top_byte_ignore()                  # on for every arm64 guest, as on Linux
        uc.reg_write(arm64_const.UC_ARM64_REG_CPACR_EL1, 3 << 20)

    def top_byte_ignore(self) -> None:
        """arm64: the MMU ignores an address's top byte (TBI), where pointer tags live; also for
        an engine a harness made (with or without its MMU on). QEMU believes EL1 is AArch32 until
        SCR_EL3.RW and HCR_EL2.RW say otherwise, and then silently ignores TCR_EL1.TBI0 (found by
        experiment with the pinned Unicorn)."""
        uc = self.uc
        uc.cpr_write(3, 6, 1, 1, 0, 0x401)      # SCR_EL3 = NS | RW
        uc.cpr_write(3, 4, 1, 1, 0, 1 << 31)    # HCR_EL2.RW
        # TBI1 as well: user code never reaches the upper half, and with both bits emsan's engine
        # strips a tag with one sign extension per access instead of a compare and select
        # (engine/patches/003; measured in bench/README.md, "Engine").
        uc.cpr_write(3, 0, 2, 0, 2, uc.cpr_read(3, 0, 2, 0, 2) | 1 << 37 | 1 << 38)    # TCR_EL1.TBI0 | TBI1

    # --- registers (C API, no binding wrappers) -------------------------------------------
    def reg(self, name: str) -> int:
        uclib.uc_reg_read(self.handle, self.reg_ids[name], self._pval)
        return self._val.value

    def set_reg(self, name: str, value: int) -> None:
        self._val.value = value & 0xFFFF_FFFF_FFFF_FFFF
        uclib.uc_reg_write(self.handle, self.reg_ids[name], self._pval)

    def reg_id(self, rid: int) -> int:
        uclib.uc_reg_read(self.handle, rid, self._pval)
        return self._val.value

    def set_reg_id(self, rid: int, value: int) -> None:
        self._val.value = value & 0xFFFF_FFFF_FFFF_FFFF
        uclib.uc_reg_write(self.handle, rid, self._pval)

    @property
    def pc(self) -> int:
        return self.reg_id(self.pc_id)

    @pc.setter
    def pc(self, value: int) -> None:
        # A single reg_write (never the batch API) so Unicorn abandons the current block.
        # Inside an x86 syscall hook Unicorn adds the instruction's length after the hook
        # returns, so a redirect made there must pre-compensate.
        self.set_reg_id(self.pc_id, value - self._syscall_pc_bias)

    @property
    def sp(self) -> int:
        return self.reg_id(self.sp_id)

    @sp.setter
    def sp(self, value: int) -> None:
        self.set_reg_id(self.sp_id, value)

    def sysreg(self, op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
        """An arm64 system register by its encoding (the ID registers have no named constant)."""
        return self.uc.cpr_read(op0, op1, crn, crm, op2)

    def set_sysreg(self, op0: int, op1: int, crn: int, crm: int, op2: int, value: int) -> None:
        self.uc.cpr_write(op0, op1, crn, crm, op2, value)

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """What the x86 guest's CPUID instruction returns (eax, ebx, ecx, edx): the engine's CPU
        model has no query API, so one CPUID runs on a scratch page outside every mapping (a
        page of the guest's page table when an OS set one up: the engine's TLB fill reads it)."""
        ctx = self.uc.context_save()
        if self.space is not None:
            space = self.space
            page = next(a for a in range(1 << 24, space.task_size, 1 << 24) if not space.prot_at(a))
            space.map(page, page + PAGE, uconst.UC_PROT_READ | uconst.UC_PROT_EXEC)
            release = lambda: space.unmap(page, page + PAGE, True)      # noqa: E731
        else:
            taken = list(self.uc.mem_regions())
            page = next(a for a in range(PAGE, 1 << 32, 1 << 24)
                        if all(end < a or begin >= a + PAGE for begin, end, _prot in taken))
            self.uc.mem_map(page, PAGE, uconst.UC_PROT_READ | uconst.UC_PROT_EXEC)
            release = lambda: self.uc.mem_unmap(page, PAGE)             # noqa: E731
        try:
            self.uc.mem_write(page, b"\x0f\xa2")                # cpuid
            self.set_reg("rax", leaf)
            self.set_reg("rcx", subleaf)
            # Stopped by the address after it, not by an instruction count: a count installs the
            # engine's counting hook, which later runs of the guest then trip over.
            self.uc.emu_start(page, page + 2)
            return tuple(self.reg(r) & 0xFFFF_FFFF for r in ("rax", "rbx", "rcx", "rdx"))   # type: ignore[return-value]
        finally:
            release()
            self.uc.context_restore(ctx)

    # --- memory -----------------------------------------------------------------------------
    def read(self, addr: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        if uclib.uc_mem_read(self.handle, addr & self.addr_mask, buf, size):
            raise MemoryError(f"guest read of {size} bytes at {addr:#x} failed")
        return buf.raw

    def try_read(self, addr: int, size: int) -> bytes | None:
        buf = ctypes.create_string_buffer(size)
        return None if uclib.uc_mem_read(self.handle, addr & self.addr_mask, buf, size) else buf.raw

    def write(self, addr: int, data: bytes) -> None:
        if uclib.uc_mem_write(self.handle, addr & self.addr_mask, bytes(data), len(data)):
            raise MemoryError(f"guest write of {len(data)} bytes at {addr:#x} failed")

    def read_u64(self, addr: int) -> int:
        if uclib.uc_mem_read(self.handle, addr & self.addr_mask, self._pval, 8):
            raise MemoryError(f"guest read at {addr:#x} failed")
        return self._val.value

    def read_cstr(self, addr: int, limit: int = 4096) -> bytes:
        out = bytearray()
        while len(out) < limit:
            chunk = self.try_read(addr, min(256, PAGE - (addr & (PAGE - 1))))
            if chunk is None:
                raise MemoryError(f"guest string at {addr:#x} is not readable")
            nul = chunk.find(b"\0")
            if nul >= 0:
                return bytes(out + chunk[:nul])
            out += chunk
            addr += len(chunk)
        return bytes(out)

    def map(self, addr: int, size: int, prot: int) -> None:
        if not self.snapshotted:
            self.uc.mem_map(addr, size, prot)
            return
        # Pages an unmap left in the engine (see unmap()) are used again, zeroed as new ones are.
        end = addr + size
        for lo, last, _ in sorted(self.uc.mem_regions()):
            lo, hi = max(lo, addr), min(last + 1, end)
            if lo >= hi:
                continue
            if addr < lo:
                self.uc.mem_map(addr, lo - addr, prot)
            for a in range(lo, hi, 1 << 20):
                self.uc.mem_write(a, bytes(min(1 << 20, hi - a)))
            addr = hi
        if addr < end:
            self.uc.mem_map(addr, end - addr, prot)

    def map_ptr(self, addr: int, size: int, prot: int, host_ptr: int) -> None:
        """Map host memory the caller owns (and keeps alive) at guest physical `addr`."""
        err = uclib.uc_mem_map_ptr(self.handle, addr, size, prot, ctypes.c_void_p(host_ptr))
        engine_ok(err)

    def mmio_map(self, addr: int, size: int, read_cfunc, write_cfunc, user_data) -> None:
        """Physical [addr, addr+size) served by C callbacks (cffi function pointers)."""
        ffi, _ = native.load()
        err = uclib.uc_mmio_map(self.handle, addr, size, ctypes.c_void_p(int(ffi.cast("uintptr_t", read_cfunc))),
                                ctypes.c_void_p(int(ffi.cast("uintptr_t", user_data))),
                                ctypes.c_void_p(int(ffi.cast("uintptr_t", write_cfunc))),
                                ctypes.c_void_p(int(ffi.cast("uintptr_t", user_data))))
        engine_ok(err)
        self._keep.append((read_cfunc, write_cfunc, user_data))

    def unmap(self, addr: int, size: int) -> None:
        # Under a memory snapshot Unicorn can unmap only whole regions, and one mapped since the
        # snapshot and unmapped comes back when it is restored, where it may collide with the
        # region it was split from. The pages stay until the restore drops them (the guest's
        # memory map, not the engine, says what is mapped; a use after munmap goes unnoticed).
        if not self.snapshotted:
            self.uc.mem_unmap(addr, size)

    def protect(self, addr: int, size: int, prot: int) -> None:
        # Unicorn refuses to change protections under a memory snapshot: they stay as they were.
        if not self.snapshotted:
            self.uc.mem_protect(addr, size, prot)

    # --- hooks --------------------------------------------------------------------------------
    def hook(self, htype: int, cb: Callable, begin: int = 1, end: int = 0, arg1: int = 0) -> int:
        h = self.uc.hook_add(htype, cb, None, begin, end, arg1)
        self._keep.append(cb)
        return h

    def hook_native(self, htype: int, cfunc, user_data, begin: int = 1, end: int = 0) -> int:
        """Register a C callback (a cffi function pointer) with Unicorn; no Python per event."""
        ffi, lib = native.load()
        hh = ffi.new("size_t *")
        err = lib.emsan_hook_add(ffi.cast("void *", self.handle_int), hh, htype,
                                 ffi.cast("void *", cfunc), user_data, begin, end)
        engine_ok(err)
        self._keep.append((cfunc, user_data))
        return hh[0]

    def hook_mem_access_native(self, cfunc, user_data, begin: int, end: int) -> int:
        """A C check on every guest load and store in [begin, end]."""
        return self.hook_native(uconst.UC_HOOK_MEM_READ | uconst.UC_HOOK_MEM_WRITE, cfunc, user_data, begin, end)

    def hook_code_native(self, cfunc, user_data, addr: int) -> int:
        """A C callback before the instruction at `addr` (a function entry emsan stands in for)."""
        return self.hook_native(uconst.UC_HOOK_CODE, cfunc, user_data, addr, addr)

    def hook_code_once(self, addr: int, cb: Callable[[], None]) -> None:
        """A Python callback the first time the instruction at `addr` runs."""
        box: list[int] = []

        def fire(uc, address, size, ud):
            self.uc.hook_del(box[0])
            cb()
        box.append(self.hook(uconst.UC_HOOK_CODE, fire, addr, addr))

    def hook_code(self, addr: int, cb: Callable[[], None]) -> int:
        """A Python callback every time the instruction at `addr` runs."""
        return self.hook(uconst.UC_HOOK_CODE, lambda uc, address, size, ud: cb(), addr, addr)

    def use_virtual_tlb(self, fill_cfunc, user_data) -> int:
        """Switch to Unicorn's virtual-TLB mode, with a C UC_HOOK_TLB_FILL callback choosing each
        page's physical address (memory and PROT hooks then see physical addresses). With a guest
        page table (machine.vmem), the callback is consulted for the pages the table allows."""
        if self.space is not None:
            self.space.set_inner(fill_cfunc, user_data)
            self._keep.append((fill_cfunc, user_data))
            return 0
        h = self.hook_native(uconst.UC_HOOK_TLB_FILL, fill_cfunc, user_data)
        self.uc.ctl_set_tlb_mode(uconst.UC_TLB_VIRTUAL)
        return h

    def tagged_tlb(self, keep: bool) -> None:
        """arm64: whether loads and stores reach the TLB with their pointer tag (a virtual-TLB
        fill then sees it and maps each tag of a page on its own) or without it, the default
        (engine/patches/014 and 003)."""
        err = uclib.uc_emsan_tagged_tlb(self.handle, ctypes.c_bool(keep))
        engine_ok(err)

    def hook_block_native(self, cfunc, user_data) -> int:
        """A C callback at the start of every basic block."""
        return self.hook_native(uconst.UC_HOOK_BLOCK, cfunc, user_data)

    def filter_block_hook(self, hook: int, filter_cfunc, user_data) -> None:
        """Translate the calls of block hook `hook` only into the blocks filter_cfunc(uc, address,
        size, user_data) wants, while it is the only block hook (engine/patches/012)."""
        ffi, lib = native.load()
        err = lib.emsan_block_filter(ffi.cast("void *", self.handle_int), hook, ffi.cast("void *", filter_cfunc),
                                     user_data)
        engine_ok(err)
        self._keep.append((filter_cfunc, user_data))

    def hook_mem_prot(self, cb: Callable[[int, int, int], bool]) -> int:
        """cb(access, addr, size) on a protection fault (after the engine's own fault hook);
        True lets the access proceed. Faults are rare: this is a Python hook."""
        def fire(uc, access, addr, size, value, ud):
            return cb(access, addr, size)
        return self.hook(uconst.UC_HOOK_MEM_READ_PROT | uconst.UC_HOOK_MEM_WRITE_PROT
                         | uconst.UC_HOOK_MEM_FETCH_PROT, fire)

    def on_syscall(self, cb: Callable[[], None]) -> None:
        """cb() runs for each guest system call, with the PC already past the instruction."""
        if self.arch == "x86_64":
            self.hook(uconst.UC_HOOK_INSN, lambda uc, ud: self._x86_syscall(cb), arg1=x86_const.UC_X86_INS_SYSCALL)
            self.hook(uconst.UC_HOOK_INTR, self._x86_intr)
        else:
            self._intr_hooked = True
            self.hook(uconst.UC_HOOK_INTR, lambda uc, intno, ud: self._arm64_intr(intno, cb))
        self.hook(uconst.UC_HOOK_MEM_INVALID, self._mem_invalid)
        self.hook(uconst.UC_HOOK_INSN_INVALID, self._insn_invalid)

    # Exceptions become machine faults; the os layer turns them into signals.
    _X86_INTR = {0: "fpe", 1: "trap", 3: "trap", 4: "segv", 5: "segv", 6: "ill", 13: "segv", 14: "segv", 17: "bus"}
    _ARM64_INTR = {1: "ill", 4: "segv", 7: "trap", 8: "bus"}

    @property
    def syscall_pc_bias(self) -> int:
        """How far the engine will move the PC when the current syscall hook returns."""
        return self._syscall_pc_bias

    def _x86_syscall(self, cb: Callable[[], None]) -> None:
        self._syscall_pc_bias = 2        # length of `syscall`
        try:
            cb()
        finally:
            self._syscall_pc_bias = 0

    def _x86_intr(self, uc, intno: int, ud) -> None:
        self.fault = MachineFault(self._X86_INTR.get(intno, "ill"), self.pc)
        self.stop("fault")

    _ARM64_SVC, _ARM64_UDEF = 2, 1       # QEMU's EXCP_SWI and EXCP_UDEF, Unicorn's interrupt numbers

    def emulate_undefined(self, handler: Callable[[int], bool]) -> None:
        """handler(pc) runs when the guest executes an instruction the engine does not implement
        (arm64: MTE's); it returns True when it did the instruction's work and advanced the PC."""
        self._undefined_handler = handler
        if self.arch == "arm64" and not self._intr_hooked:
            # A harness's engine, whose interrupts are the harness's: only undefined instructions
            # are looked at (one not emulated stops the engine with a fault, as with no hook).
            self._intr_hooked = True
            self.hook(uconst.UC_HOOK_INTR, lambda uc, intno, ud: self._arm64_intr(intno, None))

    def _arm64_intr(self, intno: int, syscall_cb: Callable[[], None] | None) -> None:
        if intno == self._ARM64_SVC and syscall_cb is not None:
            syscall_cb()
            return
        handler = self._undefined_handler
        if intno == self._ARM64_UDEF and handler is not None and handler(self.pc):
            return
        if syscall_cb is None and intno != self._ARM64_UDEF:
            return
        self.fault = MachineFault(self._ARM64_INTR.get(intno, "ill"), self.pc)
        self.stop("fault")

    def _mem_invalid(self, uc, access: int, addr: int, size: int, value: int, ud) -> bool:
        if self.fault is None:
            mapped = access in (uconst.UC_MEM_READ_PROT, uconst.UC_MEM_WRITE_PROT, uconst.UC_MEM_FETCH_PROT)
            kind = _ACCESS.get(access, "read")
            pc = addr if kind == "fetch" else self.pc
            self.fault = MachineFault("segv", pc, addr, kind, mapped, size)
        return False

    def _insn_invalid(self, uc, ud) -> bool:
        self.fault = MachineFault("ill", self.pc)
        return False

    # --- running ------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.uc.emu_stop()

    def wake_at(self, tick_at: float | None, stop_at: float | None = None) -> None:
        """Stop the engine (reason "wake") when time.monotonic() reaches tick_at, at a block start,
        resumable; or at stop_at, at once, to end the run (None: never)."""
        if tick_at is not None and self.waker.flag is None:
            if self.running:             # installed between two runs (the run stops here)
                self.stop("tick-hook")
            else:
                self._install_tick_hook()
        self.waker.set(tick_at, stop_at)

    def _install_tick_hook(self) -> None:
        """The block hook that stops the engine when the waker raises its flag; blocks translated
        before have no hook, so the translation cache starts afresh (between two runs only)."""
        ffi, lib = native.load()
        flag = ffi.new("int[2]")
        self.hook_block_native(ffi.addressof(lib, "emsan_tick_cb"), flag)
        self.uc.ctl_flush_tb()
        self.waker.flag = flag

    def use_time_slice(self) -> None:
        """Install the block hook that stops the engine (run() returns "slice") when a thread's
        slice of blocks is used up (native/sched.c); between two runs only, as the tick hook."""
        if self.slice is None:
            ffi, lib = native.load()
            self.slice = ffi.new("int64_t[2]")
            self._slice_hook = self.hook_block_native(ffi.addressof(lib, "emsan_slice_cb"), self.slice)
            self.uc.ctl_flush_tb()

    def drop_time_slice(self) -> None:
        """Remove the slice hook (one thread is left: it cost a computing guest 1.3-1.4x,
        bench/threads.py); use_time_slice() installs it again. Between two runs only: the
        translation cache starts afresh, without the hook's call in every block. Through the C
        API: the binding's hook_del knows only the hooks it added itself."""
        if self.slice is not None:
            err = uclib.uc_hook_del(self.handle, self._slice_hook)
            engine_ok(err)
            self.slice = None
            self.uc.ctl_flush_tb()

    def wake(self) -> None:
        """Called by the waker's thread to end the run: stop the engine if it runs (uc_emu_stop is
        thread-safe; Unicorn's own emu_start timeout works the same way)."""
        if self.running:
            if self.stop_reason is None:
                self.stop_reason = "wake"
            uclib.uc_emu_stop(self.handle)

    def run(self, begin: int, max_insns: int | None = None) -> str:
        """Run from `begin` until a stop() (reason returned; "wake" for the waker's), a fault, or
        the instruction limit."""
        self.stop_reason = None
        if self.space is not None:
            self.space.clear_fault()
        if self.waker.tick_at is not None and self.waker.flag is None:
            self._install_tick_hook()
        self.running = True
        try:
            self.uc.emu_start(begin, UNTIL, 0, max_insns or 0)
        except unicorn.UcError as e:
            if self.stop_reason is not None:
                return self.stop_reason
            if self.fault is None:
                self.fault = self._fault_from_error(e)
            return "fault"
        finally:
            self.running = False
        if self.stop_reason is not None:
            return self.stop_reason
        flag = self.waker.flag
        if flag is not None and flag[1]:
            flag[1] = 0
            return "wake"
        if self.slice is not None and self.slice[1]:
            return "slice"
        if self.fault is not None:
            return "fault"
        if max_insns:
            return "max-instructions"
        return "returned"

    def save_context(self, into=None):
        """The CPU state (registers), to be put back by restore_context(); `into`: a context
        saved before, overwritten (no new allocation: the thread scheduler's switches)."""
        if into is not None:
            self.uc.context_update(into)
            return into
        return self.uc.context_save()

    def restore_context(self, ctx) -> None:
        self.uc.context_restore(ctx)

    def snapshot(self):
        """Registers and guest memory as they are now, for restore_snapshot() to go back to (a
        persistent fuzzing loop): the engine's copy-on-write memory snapshot. From now on the
        first write to a page gives it a private copy, also for memory mapped from a host buffer,
        which then no longer holds what the guest sees (sanitizer modes know: Mode.checkpoint).
        Unmapping and protection changes are not made in the engine from then on (unmap())."""
        self._context_mode(uconst.UC_CTL_CONTEXT_CPU | uconst.UC_CTL_CONTEXT_MEMORY)
        try:
            snap = self.uc.context_save()
        finally:
            self._context_mode(uconst.UC_CTL_CONTEXT_CPU)
        self.snapshotted = True
        return snap

    def restore_snapshot(self, snap) -> None:
        self._context_mode(uconst.UC_CTL_CONTEXT_CPU | uconst.UC_CTL_CONTEXT_MEMORY)
        try:
            self.uc.context_restore(snap)
        finally:
            self._context_mode(uconst.UC_CTL_CONTEXT_CPU)

    def _context_mode(self, what: int) -> None:
        """What context_save/context_restore cover (an engine-wide setting, read by both)."""
        self.uc.ctl(uconst.UC_CTL_CONTEXT_MODE, uconst.UC_CTL_IO_WRITE, ctypes.c_int(what))

    def pc_recovery(self) -> tuple[int, int] | None:
        """Addresses of the QEMU internals that map a host address in translated code back to a
        guest PC (qemu_get_cpu_<arch>, cpu_restore_state_<arch>), exported by the pinned
        libunicorn; None when this build lacks them."""
        suffix = {"x86_64": "x86_64", "arm64": "aarch64"}[self.arch]
        get_cpu, restore = native.fnptr(f"qemu_get_cpu_{suffix}"), native.fnptr(f"cpu_restore_state_{suffix}")
        return (get_cpu, restore) if get_cpu and restore else None

    def call(self, arch, addr: int, args: list[int], max_insns: int = 1_000_000) -> int | None:
        """Run the guest function at `addr` to its return, between two runs, and give back its
        return value; every register is restored afterwards. None if it did not return."""
        sentinel = CALL_RETURN                     # never mapped: the call ends when it returns here
        ctx = self.uc.context_save()
        flag = self.waker.flag
        ticked = False
        try:
            arch.setup_call(self, args, sentinel)
            pc = addr
            while True:
                self.uc.emu_start(pc, sentinel, 0, max_insns)
                if self.pc == sentinel or flag is None or not flag[1]:
                    break
                flag[1], ticked, pc = 0, True, self.pc      # a guest timer's tick: not for the call
            return self.reg(arch.ret) if self.pc == sentinel else None
        except unicorn.UcError:
            return None
        finally:
            self.fault = None
            self.uc.context_restore(ctx)
            if ticked:
                flag[0] = 1                         # the guest gets its tick at its next block

    def _fault_from_error(self, e: unicorn.UcError) -> MachineFault:
        errno = e.errno
        refused = self.space.fault() if self.space is not None and errno == uconst.UC_ERR_EXCEPTION else None
        if refused is not None:                 # the guest page table said no (machine.vmem)
            page, mem_type, mapped = refused
            kind = {uconst.UC_MEM_WRITE: "write", uconst.UC_MEM_FETCH: "fetch"}.get(mem_type, "read")
            pc = self.pc
            if kind == "fetch":                 # a jump to the page: the PC is the address
                addr = pc if pc & self.addr_mask & ~(PAGE - 1) == page else page
                return MachineFault("segv", addr, addr, kind, mapped)
            return MachineFault("segv", pc, page, kind, mapped, page_only=True)
        if errno == uconst.UC_ERR_INSN_INVALID:
            return MachineFault("ill", self.pc)
        if errno == uconst.UC_ERR_EXCEPTION:
            return MachineFault("ill", self.pc)
        return MachineFault("segv", self.pc, 0, "read")
