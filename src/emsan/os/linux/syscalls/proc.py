"""Process, identity, time, limits, randomness and the calls a single-threaded libc needs."""
from __future__ import annotations

import errno
import os
import resource
import struct
import time

from emsan.os.linux import children, execve, structs, threads
from emsan.os.linux.children import CLONE_SIGHAND, CLONE_THREAD, CLONE_VFORK, CLONE_VM
from emsan.os.linux.syscalls import NO_RETURN, syscall
from emsan.os.linux.syscalls.events import wait_limit
from emsan.os.linux.syscalls.fs import s32
from emsan.os.linux.uaccess import MAX_RW_COUNT

ARCH_SET_GS, ARCH_SET_FS, ARCH_GET_FS, ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004


@syscall("exit", "exit_group")
def sys_exit(p, status, *_):
    if p.current_syscall == "exit" and p.threads is not None and p.threads.exit_thread(status & 0xFF):
        return NO_RETURN              # one thread ends; the others go on
    p.exit(status & 0xFF)
    return NO_RETURN


@syscall("getpid")
def sys_getpid(p, *_):
    return p.pid


@syscall("gettid")
def sys_gettid(p, *_):
    return p.pid if p.threads is None else p.threads.tid


# The guest's process is emsan's host process: its groups and session are the host's.
@syscall("getpgrp")
def sys_getpgrp(p, *_):
    return os.getpgrp()


@syscall("getppid")
def sys_getppid(p, *_):
    return os.getppid()


@syscall("getpgid", "getsid")
def sys_getpgid(p, pid, *_):
    pid = s32(pid)
    return (os.getpgid if p.current_syscall == "getpgid" else os.getsid)(0 if pid == p.pid else pid)


@syscall("setpgid")
def sys_setpgid(p, pid, pgid, *_):
    if s32(pgid) < 0:
        return -errno.EINVAL
    os.setpgid(s32(pid), s32(pgid))
    return 0


@syscall("setsid")
def sys_setsid(p, *_):
    os.setsid()
    return os.getsid(0)


@syscall("getuid")
def sys_getuid(p, *_):
    return os.getuid()


@syscall("geteuid")
def sys_geteuid(p, *_):
    return os.geteuid()


@syscall("getgid")
def sys_getgid(p, *_):
    return os.getgid()


@syscall("getegid")
def sys_getegid(p, *_):
    return os.getegid()


@syscall("getresuid", "getresgid")
def sys_getresuid(p, a, b, c, *_):
    v = os.getuid() if p.current_syscall == "getresuid" else os.getgid()
    for ptr in (a, b, c):
        p.user.put_u32(ptr, v)
    return 0


@syscall("getgroups")
def sys_getgroups(p, size, lst, *_):
    groups = os.getgroups()
    size = s32(size)
    if size < 0:
        return -errno.EINVAL
    if size:
        if size < len(groups):
            return -errno.EINVAL
        p.user.write(lst, struct.pack(f"<{len(groups)}I", *groups))
    return len(groups)


@syscall("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups")
def sys_setid(p, *_):
    return -errno.EPERM if os.geteuid() else 0


@syscall("uname")
def sys_uname(p, buf, *_):
    p.user.write(buf, structs.pack_utsname(p.arch.platform))
    return 0


@syscall("sysinfo")
def sys_sysinfo(p, buf, *_):
    p.user.write(buf, structs.pack_sysinfo())
    return 0


@syscall("arch_prctl")
def sys_arch_prctl(p, code, addr, *_):
    if code in (ARCH_SET_FS, ARCH_SET_GS) and addr >= p.mem.task_size:
        return -errno.EPERM                   # not a user address, as do_arch_prctl_64 says
    if code == ARCH_SET_FS:
        p.machine.set_reg("fs_base", addr)
    elif code == ARCH_SET_GS:
        p.machine.set_reg("gs_base", addr)
    elif code in (ARCH_GET_FS, ARCH_GET_GS):
        p.user.put_u64(addr, p.machine.reg("fs_base" if code == ARCH_GET_FS else "gs_base"))
    else:
        return -errno.EINVAL
    return 0


@syscall("set_tid_address")
def sys_set_tid_address(p, ptr, *_):
    p.clear_child_tid = ptr
    if p.threads is None:
        return p.pid
    p.threads.current.clear_child_tid = ptr
    return p.threads.tid


ROBUST_LIST_HEAD = 24      # struct robust_list_head: list, futex_offset, list_op_pending


