"""The guest's own /proc: /proc/self, /proc/thread-self and /proc/PID describe the guest.

The guest runs inside emsan's host process, so the host's /proc/self is emsan: its maps, its
memory (writing /proc/self/mem there would write emsan's heap), its descriptors (the JSON
report, emsan's own files). Every guest path is therefore resolved the way the kernel resolves
it (".", "..", repeated slashes, symbolic links in the host file system, relative paths from the
working directory or a directory descriptor) before anything is opened, and what lands in the
guest's own process directory is served here: maps and smaps of the guest's memory map, mem
reading and writing guest memory only, exe, cwd, root, fd/N (the guest's descriptors),
cmdline, environ, auxv, status, stat, statm, comm. A few entries that are the same for every
process of the host (mounts, net, cgroup...) are the host's; anything else is absent. emsan's
other threads (the host's /proc/PID/task/TID and /proc/TID) are absent too.
"""
from __future__ import annotations

import errno
import os
import stat
import zlib
from collections import deque

from emsan.lazyclass import dataclass
from emsan.os.linux.uaccess import CHUNK, U64

FILES = ("maps", "smaps", "status", "stat", "statm", "cmdline", "environ", "auxv", "comm")
LINKS = ("exe", "cwd", "root")
DIRS = ("fd", "task")
# The same for every process of the host: served by the host's own entries.
SHARED = ("net", "mounts", "mountinfo", "mountstats", "cgroup", "limits", "oom_score_adj", "oom_score",
          "loginuid", "sessionid", "uid_map", "gid_map", "setgroups")
MAX_LINKS = 40
PAGE = 0x1000


@dataclass
class StatResult:
    """What os.stat() gives, for files that exist only in the guest's /proc."""
    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_rdev: int = 0
    st_blksize: int = 1024
    st_blocks: int = 0

    @property
    def st_atime(self) -> float:
        return self.st_atime_ns / 1e9

    st_mtime = st_ctime = st_atime

    @property
    def st_mtime_ns(self) -> int:
        return self.st_atime_ns

    st_ctime_ns = st_mtime_ns


