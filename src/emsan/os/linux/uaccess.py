"""The kernel's uaccess for emsan's system calls: the one place through which they read and
write guest memory.

A guest hands the kernel pointers and sizes it may have made up. As in the kernel, a range is
checked before anything is allocated for it (access_ok: inside the user address space, no
wrap-around; then the guest's own mappings and their protections), transfers larger than a
chunk are made piece by piece, and a bad range is -EFAULT, never a Python exception.
"""
from __future__ import annotations

import errno
import struct
from typing import Iterator

from emsan.os.linux.memory import PROT_READ, PROT_WRITE

CHUNK = 1 << 20               # the most one transfer holds in host memory at a time
MAX_RW_COUNT = 0x7FFF_F000    # the kernel's cap on one read/write (INT_MAX & PAGE_MASK)
PATH_MAX = 4096
UIO_MAXIOV = 1024
SSIZE_MAX = (1 << 63) - 1
U64 = (1 << 64) - 1


def fault() -> OSError:
    return OSError(errno.EFAULT, "bad address")


class UserMemory:
    """copy_from_user / copy_to_user and friends over one guest's memory map."""

    def __init__(self, machine, mem):
        self.m = machine
        self.mem = mem
        self.untag = machine.addr_mask          # arm64: the top byte is a tag (tagged-address ABI)

    # --- checks ------------------------------------------------------------------------------
    def access_ok(self, addr: int, size: int) -> bool:
        """Could [addr, addr+size) be user memory at all (the kernel's access_ok)?"""
        a = addr & self.untag
        return 0 <= size and a + size <= self.mem.task_size and addr <= U64

    def readable(self, addr: int, size: int) -> int:
        """Bytes from addr, up to size, the guest could read (0 if it could not read the first)."""
        return self.mem.accessible(addr & self.untag, size, PROT_READ) if self.access_ok(addr, min(size, 1)) else 0

    def writable(self, addr: int, size: int) -> int:
        return self.mem.accessible(addr & self.untag, size, PROT_WRITE) if self.access_ok(addr, min(size, 1)) else 0

    # --- copies --------------------------------------------------------------------------------
    def read(self, addr: int, size: int) -> bytes:
        """All of [addr, addr+size), or EFAULT; size is bounded by the caller's structure (use
        chunks() for guest-chosen sizes)."""
        if size <= 0:
            return b""
        if size > CHUNK and not self.access_ok(addr, size):
            raise fault()
        if self.readable(addr, size) < size:
            raise fault()
        out = bytearray()
        for off in range(0, size, CHUNK):
            out += self.m.read((addr & self.untag) + off, min(CHUNK, size - off))
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        if not data:
            return
        if self.writable(addr, len(data)) < len(data):
            raise fault()
        self.m.write(addr & self.untag, data)

    def write_some(self, addr: int, data: bytes) -> int:
        """Write as much of data as the guest's mappings take from addr; the count (0: EFAULT)."""
        n = self.writable(addr, len(data))
        if n:
            self.m.write(addr & self.untag, data[:n])
        return n

    def chunks(self, addr: int, size: int) -> Iterator[bytes]:
        """[addr, addr+size) in pieces of at most CHUNK bytes, stopping at the first byte the
        guest cannot read (EFAULT if that is the first)."""
        if not self.access_ok(addr, size):
            raise fault()
        done = 0
        while done < size:
            n = self.readable(addr + done, min(CHUNK, size - done))
            if not n:
                if not done:
                    raise fault()
                return
            yield self.m.read(((addr + done) & self.untag), n)
            done += n

    def cstr(self, addr: int, limit: int = PATH_MAX, too_long: int = errno.ENAMETOOLONG) -> bytes:
        """A NUL-terminated string (strncpy_from_user); `too_long` if no NUL within limit bytes."""
        out = bytearray()
        while len(out) < limit:
            chunk_end = ((addr & self.untag) | 0xFFF) + 1
            n = self.readable(addr, min(chunk_end - (addr & self.untag), limit - len(out)))
            if not n:
                raise fault()
            chunk = self.m.read(addr & self.untag, n)
            nul = chunk.find(b"\0")
            if nul >= 0:
                return bytes(out + chunk[:nul])
            out += chunk
            addr += n
        raise OSError(too_long, "string too long")

    def path(self, addr: int) -> str:
        """A path argument: EFAULT, ENAMETOOLONG (PATH_MAX with its NUL) or the guest's string."""
        return self.cstr(addr, PATH_MAX).decode(errors="surrogateescape")

    # --- fixed-size values ---------------------------------------------------------------------
    def unpack(self, fmt: str, addr: int) -> tuple:
        return struct.unpack(fmt, self.read(addr, struct.calcsize(fmt)))

    def pack(self, addr: int, fmt: str, *values) -> None:
        self.write(addr, struct.pack(fmt, *values))

    def u32(self, addr: int) -> int:
        return self.unpack("<I", addr)[0]

    def u64(self, addr: int) -> int:
        return self.unpack("<Q", addr)[0]

    def put_u32(self, addr: int, v: int) -> None:
        self.pack(addr, "<I", v & 0xFFFFFFFF)

    def put_u64(self, addr: int, v: int) -> None:
        self.pack(addr, "<Q", v & U64)

    # --- vectors ---------------------------------------------------------------------------------
    def iovecs(self, iov: int, count: int) -> list[tuple[int, int]]:
        """An iovec array (import_iovec): EINVAL for too many entries or a negative length; the
        total is capped at MAX_RW_COUNT as the kernel does (a segment is then read or written up
        to its first inaccessible byte)."""
        if count > UIO_MAXIOV:
            raise OSError(errno.EINVAL, "too many iovecs")
        if not count:
            return []
        raw = self.read(iov, 16 * count)
        out, total = [], 0
        for i in range(count):
            base, length = struct.unpack_from("<QQ", raw, 16 * i)
            if length > SSIZE_MAX:
                raise OSError(errno.EINVAL, "negative iovec length")
            length = min(length, MAX_RW_COUNT - total)
            total += length
            out.append((base, length))
        return out