@syscall("set_robust_list")
def sys_set_robust_list(p, head, size, *_):
    if size != ROBUST_LIST_HEAD:
        return -errno.EINVAL
    if p.threads is None:
        p.robust_list = head
    else:
        p.threads.current.robust_list = head
    return 0


@syscall("get_robust_list")
def sys_get_robust_list(p, pid, head_ptr, len_ptr, *_):
    if s32(pid) and (p.threads is None or p.threads.find(s32(pid)) is None) and s32(pid) != p.pid:
        return -errno.ESRCH
    t = None if p.threads is None else (p.threads.find(s32(pid)) if s32(pid) else p.threads.current)
    head = getattr(p, "robust_list", 0) if t is None else t.robust_list
    p.user.put_u64(head_ptr, head)
    p.user.put_u64(len_ptr, ROBUST_LIST_HEAD)
    return 0


@syscall("rseq")
def sys_rseq(p, *_):
    return -errno.ENOSYS     # glibc copes; restartable sequences only matter with preemption


@syscall("prctl")
def sys_prctl(p, option, arg2, *_):
    PR_SET_NAME, PR_GET_NAME = 15, 16
    option = s32(option)
    if option == PR_SET_NAME:
        name = p.user.read(arg2, p.user.readable(arg2, 16) or 16)
        comm = name.split(b"\0", 1)[0][:15].decode(errors="replace")
        if p.threads is None or p.threads.tid == p.pid:
            p.comm = comm
        if p.threads is not None:
            p.threads.current.comm = comm
        return 0
    if option == PR_GET_NAME:
        comm = p.comm if p.threads is None else p.threads.current.comm
        p.user.write(arg2, comm.encode()[:15].ljust(16, b"\0"))
        return 0
    PR_SET_TAGGED_ADDR_CTRL, PR_GET_TAGGED_ADDR_CTRL = 55, 56
    if p.arch.name == "arm64" and option == PR_SET_TAGGED_ADDR_CTRL:
        p.tagged_addr_ctrl = arg2          # tagged pointers always work here (TBI is always on)
        return 0
    if p.arch.name == "arm64" and option == PR_GET_TAGGED_ADDR_CTRL:
        return getattr(p, "tagged_addr_ctrl", 0)
    return -errno.EINVAL


@syscall("getrandom")
def sys_getrandom(p, buf, count, flags, *_):
    if flags & ~7:                          # GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE
        return -errno.EINVAL
    count = min(count, MAX_RW_COUNT, 1 << 20)
    if not count:
        return 0
    if not p.user.access_ok(buf, count):
        return -errno.EFAULT
    count = p.user.writable(buf, count)
    if not count:
        return -errno.EFAULT
    p.user.write(buf, p.random_bytes(count))
    return count


# --- limits and usage ------------------------------------------------------------------------
RLIM_INF = 0xFFFF_FFFF_FFFF_FFFF


RLIM_NLIMITS = 16


def _rlimit(p, resource_id: int) -> tuple[int, int]:
    """The guest's limit: what it set, else the host's (the stack: the one emsan gives it)."""
    if not 0 <= resource_id < RLIM_NLIMITS:
        raise OSError(errno.EINVAL, "no such resource")
    if resource_id in p.rlimits:
        return p.rlimits[resource_id]
    try:
        soft, hard = resource.getrlimit(resource_id)
    except (ValueError, OSError):
        return RLIM_INF, RLIM_INF
    if resource_id == resource.RLIMIT_STACK:
        soft = 8 << 20          # the stack emsan gives the guest
    return tuple(RLIM_INF if v == resource.RLIM_INFINITY else v for v in (soft, hard))  # type: ignore


def _set_rlimit(p, resource_id: int, new: int) -> int:
    """Keep the guest's new limit (its own; emsan's process is not limited): allocators
    emsan stands in for honour RLIMIT_AS and RLIMIT_DATA (rlimit_listeners)."""
    soft, hard = p.user.unpack("<QQ", new)
    if soft > hard:
        return -errno.EINVAL
    if hard > _rlimit(p, resource_id)[1] and os.geteuid() != 0:
        return -errno.EPERM             # raising a hard limit needs CAP_SYS_RESOURCE
    p.rlimits[resource_id] = (soft, hard)
    for cb in p.rlimit_listeners:
        cb()
    return 0