@dataclass(frozen=True)
class Node:
    """An entry of the guest's process directory. `task`: under /proc/PID/task/PID (a thread's
    directory, with no task/ of its own); `rest`: the path inside the process directory;
    `top`: "self" or "thread-self" for those two links of /proc itself."""

    rest: tuple[str, ...] = ()
    task: bool = False
    top: str = ""

    # --- what it is -------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        r = self.rest
        if self.top or (len(r) == 1 and r[0] in LINKS) or (len(r) == 2 and r[0] == "fd"):
            return "link"
        if not r or (len(r) == 1 and r[0] in DIRS):
            return "dir"
        return "mem" if r == ("mem",) else "file"

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    def path(self, p) -> str:
        if self.top:
            return f"/proc/{self.top}"
        base = f"/proc/{p.pid}/task/{p.pid}" if self.task else f"/proc/{p.pid}"
        return "/".join((base, *self.rest))

    # --- walking ------------------------------------------------------------------------------------
    def parent(self):
        if self.top or (not self.rest and not self.task):
            return "/proc"
        if not self.rest:
            return Node(("task",))
        return Node(self.rest[:-1], self.task)

    def child(self, p, name: str):
        """The entry `name` of this directory: a Node, or the host path of a shared entry."""
        if not self.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        r = self.rest
        if not r:
            if name in FILES or name in LINKS or name == "mem" or name == "fd" or (name == "task" and not self.task):
                return Node((name,), self.task)
            if name in SHARED:
                return f"/proc/{p.pid}/{name}"
        elif r == ("task",):
            if name == str(p.pid):
                return Node((), True)
        elif r == ("fd",):
            if name.isdigit() and int(name) in p.fds and str(int(name)) == name:
                return Node(("fd", name), self.task)
        raise OSError(errno.ENOENT, "no such entry")

    def follow(self, p):
        """Where a link leads: a Node, a host path, or ("fd", FileDesc) for one of the guest's
        descriptors (the kernel's magic links go to the open file itself)."""
        if self.top == "self":
            return Node()
        if self.top == "thread-self":
            return Node((), True)
        what = self.rest[0]
        if what == "exe":
            return p.exe_path
        if what == "root":
            return "/"
        if what == "cwd":
            return p.cwd_node if p.cwd_node is not None else p.cwd
        f = p.fds.get(int(self.rest[1]))
        if f is None:
            raise OSError(errno.ENOENT, "no such descriptor")
        return ("fd", f)

    def readlink(self, p) -> str:
        if self.kind != "link":
            raise OSError(errno.EINVAL, "not a link")
        if self.top == "self":
            return str(p.pid)
        if self.top == "thread-self":
            return f"{p.pid}/task/{p.pid}"
        what = self.rest[0]
        if what == "exe":
            return os.path.realpath(p.exe_path)
        if what == "root":
            return "/"
        if what == "cwd":
            return p.guest_cwd()
        f = p.fds.get(int(self.rest[1]))
        if f is None:
            raise OSError(errno.ENOENT, "no such descriptor")
        if f.node is not None:
            return f.node.path(p)
        if f.mem is not None:
            return f"/proc/{p.pid}/mem"
        return os.readlink(f"/proc/self/fd/{f.host}")

    # --- metadata -------------------------------------------------------------------------------------
    def stat(self, p) -> StatResult:
        kind = self.kind
        mode = {"dir": stat.S_IFDIR | 0o555, "link": stat.S_IFLNK | 0o777, "mem": stat.S_IFREG | 0o600,
                "file": stat.S_IFREG | (0o644 if self.rest == ("comm",) else 0o444)}[kind]
        if self.rest in (("environ",), ("auxv",)):
            mode = stat.S_IFREG | 0o400
        ino = zlib.crc32(self.path(p).encode()) | 1 << 32
        return StatResult(mode, ino, _proc_dev(), 2 if kind == "dir" else 1, os.getuid(), os.getgid(), 0,
                          int(p.start_time * 1e9))

    def access(self, p, mode: int) -> int:
        perm = self.stat(p).st_mode & 0o7
        perm |= (self.stat(p).st_mode >> 6) & 0o7          # the owner's bits (the guest owns its /proc)
        return 0 if mode & ~perm == 0 else -errno.EACCES

    def entries(self, p) -> list[tuple[int, int, bytes]]:
        """getdents: (inode, d_type, name) with "." and ".."."""
        r = self.rest
        if not r:
            names = [*FILES, *LINKS, "mem", "fd", *(() if self.task else ("task",)), *SHARED]
        elif r == ("task",):
            names = [str(p.pid)]
        else:
            names = [str(fd) for fd in sorted(p.fds)]
        out = [(1, 4, b"."), (1, 4, b"..")]
        for name in names:
            child = self.child(p, name)
            if isinstance(child, str):
                out.append((zlib.crc32(child.encode()), 4, name.encode()))
            else:
                out.append((child.stat(p).st_ino, {"dir": 4, "link": 10}.get(child.kind, 8), name.encode()))
        return out

    # --- contents ---------------------------------------------------------------------------------------
    def content(self, p) -> bytes:
        return _CONTENT[self.rest[0]](p)

    def write(self, p, data: bytes) -> int:
        if self.rest == ("comm",):
            p.comm = data.split(b"\n", 1)[0][:15].decode(errors="replace")
            return len(data)
        return -errno.EACCES


def _proc_dev() -> int:
    try:
        return os.stat("/proc").st_dev
    except OSError:
        return 0


# --- resolving paths ------------------------------------------------------------------------------------
def _emsan_task(p, name: str) -> bool:
    """Is `name` one of emsan's own threads other than the one the guest is (host /proc/TID)?"""
    return name.isdigit() and name != str(p.pid) and os.path.exists(f"/proc/{os.getpid()}/task/{name}")


def _host_node(p, path: str):
    """The Node a host path under /proc names when it is the guest's (or emsan's) own process."""
    parts = path.split("/")[2:] if path.startswith("/proc/") else []
    if not parts:
        return None
    if parts[0] in ("self", "thread-self", str(p.pid)) or _emsan_task(p, parts[0]):
        if _emsan_task(p, parts[0]):
            raise OSError(errno.ENOENT, "no such process")
        node: Node | str = Node((), parts[0] == "thread-self")
        for name in parts[1:]:
            node = node.child(p, name) if isinstance(node, Node) else node + "/" + name
        return node
    return None


