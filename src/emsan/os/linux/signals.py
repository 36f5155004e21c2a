"""Signal state and delivery for a single-threaded guest.

Handlers run on a frame emsan builds on the guest stack. rt_sigreturn takes the general
registers and the signal mask back from the frame's ucontext, as Linux does (handlers may edit
them); the rest of the CPU state (vector registers, thread pointer) is kept outside the guest in
a Unicorn context.
"""
from __future__ import annotations

import os
import struct
import time
from dataclasses import field

from emsan.lazyclass import dataclass
from emsan.os.linux.sigframe import (MINSIGSTKSZ, SIGINFO_SIZE, UCONTEXT_SIZE, apply_registers, build_ucontext,
                                     read_ucontext)

SIG_DFL, SIG_IGN = 0, 1
SA_ONSTACK, SA_RESTART, SA_NODEFER, SA_RESETHAND, SA_RESTORER = 0x08000000, 0x10000000, 0x40000000, 0x80000000, 0x04000000
SIGNAMES = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
            8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM",
            15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP",
            21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM",
            27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS"}
DEFAULT_IGNORE = {17, 18, 19, 20, 21, 22, 23, 28}
FAULT_SIGNAL = {"segv": 11, "ill": 4, "trap": 5, "fpe": 8, "bus": 7}
SI_USER, SI_KERNEL, SI_TKILL, SEGV_MAPERR, SEGV_ACCERR = 0, 0x80, -6, 1, 2
SIGRTMIN = 32
UNBLOCKABLE = (1 << 8) | (1 << 18)         # SIGKILL, SIGSTOP
SS_DISABLE = 2
MAX_NESTED = 256
TICK = 0.001        # timer resolution (a HZ=1000 kernel without high-resolution timers)
# si_code of hardware faults other than SIGSEGV, as each architecture's trap handlers set it
FAULT_CODE = {("x86_64", "ill"): 2, ("arm64", "ill"): 1, ("x86_64", "fpe"): 1, ("arm64", "fpe"): 1,
              ("x86_64", "trap"): SI_KERNEL, ("arm64", "trap"): 1, ("x86_64", "bus"): 2, ("arm64", "bus"): 1}
ARM64_SIGRETURN_TRAMPOLINE = bytes.fromhex("681180d2" "010000d4")   # mov x8, #139; svc #0