@syscall("prlimit64")
def sys_prlimit64(p, pid, res, new, old, *_):
    if s32(pid) not in (0, p.pid):
        return -errno.ESRCH
    res &= 0xFFFFFFFF
    limits = _rlimit(p, res)
    if new:
        soft, hard = p.user.unpack("<QQ", new)
        if soft > hard:
            return -errno.EINVAL
    if old:
        p.user.pack(old, "<QQ", *limits)
    return _set_rlimit(p, res, new) if new else 0


@syscall("getrlimit")
def sys_getrlimit(p, res, old, *_):
    p.user.pack(old, "<QQ", *_rlimit(p, res & 0xFFFFFFFF))
    return 0


@syscall("setrlimit")
def sys_setrlimit(p, res, new, *_):
    return _set_rlimit(p, res & 0xFFFFFFFF, new)


@syscall("getrusage")
def sys_getrusage(p, who, buf, *_):
    if s32(who) not in (0, -1, 1):            # RUSAGE_SELF, RUSAGE_CHILDREN, RUSAGE_THREAD
        return -errno.EINVAL
    who = resource.RUSAGE_CHILDREN if s32(who) == -1 else resource.RUSAGE_SELF
    p.user.write(buf, structs.pack_rusage(resource.getrusage(who)))
    return 0


@syscall("times")
def sys_times(p, buf, *_):
    t = os.times()
    if buf:
        p.user.pack(buf, "<qqqq", int(t.user * 100), int(t.system * 100), 0, 0)
    return int(time.monotonic() * 100)


@syscall("sched_getaffinity")
def sys_sched_getaffinity(p, pid, size, mask, *_):
    if s32(pid) not in (0, p.pid):
        return -errno.ESRCH
    if size < 8 or size & 7:
        return -errno.EINVAL
    p.user.put_u64(mask, 1)     # one CPU: the guest is single-threaded
    return 8


@syscall("sched_setaffinity")
def sys_sched_setaffinity(p, *_):
    return 0


@syscall("sched_yield")
def sys_sched_yield(p, *_):
    if p.threads is not None and p.threads.crowded():
        p.machine.stop("slice")             # the next runnable thread goes now (os/linux/threads.py)
    return 0


@syscall("getcpu")
def sys_getcpu(p, cpu, node, *_):
    for ptr in (cpu, node):
        if ptr:
            p.user.put_u32(ptr, 0)
    return 0


@syscall("getpriority")
def sys_getpriority(p, which, who, *_):
    if which > 2:
        return -errno.EINVAL
    if who and who != p.pid:
        return -errno.ESRCH
    return 20 - os.getpriority(which, 0)     # the kernel's biased value: glibc turns it back into a nice


@syscall("setpriority")
def sys_setpriority(p, which, who, prio, *_):
    if which > 2:
        return -errno.EINVAL
    if who and who != p.pid:
        return -errno.ESRCH
    if which == 0:                  # PRIO_PROCESS: the guest is emsan's process; the host's group and
        os.setpriority(0, 0, max(-20, min(19, s32(prio))))      # user are none of its business
    return 0


@syscall("sched_getscheduler")
def sys_sched_getscheduler(p, pid, *_):
    return 0                       # SCHED_OTHER


@syscall("sched_getparam")
def sys_sched_getparam(p, pid, param, *_):
    if s32(pid) < 0 or not param:
        return -errno.EINVAL
    if s32(pid) not in (0, p.pid):
        return -errno.ESRCH
    p.user.write(param, bytes(4))
    return 0


@syscall("sched_get_priority_max", "sched_get_priority_min")
def sys_sched_priority_range(p, policy, *_):
    if policy in (1, 2):           # SCHED_FIFO, SCHED_RR
        return 99 if p.current_syscall == "sched_get_priority_max" else 1
    return 0 if policy in (0, 3, 5) else -errno.EINVAL


@syscall("sched_setscheduler", "sched_setparam")
def sys_sched_set(p, *_):
    return -errno.EPERM            # real-time scheduling of the emulator would change nothing


@syscall("personality")
def sys_personality(p, persona, *_):
    return 0                       # PER_LINUX, and requests to change it are accepted and ignored


# --- time -------------------------------------------------------------------------------------
@syscall("clock_gettime")
def _clock(clk: int) -> int:
    """A clockid_t the host knows (the kernel's own ids; per-process CPU clocks of others are
    EINVAL here), or EINVAL."""
    clk = s32(clk)
    if not 0 <= clk < 12 or clk in (10,):
        raise OSError(errno.EINVAL, "bad clock id")
    return clk


