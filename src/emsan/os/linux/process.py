"""A Linux process as the guest sees it: descriptors, cwd, signals, syscalls, and its lifetime."""
from __future__ import annotations

import errno
import fcntl
import os
import random
import resource
import select
import sys
import time
from dataclasses import field
from typing import Callable

from emsan.errors import EXIT_DEADLOCK, EXIT_MAX_INSNS, EXIT_SIGNAL_BASE, EXIT_TIMEOUT
from emsan.lazyclass import dataclass
from emsan.machine import Machine, MachineFault
from emsan.os.linux import children, procfs
from emsan.os.linux.loader import resolve_guest_path
from emsan.os.linux.memory import MemoryMap
from emsan.os.linux.signals import FAULT_SIGNAL, TICK, Signals
from emsan.os.linux.syscalls import HANDLERS, NAMES, NO_RETURN, load_all
from emsan.os.linux.threads import Park, Threads, would_block
from emsan.os.linux.uaccess import MAX_RW_COUNT, UserMemory

load_all()

# System calls whose second and third arguments are a guest buffer and its size.
BUFFER_READ = {"write", "pwrite64"}
BUFFER_WRITE = {"read", "pread64"}


@dataclass
class FileDesc:
    """A guest file descriptor and the host descriptor behind it."""

    host: int
    path: str
    cloexec: bool = False
    dir_entries: list | None = None
    dir_pos: int = 0
    node: procfs.Node | None = None       # one of the guest's own /proc files (its host fd: a memfd)
    mem: procfs.MemFile | None = None     # /proc/PID/mem: reads and writes of guest memory


@dataclass
class ExitInfo:
    """How a run ended."""

    kind: str                     # exit / signal / timeout / max-instructions / stopped / paused
    status: int
    signal: int = 0
    fault: MachineFault | None = None