@dataclass
class Signals:
    """The process's signal dispositions, mask and pending signals."""

    process: object
    actions: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)  # handler, flags, restorer, mask
    mask: int = 0
    pending: list[int] = field(default_factory=list)
    pending_code: dict[int, int] = field(default_factory=dict)   # si_code of the pending instance
    saved: list = field(default_factory=list)          # (engine context, ucontext address) per running handler
    altstack: tuple[int, int, int, int] = (0, 2, 0, 0)  # sp, flags (SS_DISABLE), pad, size
    alarm_at: float = 0.0
    alarm_interval: float = 0.0                         # setitimer's it_interval: re-arm after firing
    suspended_mask: int | None = None                   # the mask rt_sigsuspend replaced, until a handler runs
    trampoline: int = 0                                 # arm64 return path when no SA_RESTORER
    # After rt_sigreturn the interrupted code runs for at least a TICK before the timer fires
    # again, whatever its interval: a handler re-armed as fast as it returns (a 1 us interval
    # timer) cannot starve the program.
    timer_hold: float = 0.0

    def pending_mask(self) -> int:
        return sum(1 << (s - 1) for s in set(self.pending))

    def raise_signal(self, sig: int, fault=None, code: int = SI_TKILL) -> None:
        """A signal sent to the process (kill/tgkill/alarm) or raised by a fault.

        Sent signals wait until the current system call has written its result, as on
        the way back to user space; faults are delivered at once. A standard signal that
        is already pending is not queued twice."""
        if fault is None:
            if sig < SIGRTMIN and sig in self.pending:
                return
            self.pending.append(sig)
            self.pending_code[sig] = code
            return
        self.deliver(sig, fault)

    def would_interrupt(self, sig: int) -> bool:
        """Would `sig` end a blocking call now (not blocked, not ignored)?"""
        handler = self.actions.get(sig, (SIG_DFL, 0, 0, 0))[0]
        ignored = handler == SIG_IGN or (handler == SIG_DFL and sig in DEFAULT_IGNORE)
        return not self.mask & (1 << (sig - 1)) and not ignored

    def deliverable(self) -> bool:
        return any(not self.mask & (1 << (sig - 1)) for sig in self.pending)

    def take_pending(self, wanted: int) -> tuple[int, int] | None:
        """Remove and return (signal, si_code) of a pending signal in `wanted` (sigwaitinfo)."""
        for sig in self.pending:
            if wanted & (1 << (sig - 1)):
                self.pending.remove(sig)
                return sig, self.pending_code.get(sig, SI_TKILL)
        return None

    def suspend(self, mask: int) -> None:
        """rt_sigsuspend: wait under `mask`; the old mask returns with the handler (or at once)."""
        self.suspended_mask = self.mask
        self.mask = mask & ~UNBLOCKABLE

    def after_syscall(self) -> None:
        """On the way back to the program: fire a due alarm, run one deliverable handler."""
        self.check_alarm()
        if self.pending and self.process.exit_info is None:
            self.deliver_pending()
        if self.suspended_mask is not None:       # no handler ran: sigsuspend's mask ends here
            self.mask, self.suspended_mask = self.suspended_mask, None
        self.process.update_wake()

    def deliver_pending(self) -> None:
        for sig in list(self.pending):
            if not self.mask & (1 << (sig - 1)):
                self.pending.remove(sig)
                self.deliver(sig, code=self.pending_code.get(sig, SI_TKILL))
                return

    def deliver(self, sig: int, fault=None, code: int = SI_TKILL) -> None:
        p = self.process
        handler, flags, restorer, act_mask = self.actions.get(sig, (SIG_DFL, 0, 0, 0))
        if handler == SIG_IGN and fault is None:
            return
        if handler in (SIG_DFL, SIG_IGN) or (fault is not None and self.mask & (1 << (sig - 1))):
            if sig in DEFAULT_IGNORE and fault is None:
                return
            p.kill(sig, fault)
            return
        self._setup_frame(sig, handler, flags, restorer, act_mask, fault, code)

    def _setup_frame(self, sig, handler, flags, restorer, act_mask, fault, code) -> None:
        p = self.process
        m = p.machine
        arch = p.arch.name
        ctx = m.save_context()
        sp = m.sp
        if arch == "x86_64":
            sp -= 128                                   # the ABI's red zone (not on a fresh alternate stack)
        ss_sp, ss_flags, _pad, ss_size = self.altstack
        if flags & SA_ONSTACK and not ss_flags & SS_DISABLE and not ss_sp <= sp < ss_sp + ss_size:
            sp = ss_sp + ss_size
        sp = (sp - SIGINFO_SIZE - UCONTEXT_SIZE[arch]) & ~15
        info, uctx = sp, sp + SIGINFO_SIZE
        if fault is not None:
            code = FAULT_CODE.get((arch, fault.kind), 0)
            if fault.kind == "segv":
                code = SEGV_ACCERR if fault.mapped else SEGV_MAPERR
        siginfo = struct.pack("<iii4x", sig, 0, code)
        # si_addr for faults (the data address, or the instruction's), si_pid and si_uid for sent signals
        if fault is not None:
            siginfo += struct.pack("<Q", fault.addr if fault.kind == "segv" else fault.pc)
        else:
            siginfo += struct.pack("<iI", p.pid, os.getuid())
        # Inside an x86 syscall hook the PC is still at the `syscall`: the program resumes after it.
        resume = m.pc + m.syscall_pc_bias
        try:
            p.user.write(info, siginfo.ljust(SIGINFO_SIZE, b"\0"))
            # the mask the handler returns to: the one rt_sigsuspend replaced, if it did
            back_to = self.mask if self.suspended_mask is None else self.suspended_mask
            p.user.write(uctx, build_ucontext(m, arch, resume, back_to, self.altstack, fault))
            if arch == "x86_64":
                sp -= 8
                p.user.write(sp, struct.pack("<Q", restorer))
        except OSError:
            p.kill(11, fault)               # no room for the frame: the kernel forces SIGSEGV
            return
        if arch == "x86_64":
            for reg, val in (("rdi", sig), ("rsi", info), ("rdx", uctx), ("rax", 0)):
                m.set_reg(reg, val)
        else:
            for reg, val in (("x0", sig), ("x1", info), ("x2", uctx)):
                m.set_reg(reg, val)
            m.set_reg("lr", restorer if flags & SA_RESTORER and restorer else self.arm64_trampoline())
        self.saved.append((ctx, uctx))
        self.suspended_mask = None
        del self.saved[:-MAX_NESTED]        # frames a handler left with siglongjmp are never returned to
        if not flags & SA_NODEFER:
            self.mask |= 1 << (sig - 1)
        self.mask |= act_mask
        self.mask &= ~UNBLOCKABLE
        if flags & SA_RESETHAND:
            self.actions[sig] = (SIG_DFL, 0, 0, 0)
        m.sp = sp
        m.pc = handler

    def min_altstack(self) -> int:
        """MINSIGSTKSZ: the smallest alternate stack sigaltstack accepts."""
        return MINSIGSTKSZ[self.process.arch.name]

    def arm64_trampoline(self) -> int:
        if not self.trampoline:
            p = self.process
            addr = p.mem.find_free(0x1000)
            p.mem.guest_map(addr, addr + 0x1000, 5, "[sigpage]")
            p.machine.write(addr, ARM64_SIGRETURN_TRAMPOLINE)
            self.trampoline = addr
        return self.trampoline

    def sigreturn(self) -> None:
        """Back from a handler: the engine state saved at delivery, with the registers and mask
        the handler's ucontext now holds (a handler may change them)."""
        p = self.process
        if not self.saved:
            p.kill(11, None)
            return
        ctx, uctx = self.saved.pop()
        m = p.machine
        try:
            regs, mask = read_ucontext(p.user, p.arch.name, uctx)
        except OSError:
            p.kill(11, None)
            return
        m.restore_context(ctx)
        self.mask = mask & ~UNBLOCKABLE
        apply_registers(m, p.arch.name, regs)
        self.timer_hold = time.monotonic() + TICK

    # --- alarm(2): checked at system calls, the only points Python runs -----------------------
    def alarm_left(self) -> float:
        return max(0.0, self.alarm_at - time.monotonic()) if self.alarm_at else 0.0

    def set_alarm(self, seconds: float, interval: float = 0.0) -> float:
        """Arm (or with 0, disarm) the real-time timer, at TICK resolution; the seconds that were
        left. The engine is stopped when it expires (Process.update_wake)."""
        left = self.alarm_left()
        self.alarm_at = time.monotonic() + max(seconds, TICK) if seconds > 0 else 0.0
        self.alarm_interval = max(interval, TICK) if seconds > 0 and interval > 0 else 0.0
        return left

    def timer_due_at(self) -> float | None:
        """When the timer will fire (not before the hold after a handler returned), or None."""
        return max(self.alarm_at, self.timer_hold) if self.alarm_at else None

    def check_alarm(self) -> None:
        now = time.monotonic()
        if self.alarm_at and now >= self.alarm_at and now >= self.timer_hold:
            if self.alarm_interval:         # expirations missed meanwhile make one SIGALRM (overrun)
                nxt = self.alarm_at + self.alarm_interval
                self.alarm_at = nxt if nxt > now else now + self.alarm_interval
            else:
                self.alarm_at = 0.0
            self.raise_signal(14, code=SI_KERNEL)

    def wait_for_alarm(self) -> bool:
        if not self.alarm_at:
            return False
        if self.process.sleep(self.alarm_at - time.monotonic()):
            self.check_alarm()
        return True