@syscall("clock_gettime")
def sys_clock_gettime(p, clk, tp, *_):
    ns = time.clock_gettime_ns(_clock(clk))
    p.user.write(tp, structs.pack_timespec(ns))
    return 0


@syscall("clock_getres")
def sys_clock_getres(p, clk, tp, *_):
    _clock(clk)
    if tp:
        p.user.write(tp, structs.pack_timespec(1))
    return 0


@syscall("gettimeofday")
def sys_gettimeofday(p, tv, tz, *_):
    if tv:
        p.user.write(tv, structs.pack_timeval(time.time_ns()))
    if tz:
        p.user.write(tz, bytes(8))
    return 0


@syscall("time")
def sys_time(p, tloc, *_):
    t = int(time.time())
    if tloc:
        p.user.pack(tloc, "<q", t)
    return t


@syscall("nanosleep", "clock_nanosleep")
def sys_nanosleep(p, *a):
    absolute = p.current_syscall == "clock_nanosleep" and a[1] & 1          # TIMER_ABSTIME
    req, rem = (a[0], a[1]) if p.current_syscall == "nanosleep" else (a[2], a[3])
    if p.current_syscall == "clock_nanosleep":
        clk = _clock(a[0])
        if a[1] & ~1:
            return -errno.EINVAL
    sec, nsec = p.user.unpack("<qq", req)
    if sec < 0 or not 0 <= nsec < 10**9:
        return -errno.EINVAL
    delay = (sec * 10**9 + nsec - time.clock_gettime_ns(clk)) / 1e9 if absolute else sec + nsec / 1e9
    if delay <= 0:
        return 0
    # A timer that expires first interrupts the sleep (its handler runs on the way back).
    limit, cut_by = wait_limit(p, min(int(delay * 1000) + 1, 2**62))
    sigs = p.signals
    if cut_by == "alarm" and limit < delay * 1000 and sigs.would_interrupt(14):
        p.sleep(limit / 1000)
        p.signals.check_alarm()
        if rem and not absolute:
            left = max(0.0, delay - limit / 1000)
            p.user.pack(rem, "<qq", int(left), int((left % 1) * 1e9))
        return -errno.EINTR
    threads.park_for(p, "nanosleep", delay, 0)     # among threads: the others run meanwhile
    if not p.sleep(delay):
        return -errno.EINTR     # --timeout ended the run during the sleep
    return 0


# --- processes (os/linux/children.py, os/linux/execve.py) ------------------------------------------
@syscall("clone", "clone3", "fork", "vfork")
def sys_clone(p, a0=0, a1=0, a2=0, a3=0, a4=0, *_):
    name = p.current_syscall
    if name == "fork":
        flags, stack, ptid, ctid, tls = children.SIGCHLD, 0, 0, 0, 0
    elif name == "vfork":
        flags, stack, ptid, ctid, tls = children.CLONE_VM | children.CLONE_VFORK | children.SIGCHLD, 0, 0, 0, 0
    elif name == "clone3":
        if a1 < 64 or a1 > 4096:
            return -errno.EINVAL
        flags, _pidfd, ctid, ptid, exit_signal, stack_lo, stack_size, tls = p.user.unpack("<8Q", a0)
        if exit_signal & ~0xFF or (stack_lo == 0) != (stack_size == 0):
            return -errno.EINVAL
        flags |= exit_signal
        stack = stack_lo + stack_size if stack_lo else 0
    elif p.arch.name == "x86_64":       # clone(flags, stack, parent_tid, child_tid, tls)
        flags, stack, ptid, ctid, tls = a0, a1, a2, a3, a4
    else:                               # arm64: clone(flags, stack, parent_tid, tls, child_tid)
        flags, stack, ptid, tls, ctid = a0, a1, a2, a3, a4
    if flags & CLONE_THREAD:
        return _clone_thread(p, flags, stack, ptid, ctid, tls)
    if flags & CLONE_SIGHAND and not flags & CLONE_VM:
        return -errno.EINVAL
    if flags & CLONE_VM and not flags & CLONE_VFORK:
        p.warn_once("clone-vm", "clone with CLONE_VM but neither CLONE_THREAD nor CLONE_VFORK (a shared "
                                "address space across processes) is not supported: returning -EINVAL")
        return -errno.EINVAL
    # CLONE_VM|CLONE_VFORK (vfork, posix_spawn) runs as a fork whose parent waits for the child's
    # exec or exit: the same for every program that keeps to what vfork allows.
    return children.fork(p, flags & ~CLONE_VM, stack, ptid, ctid, tls)