@dataclass
class Process:
    """The emulated Linux process: its memory, files, signals, threads and system calls."""

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
    # Resource limits the guest set (resource -> (soft, hard)), and who wants to know
    rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)
    rlimit_listeners: list[Callable[[], None]] = field(default_factory=list)
    _warned: set = field(default_factory=set)
    # Processes (os/linux/children.py): is this a forked child, the host descriptors a new image
    # inherits as the guest's (None: the host's 0, 1, 2), what a new image runs under (the
    # session's exec), and what a forked child must redo of the session's per-process state.
    is_child: bool = False
    inherit_fds: list[int] | None = None
    exec_image: Callable[[str, list[str], list[str]], None] | None = None
    after_fork: list[Callable[[], None]] = field(default_factory=list)
    child_events: object = None
    vfork_fd: int = -1
    # Threads (os/linux/threads.py): None until the first clone(CLONE_THREAD); the slice asked for.
    threads: Threads | None = None
    threads_slice: int | None = None
    on_threads: list[Callable[[Threads], None]] = field(default_factory=list)   # told at the first thread
    robust_list: int = 0

    def __post_init__(self) -> None:
        self.comm = os.path.basename(self.exe_path)[:15]
        self.signals = Signals(self)
        self.user = UserMemory(self.machine, self.mem)
        self.start_time = time.time()
        self._rng = random.Random(self.seed) if self.seed is not None else None
        self.cwd_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cwd_node: procfs.Node | None = None      # the working directory is in the guest's /proc
        for fd in (0, 1, 2) if self.inherit_fds is None else self.inherit_fds:
            try:
                host = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            except OSError:
                continue
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = f"<fd{fd}>"
            self.fds[fd] = FileDesc(host, path if self.inherit_fds is not None else f"<std{fd}>")
            if fd > 2 and self.inherit_fds is not None:
                os.close(fd)        # the guest's copy is the only one: its close is the last
        a = self.arch
        ids = self.machine.reg_ids
        self._nr_id, self._ret_id = ids[a.syscall_nr], ids[a.syscall_ret]
        self._arg_ids = [ids[r] for r in a.syscall_args]
        self._names = NAMES[a.name]
        self.machine.on_syscall(self.on_syscall)
        self.after_fork.append(lambda: self.threads.after_fork() if self.threads is not None else None)

    # --- descriptors and paths ------------------------------------------------------------------
    def fd(self, fd: int) -> FileDesc:
        f = self.fds.get(fd & 0xFFFFFFFF)
        if f is None:
            raise OSError(errno.EBADF, "bad file descriptor")
        return f

    def fd_limit(self) -> int:
        """RLIMIT_NOFILE: guest descriptors are below it."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return min(soft if soft != resource.RLIM_INFINITY else 1 << 20, 1 << 20)

    def alloc_fd(self, host: int, path: str, cloexec: bool, at: int | None = None, lowest: int = 0,
                 node: procfs.Node | None = None, mem: procfs.MemFile | None = None) -> int:
        if at is None:
            limit = self.fd_limit()
            at = next((i for i in range(lowest, limit) if i not in self.fds), None)
            if at is None:
                os.close(host)
                raise OSError(errno.EMFILE, "too many open files")
        self.fds[at] = FileDesc(host, path, cloexec, node=node, mem=mem)
        return at

    def dup_fd(self, f: FileDesc, cloexec: bool, at: int | None = None, lowest: int = 0) -> int:
        return self.alloc_fd(os.dup(f.host), f.path, cloexec, at, lowest, f.node, f.mem)

    def close_fd(self, fd: int) -> None:
        f = self.fd(fd)
        del self.fds[fd & 0xFFFFFFFF]
        os.close(f.host)

    def fstat(self, f: FileDesc):
        if f.node is not None:
            return f.node.stat(self)
        if f.mem is not None:
            return f.mem.stat(self)
        return os.stat(f.host)

    def lookup(self, dirfd: int, gpath: str, follow: bool = True):
        """What a guest path names: one of the guest's own /proc files (a procfs.Node), or
        (dir_fd, path) for the host's file functions, resolved as the kernel resolves it."""
        if not gpath:
            raise OSError(errno.ENOENT, "empty path")
        if gpath.startswith("/"):
            start: procfs.Node | str = "/"
        elif dirfd == -100:
            start = self.cwd_node if self.cwd_node is not None else self.cwd
        else:
            f = self.fd(dirfd)
            if f.node is not None:
                start = f.node
            elif f.mem is not None or not os.path.isdir(f"/proc/self/fd/{f.host}"):
                raise OSError(errno.ENOTDIR, "not a directory")
            else:
                start = os.readlink(f"/proc/self/fd/{f.host}")
        found = procfs.resolve(self, start, gpath, follow)
        if found is not None:
            return found
        if gpath.startswith("/"):
            return None, resolve_guest_path(gpath, self.sysroot)
        if dirfd == -100:
            return self.cwd_fd, gpath
        return self.fd(dirfd).host, gpath

    def path_at(self, dirfd: int, gpath: str, follow: bool = False) -> tuple[int | None, str]:
        """A host (dir_fd, path) for calls that change the file system; the guest's /proc is
        read-only to them."""
        found = self.lookup(dirfd, gpath, follow)
        if isinstance(found, procfs.Node):
            raise OSError(errno.EACCES, "the guest's /proc is read-only")
        return found

    @property
    def cwd(self) -> str:
        """The working directory's host path (when it is not in the guest's /proc)."""
        return os.readlink(f"/proc/self/fd/{self.cwd_fd}")

    def guest_cwd(self) -> str:
        return self.cwd_node.path(self) if self.cwd_node is not None else self.cwd

    def stat_cwd(self):
        return self.cwd_node.stat(self) if self.cwd_node is not None else os.stat(self.cwd_fd)

    def chdir(self, target) -> None:
        if isinstance(target, procfs.Node):
            if not target.is_dir:
                raise OSError(errno.ENOTDIR, "not a directory")
            self.cwd_node = target
            return
        dfd, hpath = target
        fd = os.open(hpath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        os.close(self.cwd_fd)
        self.cwd_fd, self.cwd_node = fd, None

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
        """Before a read that could block: False if --timeout ended the run meanwhile or a timer
        signal came first (the caller returns -EINTR; the handler runs on the way back)."""
        return self._wait(host_fd, select.POLLIN)

    def wait_writable(self, host_fd: int, partial: bool = False) -> bool:
        """Before a write that could block (see wait_readable). partial: part of the write is
        done; among threads it then ends here (False) rather than park, since a parked call runs
        again from its start."""
        if partial and self.threads is not None and self.threads.crowded():
            poller = select.poll()
            poller.register(host_fd, select.POLLOUT)
            return bool(poller.poll(0))
        return self._wait(host_fd, select.POLLOUT)

    def _wait(self, host_fd: int, event: int) -> bool:
        from emsan.os.linux.syscalls.events import wait_limit
        if not os.get_blocking(host_fd):
            return True
        if would_block(self, "read" if event == select.POLLIN else "write", {host_fd: event}, None) == 0:
            return True                     # ready now (parks otherwise, among threads)
        poller = select.poll()
        poller.register(host_fd, event)
        wake = children.wake_fd(self)
        if wake is not None:        # a signal from another process ends the wait as the timer's does
            poller.register(wake, select.POLLIN)
        while True:
            limit, cut_by = wait_limit(self, None)
            if cut_by == "alarm" and not self.signals.would_interrupt(14):
                # the timer's signal would not end the wait: only --timeout can
                limit, cut_by = (None, "") if self.deadline is None else \
                    (max(0, int((self.deadline - time.monotonic()) * 1000)), "timeout")
            ready = poller.poll(limit)
            if wake is not None and any(fd == wake for fd, _ in ready):
                if children.host_signal_interrupts(self):
                    return False            # -EINTR; the handler runs on the way back
                ready = [r for r in ready if r[0] != wake]
                if not ready:
                    continue
            if ready:
                return True
            if cut_by == "timeout":
                self.machine.stop("timeout")
                return False
            if cut_by == "alarm":
                self.signals.check_alarm()
                if self.signals.pending:
                    return False            # -EINTR; the handler runs on the way back

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
            try:
                ret = self.call_handler(handler, name, args)
            except Park as park:              # another thread runs while this one waits
                if self.trace_syscalls:
                    print(f"emsan: syscall {name}({', '.join(hex(a) for a in args[:4])}) "
                          f"[thread {self.threads.tid} waits]", file=sys.stderr)
                self.threads.park(park.wait)
                return
        if self.trace_syscalls:
            shown = "" if ret is NO_RETURN else f" = {ret:#x}" if isinstance(ret, int) and ret > 4096 else f" = {ret}"
            print(f"emsan: syscall {name}({', '.join(hex(a) for a in args[:4])}){shown}", file=sys.stderr)
        if ret is not NO_RETURN:
            m.set_reg_id(self._ret_id, ret)
            if ret == -errno.EPIPE and name in ("write", "writev", "pwrite64", "pwritev", "sendfile"):
                self.signals.raise_signal(13, code=0)     # SIGPIPE (SI_USER), as the kernel sends with EPIPE
        if self.child_events is not None:
            children.pass_host_signals(self)
        self.signals.after_syscall()

    def call_handler(self, handler, name: str, args: list[int]):
        """Run one handler: its value, -errno for an OSError, and never a Python exception. A bug
        in a handler is named on stderr (once per call) and the guest gets -EINVAL: the run goes
        on, as a kernel's WARN_ON does, instead of ending in an internal error."""
        try:
            if self.buffer_check is not None and name in BUFFER_READ and self.user.access_ok(args[1], args[2]):
                self.buffer_check(args[1], min(args[2], MAX_RW_COUNT), False)   # the kernel reads count bytes
            ret = handler(self, *args)
            if self.buffer_check is not None and name in BUFFER_WRITE and isinstance(ret, int) and ret > 0:
                self.buffer_check(args[1], ret, True)       # ...or writes what it returned
            return ret
        except OSError as e:
            return -(e.errno or errno.EIO)
        except MemoryError:               # the host could not give what the call needed
            return -errno.ENOMEM
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - the last-resort guard the docstring describes
            if os.environ.get("EMSAN_DEBUG"):
                raise
            self.warn_once(f"bug:{name}", f"internal error in system call {name}: {type(e).__name__}: {e} "
                                          f"(returning -EINVAL; EMSAN_DEBUG=1 shows the traceback)")
            return -errno.EINVAL

    # --- lifetime --------------------------------------------------------------------------------
    def exit(self, status: int) -> None:
        self.exit_info = ExitInfo("exit", status)
        self.machine.stop("exit")

    def kill(self, sig: int, fault: MachineFault | None) -> None:
        self.exit_info = ExitInfo("signal", EXIT_SIGNAL_BASE + sig, sig, fault)
        self.machine.stop("signal")

    def exact_fault(self, fault: MachineFault) -> MachineFault:
        """A data fault the page table refused carries only its page: the faulting instruction
        says which byte (si_addr, cr2) and how many."""
        found = self.arch.fault_access(self.machine, fault.pc, fault.addr, fault.access == "write")
        if found is None:
            return fault
        addr, size = found
        return MachineFault(fault.kind, fault.pc, addr, fault.access, fault.mapped, size)

    def next_tick(self) -> float | None:
        """When the engine must stop to let time-driven events in: the guest's timer, or a tick
        from now while a deliverable signal waits."""
        moments = [self.signals.timer_due_at()]
        if self.signals.pending and self.signals.deliverable():
            moments.append(time.monotonic() + TICK)
        return min((t for t in moments if t is not None), default=None)

    def update_wake(self) -> None:
        self.machine.wake_at(self.next_tick(), self.deadline)

    def run(self, entry: int, timeout: float | None, max_insns: int | None) -> ExitInfo:
        m = self.machine
        deadline = time.monotonic() + timeout if timeout else None
        self.deadline = deadline
        pc = entry
        try:
            while self.exit_info is None:
                self.update_wake()
                reason = m.run(pc, max_insns)
                if reason == "fault" and m.fault is not None and m.fault.page_only:
                    m.fault = self.exact_fault(m.fault)
                verdicts = [v for v in (cb() for cb in self.on_stop) if v is not None]
                ended = next((v for v in verdicts if isinstance(v, ExitInfo)), None)
                if ended is not None and self.exit_info is None:
                    self.exit_info = ended
                if self.exit_info is not None:
                    break
                if "continue" in verdicts and reason not in ("fault", "switch", "slice", "clone"):
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
                elif reason == "tick-hook":     # the machine installed its timer hook
                    pc = m.pc
                elif reason == "wake":          # a timer expired while the guest computed
                    self.signals.check_alarm()
                    if self.threads is not None:
                        self.threads.route_signals()
                    if self.signals.pending:
                        self.signals.deliver_pending()
                    pc = m.pc
                elif reason in ("switch", "slice", "clone"):    # threads (os/linux/threads.py)
                    if reason == "clone":
                        m.use_time_slice()
                        m.slice[0], m.slice[1] = self.threads.slice, 0
                        pc = m.pc
                    else:
                        pc = self.threads.schedule(reason)
                        if pc is None and self.exit_info is None:
                            self.exit_info = ExitInfo("deadlock", EXIT_DEADLOCK)
                elif reason == "max-instructions":
                    self.exit_info = ExitInfo("max-instructions", EXIT_MAX_INSNS)
                elif reason == "returned":
                    self.exit_info = ExitInfo("exit", 0)
                else:
                    self.exit_info = ExitInfo("stopped", 0)
        finally:
            m.wake_at(None, None)
        for f in self.fds.values():
            try:
                os.close(f.host)
            except OSError:
                pass
        self.fds.clear()
        return self.exit_info