def resolve(p, start, gpath: str, follow: bool):
    """Walk gpath from `start` (a Node or an absolute host directory path) as the kernel would:
    a Node if the path ends in the guest's own /proc, (None, host path) if it passed through the
    host's /proc elsewhere (so the host never re-resolves /proc's own links), None otherwise
    (the caller hands the original path to the host)."""
    comps = deque(c for c in gpath.split("/") if c)
    if gpath.endswith("/"):
        follow = True
    cur = "/" if gpath.startswith("/") else start
    through_proc = isinstance(cur, Node)
    links = 0
    while comps:
        name = comps.popleft()
        last = not comps
        if name == ".":
            continue
        if isinstance(cur, Node):
            if name == "..":
                cur = cur.parent()
                continue
            nxt = cur.child(p, name)
        else:
            if cur == "/proc" or cur.startswith("/proc/"):
                through_proc = True
            if name == "..":
                cur = os.path.dirname(cur) or "/"
                node = _host_node(p, cur)
                if node is not None:
                    cur = node
                continue
            host = "/" + name if cur == "/" else f"{cur}/{name}"
            if cur == "/proc" and name in ("self", "thread-self"):
                nxt = Node(top=name)
            else:
                node = _host_node(p, host) if host.startswith("/proc/") else None
                if node is None:
                    try:
                        st = os.lstat(host)
                    except OSError:
                        if through_proc:
                            raise
                        return None          # the host reports the error for the original path
                    if stat.S_ISLNK(st.st_mode) and (not last or follow):
                        links += 1
                        if links > MAX_LINKS:
                            raise OSError(errno.ELOOP, "too many levels of symbolic links")
                        target = os.readlink(host)
                        comps.extendleft(reversed([c for c in target.split("/") if c]))
                        if target.startswith("/"):
                            cur = "/"
                        continue
                    if not last and not stat.S_ISDIR(st.st_mode):
                        if through_proc:
                            raise OSError(errno.ENOTDIR, "not a directory")
                        return None
                    cur = host
                    continue
                nxt = node
        # a Node (or a shared entry's host path) reached inside the guest's /proc
        through_proc = True
        if isinstance(nxt, Node) and nxt.kind == "link" and (not last or follow):
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links")
            target = nxt.follow(p)
            if isinstance(target, tuple):           # one of the guest's descriptors
                f = target[1]
                if f.node is not None:
                    cur = f.node
                elif f.mem is not None:
                    cur = Node(("mem",))
                elif last:
                    return None, f"/proc/self/fd/{f.host}"
                else:
                    cur = os.readlink(f"/proc/self/fd/{f.host}")
                continue
            if isinstance(target, str):
                comps.extendleft(reversed([c for c in target.split("/") if c]))
                cur = "/"
                continue
            cur = target
            continue
        cur = nxt
    if isinstance(cur, Node):
        if gpath.endswith("/") and not cur.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        return cur
    return (None, cur) if through_proc else None


# --- opening ------------------------------------------------------------------------------------------
def open_node(p, node: Node, hflags: int, cloexec: bool) -> int:
    acc = hflags & os.O_ACCMODE
    kind = node.kind
    if kind == "link":
        raise OSError(errno.ELOOP, "a symbolic link (O_NOFOLLOW)")
    if hflags & os.O_CREAT and hflags & os.O_EXCL:
        raise OSError(errno.EEXIST, "exists")
    if hflags & os.O_DIRECTORY and kind != "dir":
        raise OSError(errno.ENOTDIR, "not a directory")
    if kind == "dir" and (acc != os.O_RDONLY or hflags & os.O_TRUNC):
        raise OSError(errno.EISDIR, "is a directory")
    if kind == "file" and (acc != os.O_RDONLY or hflags & os.O_TRUNC) and node.rest != ("comm",):
        raise OSError(errno.EACCES, "read-only")
    host = os.memfd_create("proc", os.MFD_CLOEXEC)
    try:
        if kind == "file":
            data = node.content(p)
            for off in range(0, len(data), CHUNK):
                os.write(host, data[off:off + CHUNK])
            os.lseek(host, 0, os.SEEK_SET)
    except BaseException:
        os.close(host)
        raise
    return p.alloc_fd(host, node.path(p), cloexec, node=node if kind != "mem" else None,
                      mem=MemFile(p) if kind == "mem" else None)


