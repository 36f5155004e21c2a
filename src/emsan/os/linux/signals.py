"""Signal state and delivery for a single-threaded guest.

Handlers run on a frame emsan builds on the guest stack; the interrupted CPU state is kept
outside the guest (a Unicorn context) and restored by rt_sigreturn, so a handler that
scribbles over its stack cannot corrupt it.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

SIG_DFL, SIG_IGN = 0, 1
SA_ONSTACK, SA_RESTART, SA_NODEFER, SA_RESETHAND, SA_RESTORER = 0x08000000, 0x10000000, 0x40000000, 0x80000000, 0x04000000
SIGNAMES = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
            8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM",
            15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP",
            21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM",
            27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS"}
DEFAULT_IGNORE = {17, 18, 19, 20, 21, 22, 23, 28}
FAULT_SIGNAL = {"segv": 11, "ill": 4, "trap": 5, "fpe": 8, "bus": 7}
SI_USER, SI_TKILL, SEGV_MAPERR, SEGV_ACCERR = 0, -6, 1, 2
ARM64_SIGRETURN_TRAMPOLINE = bytes.fromhex("681180d2" "010000d4")   # mov x8, #139; svc #0


@dataclass
class Signals:
    process: object
    actions: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)  # handler, flags, restorer, mask
    mask: int = 0
    pending: list[int] = field(default_factory=list)
    saved: list = field(default_factory=list)          # (engine context, mask, pc bias) per running handler
    altstack: tuple[int, int, int, int] = (0, 2, 0, 0)  # sp, flags (SS_DISABLE), pad, size
    alarm_at: float = 0.0
    trampoline: int = 0                                 # arm64 return path when no SA_RESTORER

    def pending_mask(self) -> int:
        return sum(1 << (s - 1) for s in set(self.pending))

    def raise_signal(self, sig: int, fault=None) -> None:
        """A signal sent to the process (kill/tgkill/alarm) or raised by a fault.

        Sent signals wait until the current system call has written its result, as on
        the way back to user space; faults are delivered at once."""
        if fault is None:
            self.pending.append(sig)
            return
        self.deliver(sig, fault)

    def deliver_pending(self) -> None:
        for sig in list(self.pending):
            if not self.mask & (1 << (sig - 1)):
                self.pending.remove(sig)
                self.deliver(sig)
                return

    def deliver(self, sig: int, fault=None) -> None:
        p = self.process
        handler, flags, restorer, act_mask = self.actions.get(sig, (SIG_DFL, 0, 0, 0))
        if handler == SIG_IGN and fault is None:
            return
        if handler in (SIG_DFL, SIG_IGN) or (fault is not None and self.mask & (1 << (sig - 1))):
            if sig in DEFAULT_IGNORE and fault is None:
                return
            p.kill(sig, fault)
            return
        self._setup_frame(sig, handler, flags, restorer, act_mask, fault)

    def _setup_frame(self, sig, handler, flags, restorer, act_mask, fault) -> None:
        p = self.process
        m = p.machine
        arch = p.arch.name
        ctx = m.uc.context_save()
        sp = m.sp
        ss_sp, ss_flags, _pad, ss_size = self.altstack
        if flags & SA_ONSTACK and not ss_flags & 2 and not ss_sp <= sp < ss_sp + ss_size:
            sp = ss_sp + ss_size
        if arch == "x86_64":
            sp -= 128                                   # the ABI's red zone
        sp = (sp - 128 - 1024) & ~15
        info, uctx = sp, sp + 128
        code = (SEGV_ACCERR if fault.mapped else SEGV_MAPERR) if fault is not None and sig == 11 else \
            (0 if fault is not None else SI_TKILL)
        siginfo = struct.pack("<iii4x", sig, 0, code)
        siginfo += struct.pack("<Q", fault.addr) if fault is not None else struct.pack("<iI", p.pid, 0)
        m.write(info, siginfo.ljust(128, b"\0"))
        m.write(uctx, bytes(1024))
        if arch == "x86_64":
            sp -= 8
            m.write(sp, struct.pack("<Q", restorer))
            for reg, val in (("rdi", sig), ("rsi", info), ("rdx", uctx), ("rax", 0)):
                m.set_reg(reg, val)
        else:
            for reg, val in (("x0", sig), ("x1", info), ("x2", uctx)):
                m.set_reg(reg, val)
            m.set_reg("lr", restorer if flags & SA_RESTORER and restorer else self.arm64_trampoline())
        # Saved inside an x86 syscall hook, the context's PC is still at the `syscall`.
        self.saved.append((ctx, self.mask, m.syscall_pc_bias))
        if not flags & SA_NODEFER:
            self.mask |= 1 << (sig - 1)
        self.mask |= act_mask
        if flags & SA_RESETHAND:
            self.actions[sig] = (SIG_DFL, 0, 0, 0)
        m.sp = sp
        m.pc = handler

    def arm64_trampoline(self) -> int:
        if not self.trampoline:
            p = self.process
            addr = p.mem.find_free(0x1000)
            p.mem.map(addr, addr + 0x1000, 5, "[sigpage]")
            p.machine.write(addr, ARM64_SIGRETURN_TRAMPOLINE)
            self.trampoline = addr
        return self.trampoline

    def sigreturn(self) -> None:
        p = self.process
        if not self.saved:
            p.kill(11, None)
            return
        ctx, self.mask, bias = self.saved.pop()
        m = p.machine
        m.uc.context_restore(ctx)
        m.pc = m.reg_id(m.pc_id) + bias     # a PC write also makes the engine leave the current block

    # --- alarm(2): checked at system calls, the only points Python runs -----------------------
    def set_alarm(self, seconds: int) -> int:
        now = time.monotonic()
        left = max(0, round(self.alarm_at - now)) if self.alarm_at else 0
        self.alarm_at = now + seconds if seconds else 0.0
        return left

    def check_alarm(self) -> None:
        if self.alarm_at and time.monotonic() >= self.alarm_at:
            self.alarm_at = 0.0
            self.raise_signal(14)

    def wait_for_alarm(self) -> bool:
        if not self.alarm_at:
            return False
        if self.process.sleep(self.alarm_at - time.monotonic()):
            self.check_alarm()
        return True