def _clone_thread(p, flags: int, stack: int, ptid: int, ctid: int, tls: int) -> int:
    """A thread of this process, in this engine (os/linux/threads.py): its tid."""
    from emsan.os.linux.children import CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID, CLONE_PARENT_SETTID, CLONE_SETTLS
    if not flags & CLONE_SIGHAND or not flags & CLONE_VM or flags & children.CLONE_VFORK:
        return -errno.EINVAL                  # what copy_process() refuses
    if flags & (children.CLONE_NEWNS_ALL | children.CLONE_PIDFD):
        return -errno.EINVAL
    if p.threads is None:
        p.threads = threads.Threads(p, p.threads_slice)
        for fn in p.on_threads:
            fn(p.threads)
    if len(p.threads.all) >= threads.MAX_THREADS:
        p.warn_once("threads-max", f"more than {threads.MAX_THREADS} live threads: clone returns -EAGAIN")
        return -errno.EAGAIN
    t = p.threads.create(stack, tls if flags & CLONE_SETTLS else None,
                         ctid if flags & CLONE_CHILD_CLEARTID else 0)
    if flags & CLONE_PARENT_SETTID and ptid:
        p.user.put_u32(ptid, t.tid)
    if flags & CLONE_CHILD_SETTID and ctid:
        p.user.put_u32(ctid, t.tid)
    return t.tid


