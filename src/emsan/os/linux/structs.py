"""Kernel ABI structures whose layout differs between x86-64 and arm64 (or is awkward to pack)."""
from __future__ import annotations

import os
import struct

STATX_BASIC_STATS = 0x7FF


def pack_stat(arch: str, st: os.stat_result) -> bytes:
    times = (int(st.st_atime), st.st_atime_ns % 10**9, int(st.st_mtime), st.st_mtime_ns % 10**9,
             int(st.st_ctime), st.st_ctime_ns % 10**9)
    if arch == "x86_64":
        return struct.pack("<QQQIIIIQqqq6Q3q", st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid,
                           st.st_gid, 0, st.st_rdev, st.st_size, st.st_blksize, st.st_blocks, *times, 0, 0, 0)
    return struct.pack("<QQIIIIQQqiiqqQqQqQII", st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid,
                       st.st_gid, st.st_rdev, 0, st.st_size, st.st_blksize, 0, st.st_blocks,
                       times[0], times[1], times[2], times[3], times[4], times[5], 0, 0)


def pack_statx(st: os.stat_result) -> bytes:
    def ts(sec_f: float, ns: int) -> tuple[int, int, int]:
        return ns // 10**9, ns % 10**9, 0

    head = struct.pack("<IIQIIIHHQQQQ", STATX_BASIC_STATS, st.st_blksize, 0, st.st_nlink, st.st_uid, st.st_gid,
                       st.st_mode, 0, st.st_ino, st.st_size, st.st_blocks, 0)
    times = b"".join(struct.pack("<qIi", *ts(0, ns)) for ns in
                     (st.st_atime_ns, 0, st.st_ctime_ns, st.st_mtime_ns))
    devs = struct.pack("<IIII", os.major(st.st_rdev), os.minor(st.st_rdev), os.major(st.st_dev), os.minor(st.st_dev))
    out = head + times + devs
    return out + bytes(256 - len(out))


def pack_timespec(ns: int) -> bytes:
    return struct.pack("<qq", ns // 10**9, ns % 10**9)


def pack_timeval(ns: int) -> bytes:
    return struct.pack("<qq", ns // 10**9, (ns % 10**9) // 1000)


def pack_utsname(machine: str) -> bytes:
    u = os.uname()
    fields = (u.sysname, u.nodename, u.release, u.version, machine, "(none)")
    return b"".join(f.encode()[:64].ljust(65, b"\0") for f in fields)


def pack_sysinfo() -> bytes:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1].isdigit()}
    with open("/proc/uptime") as f:
        uptime = int(float(f.read().split()[0]))
    loads = [int(x * 65536) for x in os.getloadavg()]
    body = struct.pack("<q3Q6QHH4xQQI", uptime, *loads, info.get("MemTotal", 0), info.get("MemFree", 0),
                       info.get("Shmem", 0), info.get("Buffers", 0), info.get("SwapTotal", 0),
                       info.get("SwapFree", 0), 1, 0, 0, 0, 1)
    return body + bytes(112 - len(body))


# open(2) flags whose values differ between the x86-64 and the generic (arm64) ABI.
_GENERIC_OPEN = {0o40000: "O_DIRECTORY", 0o100000: "O_NOFOLLOW", 0o200000: "O_DIRECT", 0o400000: "O_LARGEFILE"}
_X86_OPEN = {0o200000: "O_DIRECTORY", 0o400000: "O_NOFOLLOW", 0o40000: "O_DIRECT", 0o100000: "O_LARGEFILE"}


def open_flags_to_host(arch: str, flags: int) -> int:
    table = _X86_OPEN if arch == "x86_64" else _GENERIC_OPEN
    out = flags & ~sum(table)
    for bit, name in table.items():
        if flags & bit:
            out |= getattr(os, name, 0)
    return out


def open_flags_from_host(arch: str, flags: int) -> int:
    table = _X86_OPEN if arch == "x86_64" else _GENERIC_OPEN
    host_bits = {getattr(os, name, 0): bit for bit, name in table.items()}
    out = flags & ~sum(b for b in host_bits if b)
    for hb, gb in host_bits.items():
        if hb and flags & hb:
            out |= gb
    return out


def pack_rusage(ru) -> bytes:
    """struct rusage from a resource.struct_rusage."""
    def tv(t: float) -> bytes:
        return struct.pack("<qq", int(t), int((t % 1) * 1e6))
    return tv(ru.ru_utime) + tv(ru.ru_stime) + struct.pack(
        "<14q", ru.ru_maxrss, ru.ru_ixrss, ru.ru_idrss, ru.ru_isrss, ru.ru_minflt, ru.ru_majflt, ru.ru_nswap,
        ru.ru_inblock, ru.ru_oublock, ru.ru_msgsnd, ru.ru_msgrcv, ru.ru_nsignals, ru.ru_nvcsw, ru.ru_nivcsw)
