"""A Linux process as the guest sees it: descriptors, cwd, signals, syscalls, and its lifetime."""
from __future__ import annotations

import errno
import os
import random
import select
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from emsan.errors import EXIT_MAX_INSNS, EXIT_SIGNAL_BASE, EXIT_TIMEOUT
from emsan.machine import Machine, MachineFault
from emsan.os.linux.loader import resolve_guest_path
from emsan.os.linux.memory import MemoryMap
from emsan.os.linux.signals import FAULT_SIGNAL, Signals
from emsan.os.linux.syscalls import HANDLERS, NAMES, NO_RETURN, load_all

load_all()

# System calls whose second and third arguments are a guest buffer and its size.
BUFFER_READ = {"write", "pwrite64"}
BUFFER_WRITE = {"read", "pread64"}


@dataclass
class FileDesc:
    host: int
    path: str
    cloexec: bool = False
    dir_entries: list | None = None
    dir_pos: int = 0


@dataclass
class ExitInfo:
    kind: str                     # exit / signal / timeout / max-instructions / stopped / paused
    status: int
    signal: int = 0
    fault: MachineFault | None = None


@dataclass
class Process:
    machine: Machine
    arch: object
    mem: MemoryMap
    exe_path: str
    sysroot: str | None = None
    seed: int | None = None
    trace_syscalls: bool = False
    fds: dict[int, FileDesc] = field(default_factory=dict)
    comm: str = ""
    pid: int = field(default_factory=os.getpid)
    clear_child_tid: int = 0
    current_syscall: str = ""
    exit_info: ExitInfo | None = None
    deadline: float | None = None          # --timeout as a time.monotonic() value
    # Consulted whenever the engine stops on its own (a sanitizer stops it to report): each
    # returns None (not mine), "continue", or an ExitInfo that ends the run.
    on_stop: list[Callable[[], "ExitInfo | str | None"]] = field(default_factory=list)
    # A sanitizer's check of guest buffers the kernel reads or writes: (addr, size, is_write).
    buffer_check: Callable[[int, int, bool], None] | None = None
    _warned: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.comm = os.path.basename(self.exe_path)[:15]
        self.signals = Signals(self)
        self._rng = random.Random(self.seed) if self.seed is not None else None
        self.cwd_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for fd in (0, 1, 2):
            try:
                self.fds[fd] = FileDesc(os.dup(fd), f"<std{fd}>")
            except OSError:
                pass
        a = self.arch
        ids = self.machine.reg_ids
        self._nr_id, self._ret_id = ids[a.syscall_nr], ids[a.syscall_ret]
        self._arg_ids = [ids[r] for r in a.syscall_args]
        self._names = NAMES[a.name]
        self.machine.on_syscall(self.on_syscall)

    # --- descriptors and paths ------------------------------------------------------------------
    def fd(self, fd: int) -> FileDesc:
        f = self.fds.get(fd & 0xFFFFFFFF)
        if f is None:
            raise OSError(errno.EBADF, "bad file descriptor")
        return f

    def alloc_fd(self, host: int, path: str, cloexec: bool, at: int | None = None, lowest: int = 0) -> int:
        fd = at if at is not None else next(i for i in range(lowest, 1 << 20) if i not in self.fds)
        self.fds[fd] = FileDesc(host, path, cloexec)
        return fd

    def close_fd(self, fd: int) -> None:
        f = self.fd(fd)
        del self.fds[fd & 0xFFFFFFFF]
        os.close(f.host)

    def path_at(self, dirfd: int, gpath: str) -> tuple[int | None, str]:
        if not gpath:
            raise OSError(errno.ENOENT, "empty path")
        if gpath.startswith("/"):
            return None, resolve_guest_path(gpath, self.sysroot)
        if dirfd == -100:
            return self.cwd_fd, gpath
        return self.fd(dirfd).host, gpath

    @property
    def cwd(self) -> str:
        return os.readlink(f"/proc/self/fd/{self.cwd_fd}")

    def set_cwd(self, host_fd: int) -> None:
        os.close(self.cwd_fd)
        self.cwd_fd = host_fd

    def special_file(self, gpath: str) -> int | None:
        """Files under /proc/self that must describe the guest, not emsan."""
        if gpath in ("/proc/self/maps", f"/proc/{self.pid}/maps"):
            fd = os.memfd_create("maps", os.MFD_CLOEXEC)
            os.write(fd, self.mem.describe().encode())
            os.lseek(fd, 0, 0)
            return fd
        if gpath in ("/proc/self/exe", f"/proc/{self.pid}/exe"):
            return os.open(self.exe_path, os.O_RDONLY | os.O_CLOEXEC)
        return None

    def special_stat(self, gpath: str) -> os.stat_result | None:
        if gpath in ("/proc/self/exe", f"/proc/{self.pid}/exe"):
            return os.stat(self.exe_path)
        return None

    def random_bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n) if self._rng else os.urandom(n)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            print(f"emsan: {message}", file=sys.stderr, flush=True)

    # --- waiting: a blocking call must not outlive --timeout -----------------------------------
    def sleep(self, seconds: float) -> bool:
        """Sleep as a blocking call would; False when --timeout cut it short (the run then stops)."""
        if self.deadline is not None and time.monotonic() + seconds >= self.deadline:
            time.sleep(max(0.0, self.deadline - time.monotonic()))
            self.machine.stop("timeout")
            return False
        time.sleep(max(0.0, seconds))
        return True

    def wait_readable(self, host_fd: int) -> bool:
        """Before a read that could block: False (and the run stops) if nothing arrives in time."""
        if self.deadline is None or not os.get_blocking(host_fd):
            return True
        poller = select.poll()
        poller.register(host_fd, select.POLLIN)
        if poller.poll(max(0, int((self.deadline - time.monotonic()) * 1000))):
            return True
        self.machine.stop("timeout")
        return False

    # --- system calls -----------------------------------------------------------------------------
    def on_syscall(self) -> None:
        m = self.machine
        nr = m.reg_id(self._nr_id)
        name = self._names.get(nr, f"syscall_{nr}")
        handler = HANDLERS.get(name)
        args = [m.reg_id(r) for r in self._arg_ids]
        if handler is None:
            self.warn_once(name, f"unsupported syscall {name} (number {nr}): returning -ENOSYS")
            ret = -errno.ENOSYS
        else:
            self.current_syscall = name
            if self.buffer_check is not None and name in BUFFER_READ:
                self.buffer_check(args[1], args[2], False)      # the kernel reads count bytes
            try:
                ret = handler(self, *args)
                if self.buffer_check is not None and name in BUFFER_WRITE and isinstance(ret, int) and ret > 0:
                    self.buffer_check(args[1], ret, True)       # ...or writes what it returned
            except OSError as e:
                ret = -(e.errno or errno.EIO)
            except MemoryError:
                ret = -errno.EFAULT
        if self.trace_syscalls:
            shown = "" if ret is NO_RETURN else f" = {ret:#x}" if isinstance(ret, int) and ret > 4096 else f" = {ret}"
            print(f"emsan: syscall {name}({', '.join(hex(a) for a in args[:4])}){shown}", file=sys.stderr)
        if ret is not NO_RETURN:
            m.set_reg_id(self._ret_id, ret)
            if ret == -errno.EPIPE and name in ("write", "writev", "pwrite64", "pwritev", "sendfile"):
                self.signals.raise_signal(13, code=0)     # SIGPIPE (SI_USER), as the kernel sends with EPIPE
        self.signals.after_syscall()

    # --- lifetime --------------------------------------------------------------------------------
    def exit(self, status: int) -> None:
        self.exit_info = ExitInfo("exit", status)
        self.machine.stop("exit")

    def kill(self, sig: int, fault: MachineFault | None) -> None:
        self.exit_info = ExitInfo("signal", EXIT_SIGNAL_BASE + sig, sig, fault)
        self.machine.stop("signal")

    def run(self, entry: int, timeout: float | None, max_insns: int | None) -> ExitInfo:
        m = self.machine
        deadline = time.monotonic() + timeout if timeout else None
        self.deadline = deadline
        pc = entry
        while self.exit_info is None:
            left = max(deadline - time.monotonic(), 0.001) if deadline else None
            reason = m.run(pc, left, max_insns)
            verdicts = [v for v in (cb() for cb in self.on_stop) if v is not None]
            ended = next((v for v in verdicts if isinstance(v, ExitInfo)), None)
            if ended is not None and self.exit_info is None:
                self.exit_info = ended
            if self.exit_info is not None:
                break
            if "continue" in verdicts and reason != "fault":
                pc = m.pc
                continue
            if reason == "fault" and m.fault is not None:
                fault, m.fault = m.fault, None
                self.signals.deliver(FAULT_SIGNAL[fault.kind], fault)
                pc = m.pc
                continue
            if reason == "pause":
                # Stopped to be resumed by run(m.pc, ...) later (the fork server at main): the
                # process, its descriptors included, stays as it is.
                return ExitInfo("paused", 0)
            if reason == "timeout" or (deadline and time.monotonic() >= deadline):
                self.exit_info = ExitInfo("timeout", EXIT_TIMEOUT)
            elif reason == "max-instructions":
                self.exit_info = ExitInfo("max-instructions", EXIT_MAX_INSNS)
            elif reason == "returned":
                self.exit_info = ExitInfo("exit", 0)
            else:
                self.exit_info = ExitInfo("stopped", 0)
        for f in self.fds.values():
            try:
                os.close(f.host)
            except OSError:
                pass
        self.fds.clear()
        return self.exit_info