@syscall("execve", "execveat")
def sys_execve(p, *a):
    AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW = 0x1000, 0x100
    if p.current_syscall == "execve":
        dirfd, ptr, argv_p, envp_p, flags = -100, a[0], a[1], a[2], 0
    else:
        dirfd, ptr, argv_p, envp_p, flags = s32(a[0]), a[1], a[2], a[3], a[4]
        if flags & ~(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
            return -errno.EINVAL
    gpath = p.user.path(ptr)
    budget = [execve.ARG_MAX]
    argv = execve.string_array(p, argv_p, budget)
    envp = execve.string_array(p, envp_p, budget)
    if not gpath:
        if not flags & AT_EMPTY_PATH:
            return -errno.ENOENT
        path = os.readlink(f"/proc/self/fd/{p.fd(dirfd).host}")
    else:
        path = execve.host_path(p, dirfd, gpath, not flags & AT_SYMLINK_NOFOLLOW)
    if flags & AT_SYMLINK_NOFOLLOW and os.path.islink(path):
        return -errno.ELOOP
    image, argv = execve.resolve(p, gpath, path, argv or [gpath])
    if p.exec_image is None:
        p.warn_once("exec", f"no session to run {image} under: returning -ENOSYS")
        return -errno.ENOSYS
    p.exec_image(image, argv, envp)     # returns only if the new image could not start
    return -errno.ENOEXEC


def _put_status(p, ptr: int, status: int) -> None:
    if ptr:
        p.user.put_u32(ptr, status)


@syscall("wait4")
def sys_wait4(p, pid, wstatus, options, rusage, *_):
    got = children.wait4(p, s32(pid), options & 0xFFFFFFFF, rusage)
    if isinstance(got, int):
        return got
    cpid, status = got
    if cpid:
        _put_status(p, wstatus, status)
    return cpid


@syscall("waitid")
def sys_waitid(p, idtype, ident, infop, options, rusage, *_):
    got = children.waitid(p, idtype & 0xFFFFFFFF, s32(ident), options & 0xFFFFFFFF)
    if isinstance(got, int):
        return got
    if infop:
        info = bytes(128) if got is None else struct.pack(
            "<iii4xiIi", got.si_signo, 0, got.si_code, got.si_pid, got.si_uid, got.si_status).ljust(128, b"\0")
        p.user.write(infop, info)
    if rusage:
        p.user.write(rusage, structs.pack_rusage(resource.getrusage(resource.RUSAGE_CHILDREN)))
    return 0


FUTEX_WAIT, FUTEX_WAKE, FUTEX_FD, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE, FUTEX_WAKE_OP = 0, 1, 2, 3, 4, 5
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256


def _futex_until(p, timeout: int, absolute: bool, realtime: bool) -> float | None:
    """A futex timeout as a time.monotonic() moment (absolute ones are on CLOCK_MONOTONIC, or
    CLOCK_REALTIME with FUTEX_CLOCK_REALTIME)."""
    if not timeout:
        return None
    sec, nsec = p.user.unpack("<qq", timeout)
    if sec < 0 or not 0 <= nsec < 10**9:
        raise OSError(errno.EINVAL, "bad timespec")
    t = sec + nsec / 1e9
    if not absolute:
        return time.monotonic() + t
    now = time.time() if realtime else time.monotonic()
    return time.monotonic() + (t - now)


def _wake_op(p, uaddr2: int, encoded: int) -> bool:
    """FUTEX_WAKE_OP's operation on *uaddr2 and its comparison of the old value."""
    op, cmp_, oparg, cmparg = (encoded >> 28) & 7, (encoded >> 24) & 15, (encoded >> 12) & 0xFFF, encoded & 0xFFF
    if encoded >> 31:                              # FUTEX_OP_OPARG_SHIFT
        oparg = 1 << (oparg & 31)
    old = p.user.u32(uaddr2)
    new = {0: oparg, 1: old + oparg, 2: old | oparg, 3: old & ~oparg, 4: old ^ oparg}.get(op)
    if new is None:
        raise OSError(errno.ENOSYS, "bad futex op")
    p.user.put_u32(uaddr2, new & 0xFFFFFFFF)
    return {0: old == cmparg, 1: old != cmparg, 2: old < cmparg, 3: old <= cmparg,
            4: old > cmparg, 5: old >= cmparg}.get(cmp_, False)


@syscall("futex")
def sys_futex(p, uaddr, op, val, timeout=0, uaddr2=0, val3=0, *_):
    """The futex operations glibc uses, between the threads of this process. Private and shared
    futexes are the same here: the threads share one address space, and another process's
    shared-memory futex is not seen (a wait for one times out or waits for a signal)."""
    cmd = op & ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
    realtime = bool(op & FUTEX_CLOCK_REALTIME)
    if uaddr & 3:
        return -errno.EINVAL
    if realtime and cmd not in (FUTEX_WAIT, FUTEX_WAIT_BITSET):
        return -errno.ENOSYS
    val &= 0xFFFFFFFF
    th = p.threads
    if cmd in (FUTEX_WAIT, FUTEX_WAIT_BITSET):
        bitset = val3 & 0xFFFFFFFF if cmd == FUTEX_WAIT_BITSET else threads.FUTEX_BITSET_ANY
        if not bitset:
            return -errno.EINVAL
        until = _futex_until(p, timeout, cmd == FUTEX_WAIT_BITSET, realtime)
        if p.user.u32(uaddr) != val:
            return -errno.EAGAIN
        if th is not None and th.crowded():
            th.futex_wait(uaddr, until, bitset)          # parks the thread
        # Alone: nothing but a signal or the timeout can end the wait.
        if until is None:
            p.warn_once("futex", "futex wait with no other thread to wake it (deadlock in a single thread)")
            return -errno.EDEADLK
        if not p.sleep(min(max(0.0, until - time.monotonic()), 1e9)):
            return -errno.EINTR
        return -errno.ETIMEDOUT
    if cmd in (FUTEX_WAKE, FUTEX_WAKE_BITSET):
        bitset = val3 & 0xFFFFFFFF if cmd == FUTEX_WAKE_BITSET else threads.FUTEX_BITSET_ANY
        if not bitset:
            return -errno.EINVAL
        return 0 if th is None else th.futex_wake(uaddr, s32(val), bitset)
    if cmd in (FUTEX_REQUEUE, FUTEX_CMP_REQUEUE):
        n_move = s32(timeout)                             # val2 travels in the timeout argument
        if s32(val) < 0 or n_move < 0:
            return -errno.EINVAL
        if cmd == FUTEX_CMP_REQUEUE and p.user.u32(uaddr) != val3 & 0xFFFFFFFF:
            return -errno.EAGAIN
        return 0 if th is None else th.futex_requeue(uaddr, s32(val), n_move, uaddr2)
    if cmd == FUTEX_WAKE_OP:
        if uaddr2 & 3:
            return -errno.EINVAL
        hit = _wake_op(p, uaddr2, val3 & 0xFFFFFFFF)
        if th is None:
            return 0
        n = th.futex_wake(uaddr, s32(val))
        if hit:
            n += th.futex_wake(uaddr2, s32(timeout))
        return n
    return -errno.ENOSYS          # PI futexes, FUTEX_FD