class MemFile:
    """/proc/PID/mem: a file whose offsets are guest addresses. Like the kernel's (FOLL_FORCE),
    it reads and writes any mapping of the guest whatever its protection; emsan's own regions
    where no guest object lives (KFENCE's trap...) and unmapped addresses are EIO."""

    def __init__(self, p):
        self.p = p
        self.pos = 0

    def _reach(self, addr: int, size: int) -> int:
        if addr >= self.p.mem.task_size:
            return 0
        return self.p.mem.accessible(addr, min(size, self.p.mem.task_size - addr), 0, force=True)

    def read_into(self, buf: int, count: int, off: int | None) -> int:
        p = self.p
        addr = self.pos if off is None else off & U64
        done = 0
        while done < count:
            n = self._reach(addr + done, min(CHUNK, count - done))
            if not n:
                break
            data = p.machine.read(addr + done, n)
            put = p.user.write_some(buf + done, data)
            done += put
            if put < n:
                if not done:
                    return -errno.EFAULT
                break
        return self._moved(done, count, off)

    def write_from(self, buf: int, count: int, off: int | None) -> int:
        p = self.p
        addr = self.pos if off is None else off & U64
        done = 0
        for chunk in p.user.chunks(buf, count):
            n = self._reach(addr + done, len(chunk))
            if n:
                p.machine.write(addr + done, chunk[:n])   # the engine drops code translated from it
            done += n
            if n < len(chunk):
                break
        return self._moved(done, count, off)

    def _moved(self, done: int, count: int, off: int | None) -> int:
        """A transfer's result: EIO when nothing of a non-empty one was reachable (as the kernel's
        mem file says), and the file position advanced unless it was a pread/pwrite."""
        if not done and count:
            return -errno.EIO
        if off is None:
            self.pos = (self.pos + done) & U64
        return done

    def lseek(self, off: int, whence: int) -> int:
        if whence == os.SEEK_SET:
            self.pos = off & U64
        elif whence == os.SEEK_CUR:
            self.pos = (self.pos + off) & U64
        else:
            return -errno.EINVAL
        return self.pos

    def stat(self, p) -> StatResult:
        return Node(("mem",)).stat(p)


# --- contents ----------------------------------------------------------------------------------------------
_file_ids: dict[str, tuple[int, int]] = {}


def _file_id(path: str) -> tuple[int, int]:
    if path not in _file_ids:
        try:
            st = os.stat(path)
            _file_ids[path] = (st.st_dev, st.st_ino)
        except OSError:
            _file_ids[path] = (0, 0)
    return _file_ids[path]


def _maps_line(m) -> str:
    perms = "".join(c if m.prot & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4))) + "p"
    dev, ino = _file_id(m.name) if m.is_file else (0, 0)
    name = "" if m.name == "[anon]" else m.name
    head = f"{m.start:08x}-{m.end:08x} {perms} {m.offset:08x} {os.major(dev):02x}:{os.minor(dev):02x} {ino}"
    return (head.ljust(73) + name).rstrip() + "\n"


def maps(p) -> bytes:
    return "".join(_maps_line(m) for m in p.mem.mappings).encode()


def smaps(p) -> bytes:
    out = []
    for m in p.mem.mappings:
        kb = (m.end - m.start) >> 10
        flags = " ".join(f for f, bit in (("rd", 1), ("wr", 2), ("ex", 4)) if m.prot & bit)
        out.append(_maps_line(m))
        for key, value in (("Size", kb), ("KernelPageSize", 4), ("MMUPageSize", 4), ("Rss", kb), ("Pss", kb),
                           ("Pss_Dirty", 0), ("Shared_Clean", 0), ("Shared_Dirty", 0), ("Private_Clean", 0),
                           ("Private_Dirty", kb), ("Referenced", kb), ("Anonymous", 0 if m.is_file else kb),
                           ("LazyFree", 0), ("AnonHugePages", 0), ("ShmemPmdMapped", 0), ("FilePmdMapped", 0),
                           ("Shared_Hugetlb", 0), ("Private_Hugetlb", 0), ("Swap", 0), ("SwapPss", 0),
                           ("Locked", 0)):
            out.append(f"{key + ':':<16}{value:>8} kB\n")
        out.append("THPeligible:    0\n")
        out.append(f"VmFlags: {flags} mr mw me ac \n".replace("  ", " "))
    return "".join(out).encode()


def _guest_bytes(p, lo: int, hi: int) -> bytes:
    """The guest's own memory (argv and environment strings), as far as it is still mapped."""
    n = p.mem.accessible(lo, max(0, hi - lo), 0, force=True) if hi > lo else 0
    return p.machine.read(lo, min(n, 1 << 22)) if n else b""


def cmdline(p) -> bytes:
    return _guest_bytes(p, *p.mem.arg_range)


def environ(p) -> bytes:
    return _guest_bytes(p, *p.mem.env_range)


def auxv(p) -> bytes:
    return p.mem.auxv


def _vm_kb(p) -> int:
    return sum(m.end - m.start for m in p.mem.mappings if m.guest) >> 10


def _sigmask(handler_kind: int, p) -> int:
    acts = p.signals.actions
    return sum(1 << (sig - 1) for sig, act in acts.items() if (act[0] == 1) == (handler_kind == 1) and act[0] != 0)


def status(p) -> bytes:
    uid, gid = os.getuid(), os.getgid()
    kb = _vm_kb(p)
    lines = [f"Name:\t{p.comm}", "Umask:\t0022", "State:\tR (running)", f"Tgid:\t{p.pid}", "Ngid:\t0",
             f"Pid:\t{p.pid}", f"PPid:\t{os.getppid()}", "TracerPid:\t0", f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}",
             f"Gid:\t{gid}\t{gid}\t{gid}\t{gid}", "FDSize:\t64", "Groups:\t", f"VmPeak:\t{kb:8} kB",
             f"VmSize:\t{kb:8} kB", "VmLck:\t       0 kB", "VmPin:\t       0 kB", f"VmHWM:\t{kb:8} kB",
             f"VmRSS:\t{kb:8} kB", "Threads:\t1", "SigQ:\t0/63550", f"SigPnd:\t{0:016x}",
             f"ShdPnd:\t{p.signals.pending_mask():016x}", f"SigBlk:\t{p.signals.mask:016x}",
             f"SigIgn:\t{_sigmask(1, p):016x}", f"SigCgt:\t{_sigmask(2, p):016x}", "CapInh:\t0000000000000000",
             "NoNewPrivs:\t0", "Seccomp:\t0", "Cpus_allowed:\t1", "Cpus_allowed_list:\t0",
             "voluntary_ctxt_switches:\t0", "nonvoluntary_ctxt_switches:\t0"]
    return ("\n".join(lines) + "\n").encode()


def stat_line(p) -> bytes:
    mem = p.mem
    vsize = _vm_kb(p) << 10
    text = next((m for m in mem.mappings if m.prot & 4 and m.guest), None)
    start_stack = mem.stack[1] - 8 if mem.stack[1] else 0
    ticks = int(p.start_time * 100) & 0xFFFFFFFF
    fields = [p.pid, f"({p.comm})", "R", os.getppid(), p.pid, p.pid, 0, -1, 0x400000, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0,
              1, 0, ticks, vsize, vsize >> 12, U64, text.start if text else 0, text.end if text else 0, start_stack,
              0, 0, 0, p.signals.mask, _sigmask(1, p), _sigmask(2, p), 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0,
              mem.brk_start, *mem.arg_range, *mem.env_range, 0]
    return (" ".join(str(f) for f in fields) + "\n").encode()


def statm(p) -> bytes:
    pages = _vm_kb(p) >> 2
    text = sum(m.end - m.start for m in p.mem.mappings if m.prot & 4 and m.guest) >> 12
    data = sum(m.end - m.start for m in p.mem.mappings if m.prot & 2 and m.guest) >> 12
    return f"{pages} {pages} 0 {text} 0 {data} 0\n".encode()


def comm(p) -> bytes:
    return (p.comm + "\n").encode()


_CONTENT = {"maps": maps, "smaps": smaps, "status": status, "stat": stat_line, "statm": statm, "cmdline": cmdline,
            "environ": environ, "auxv": auxv, "comm": comm}
assert set(_CONTENT) == set(FILES)
