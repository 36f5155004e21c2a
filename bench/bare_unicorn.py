#!/usr/bin/env python3
"""Bare Unicorn: the baseline emsan's `--mode none` is compared with.

A minimal loader for *static, non-PIE* Linux x86-64 and arm64 programs that uses only
unicorn and pyelftools (no emsan code at all):

* maps the PT_LOAD segments with their own protections (like the kernel, and like emsan),
* builds the Linux initial stack: argc, argv, envp, auxv with AT_PHDR/AT_PHENT/AT_PHNUM/
  AT_PAGESZ/AT_RANDOM (static glibc needs them to find its TLS segment and stack-protector
  canary) and the rest of what the kernel passes,
* answers the few system calls static glibc makes, through UC_HOOK_INSN(syscall) on x86-64 and
  UC_HOOK_INTR intno 2 (svc) on arm64.

It uses the binding's ordinary API (`uc.reg_read`, `uc.mem_write`...), as a quick script would.
Like emsan it keeps every address below 2**44 (Unicorn's arm64 CPU faults above its 44-bit
physical range with the MMU off), selects the "max" arm64 CPU model and passes the same
AT_HWCAP, so glibc picks the same string routines and the instruction streams are the same.

Usage: python3 bench/bare_unicorn.py PROGRAM [ARGS...]     (exit status = the guest's)
"""
from __future__ import annotations

import errno
import os
import struct
import sys

from elftools.elf.elffile import ELFFile
from unicorn import (UC_ARCH_ARM64, UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_64, UC_MODE_ARM,
                     UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError)
from unicorn import arm64_const as A
from unicorn import x86_const as X

PAGE = 0x1000
STACK_TOP = 0x0FFF_FFFF_F000          # everything below 2**44, as emsan does
STACK_SIZE = 8 << 20
MMAP_TOP = 0x0FFF_0000_0000
UNTIL = 0xFFFF_FFFF_FFFF_FFF0         # an address no guest reaches: run until exit_group
MASK64 = (1 << 64) - 1
RW = UC_PROT_READ | UC_PROT_WRITE

# name -> number, only the calls static glibc start-up, stdio and malloc make
NUMBERS = {
    "x86_64": dict(read=0, write=1, close=3, fstat=5, mmap=9, mprotect=10, munmap=11, brk=12,
                   rt_sigaction=13, rt_sigprocmask=14, ioctl=16, writev=20, mremap=25, madvise=28,
                   getpid=39, exit=60, uname=63, readlink=89, sysinfo=99, arch_prctl=158, gettid=186,
                   set_tid_address=218, clock_gettime=228, exit_group=231, tgkill=234, newfstatat=262,
                   set_robust_list=273, prlimit64=302, getrandom=318, rseq=334),
    "arm64": dict(ioctl=29, close=57, read=63, write=64, writev=66, readlinkat=78, newfstatat=79,
                  fstat=80, exit=93, exit_group=94, set_tid_address=96, set_robust_list=99,
                  clock_gettime=113, tgkill=131, rt_sigaction=134, rt_sigprocmask=135, uname=160,
                  getpid=172, gettid=178, sysinfo=179, brk=214, munmap=215, mremap=216, mmap=222,
                  mprotect=226, madvise=233, prlimit64=261, getrandom=278, rseq=293),
}
AT = dict(NULL=0, PHDR=3, PHENT=4, PHNUM=5, PAGESZ=6, BASE=7, FLAGS=8, ENTRY=9, UID=11, EUID=12, GID=13,
          EGID=14, PLATFORM=15, HWCAP=16, CLKTCK=17, SECURE=23, RANDOM=25, HWCAP2=26, EXECFN=31,
          MINSIGSTKSZ=51)


def page_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


class Bare:
    def __init__(self, path: str, argv: list[str], env: list[str]):
        with open(path, "rb") as f:
            elf = ELFFile(f)
            machine = elf["e_machine"]
            if elf["e_type"] != "ET_EXEC":
                raise SystemExit(f"bare_unicorn: {path}: only static non-PIE executables are supported")
            segs = [(s["p_vaddr"], s["p_memsz"], s["p_offset"], s.data()[:s["p_filesz"]], s["p_flags"])
                    for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            if any(s["p_type"] == "PT_INTERP" for s in elf.iter_segments()):
                raise SystemExit(f"bare_unicorn: {path}: dynamically linked programs are not supported")
            hdr = elf.header
        self.arch = {"EM_X86_64": "x86_64", "EM_AARCH64": "arm64"}[machine]
        if self.arch == "x86_64":
            self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        else:
            self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
            self.uc.ctl_set_cpu_model(A.UC_CPU_ARM64_MAX)
        self.nr_name = {v: k for k, v in NUMBERS[self.arch].items()}
        self.status: int | None = None
        self.warned: set[str] = set()

        # PT_LOADs with the ELF's protections (a page shared by two segments gets both), each run
        # of pages with equal protection as one region. Mapping everything RWX instead, as a quick
        # prototype might, made the guest about 5-10 % slower (see bench/README.md).
        prot_of: dict[int, int] = {}
        for va, memsz, _, _, flags in segs:
            prot = (UC_PROT_READ if flags & 4 else 0) | (UC_PROT_WRITE if flags & 2 else 0) \
                | (UC_PROT_EXEC if flags & 1 else 0)
            for pg in range(va & ~(PAGE - 1), page_up(va + memsz), PAGE):
                prot_of[pg] = prot_of.get(pg, 0) | prot
        pages = sorted(prot_of)
        start = pages[0]
        for i, pg in enumerate(pages):
            nxt = pages[i + 1] if i + 1 < len(pages) else None
            if nxt != pg + PAGE or prot_of[nxt] != prot_of[pg]:
                self.uc.mem_map(start, pg + PAGE - start, prot_of[pg])
                start = nxt
        phdr = 0
        for va, _memsz, off, data, _flags in segs:
            self.uc.mem_write(va, data)
            if off <= hdr["e_phoff"] < off + len(data):
                phdr = va + hdr["e_phoff"] - off
        self.brk = self.brk_mapped = page_up(max(va + memsz for va, memsz, _, _, _ in segs))
        self.mmap_next = MMAP_TOP
        self.entry = hdr["e_entry"]

        # Initial stack: strings at the top, then [argc, argv.., 0, envp.., 0, auxv.., AT_NULL].
        self.uc.mem_map(STACK_TOP - STACK_SIZE, STACK_SIZE, RW)
        sp = STACK_TOP

        def push(b: bytes) -> int:
            nonlocal sp
            sp -= len(b)
            self.uc.mem_write(sp, b)
            return sp

        execfn = push(os.fsencode(path) + b"\0")
        env_p = [push(os.fsencode(e) + b"\0") for e in reversed(env)][::-1]
        argv_p = [push(os.fsencode(a) + b"\0") for a in reversed(argv)][::-1]
        platform = push(b"x86_64\0" if self.arch == "x86_64" else b"aarch64\0")
        sp &= ~15
        rand = push(os.urandom(16))
        sp &= ~15
        auxv = [(AT["PHDR"], phdr), (AT["PHENT"], hdr["e_phentsize"]), (AT["PHNUM"], hdr["e_phnum"]),
                (AT["PAGESZ"], PAGE), (AT["BASE"], 0), (AT["FLAGS"], 0), (AT["ENTRY"], self.entry),
                (AT["UID"], os.getuid()), (AT["EUID"], os.geteuid()), (AT["GID"], os.getgid()),
                (AT["EGID"], os.getegid()), (AT["PLATFORM"], platform),
                # arm64: FP|ASIMD only, as emsan passes, so glibc's IFUNCs pick the same routines
                (AT["HWCAP"], 0 if self.arch == "x86_64" else 0x3), (AT["HWCAP2"], 0),
                (AT["CLKTCK"], 100), (AT["SECURE"], 0), (AT["RANDOM"], rand), (AT["EXECFN"], execfn)]
        if self.arch == "arm64":
            auxv.append((AT["MINSIGSTKSZ"], 5120))
        auxv.append((AT["NULL"], 0))
        words = [len(argv), *argv_p, 0, *env_p, 0] + [w for kv in auxv for w in kv]
        if len(words) % 2:
            words.append(0)
        sp = (sp - 8 * len(words)) & ~15
        self.uc.mem_write(sp, struct.pack(f"<{len(words)}Q", *words))

        if self.arch == "x86_64":
            self.uc.reg_write(X.UC_X86_REG_RSP, sp)
            self.nr_reg, self.ret_reg = X.UC_X86_REG_RAX, X.UC_X86_REG_RAX
            self.arg_regs = (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX,
                             X.UC_X86_REG_R10, X.UC_X86_REG_R8, X.UC_X86_REG_R9)
            # Unicorn adds the length of `syscall` (2) to RIP after this hook returns; a handler
            # that redirected the PC would have to subtract it first. None here does.
            self.uc.hook_add(UC_HOOK_INSN, lambda uc, ud: self.syscall(), None, 1, 0, X.UC_X86_INS_SYSCALL)
        else:
            self.uc.reg_write(A.UC_ARM64_REG_SP, sp)
            self.nr_reg, self.ret_reg = A.UC_ARM64_REG_X8, A.UC_ARM64_REG_X0
            self.arg_regs = tuple(A.UC_ARM64_REG_X0 + i for i in range(6))
            self.uc.hook_add(UC_HOOK_INTR, self.arm64_intr)

    # --- running ------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.uc.emu_start(self.entry, UNTIL)
        except UcError as e:
            pc = self.uc.reg_read(X.UC_X86_REG_RIP if self.arch == "x86_64" else A.UC_ARM64_REG_PC)
            print(f"bare_unicorn: guest fault at {pc:#x}: {e}", file=sys.stderr)
            return 139
        sys.stdout.flush()
        return 0 if self.status is None else self.status

    def arm64_intr(self, uc, intno: int, ud) -> None:
        if intno == 2:
            self.syscall()
            return
        pc = uc.reg_read(A.UC_ARM64_REG_PC)
        print(f"bare_unicorn: guest exception {intno} at {pc:#x}", file=sys.stderr)
        self.status = 139
        uc.emu_stop()

    # --- system calls -------------------------------------------------------------------------
    def syscall(self) -> None:
        uc = self.uc
        nr = uc.reg_read(self.nr_reg)
        args = [uc.reg_read(r) for r in self.arg_regs]
        name = self.nr_name.get(nr)
        handler = getattr(self, "sys_" + name, None) if name else None
        if handler is None:
            if nr not in self.warned:
                self.warned.add(nr)
                print(f"bare_unicorn: syscall {name or nr} not supported: -ENOSYS", file=sys.stderr)
            ret = -errno.ENOSYS
        else:
            try:
                ret = handler(*args)
            except OSError as e:
                ret = -(e.errno or errno.EIO)
        if ret is not None:
            uc.reg_write(self.ret_reg, ret & MASK64)

    def sys_exit_group(self, status, *_):
        self.status = status & 0xFF
        self.uc.emu_stop()

    sys_exit = sys_exit_group

    def sys_tgkill(self, pid, tid, sig, *_):
        self.status = 128 + sig
        self.uc.emu_stop()
        return 0

    def sys_write(self, fd, buf, count, *_):
        return os.write(fd, self.uc.mem_read(buf, count)) if count else 0

    def sys_writev(self, fd, iov, cnt, *_):
        data = b"".join(bytes(self.uc.mem_read(base, ln)) for base, ln in
                        (struct.unpack_from("<QQ", self.uc.mem_read(iov + 16 * i, 16)) for i in range(cnt)))
        return os.write(fd, data) if data else 0

    def sys_read(self, fd, buf, count, *_):
        data = os.read(fd, count)
        self.uc.mem_write(buf, data)
        return len(data)

    def sys_close(self, *_):
        return 0

    def _stat(self, fd: int, buf: int) -> int:
        st = os.fstat(fd)
        if self.arch == "x86_64":   # struct stat: dev ino nlink | mode uid gid pad | rdev size blksize blocks
            raw = struct.pack("<QQQIIIIQqqq", st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid,
                              st.st_gid, 0, st.st_rdev, st.st_size, st.st_blksize, st.st_blocks)
            raw = raw.ljust(144, b"\0")
        else:                       # asm-generic struct stat
            raw = struct.pack("<QQIIIIQQqiiq", st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid,
                              st.st_gid, st.st_rdev, 0, st.st_size, st.st_blksize, 0, st.st_blocks)
            raw = raw.ljust(128, b"\0")
        self.uc.mem_write(buf, raw)
        return 0

    def sys_fstat(self, fd, buf, *_):
        return self._stat(fd, buf)

    def sys_newfstatat(self, dirfd, path, buf, flags, *_):
        if flags & 0x1000 and self.uc.mem_read(path, 1) == b"\0":      # AT_EMPTY_PATH: fstat(dirfd)
            return self._stat(dirfd, buf)
        return -errno.ENOENT

    def sys_brk(self, addr, *_):
        if addr > self.brk:
            if page_up(addr) > self.brk_mapped:
                self.uc.mem_map(self.brk_mapped, page_up(addr) - self.brk_mapped, RW)
                self.brk_mapped = page_up(addr)
            self.brk = addr
        return self.brk

    def sys_mmap(self, addr, length, prot, flags, fd, off):
        if not flags & 0x20:                                     # MAP_ANONYMOUS only
            return -errno.ENODEV
        size = page_up(length)
        if flags & 0x10:                                         # MAP_FIXED
            start = addr
            try:
                self.uc.mem_unmap(start, size)
            except UcError:
                pass
        else:
            self.mmap_next -= size
            start = self.mmap_next
        self.uc.mem_map(start, size, prot & 7)
        return start

    def sys_munmap(self, addr, length, *_):
        try:
            self.uc.mem_unmap(addr, page_up(length))
        except UcError:
            pass
        return 0

    def sys_mremap(self, *_):
        return -errno.ENOMEM                 # glibc falls back to malloc + copy + free

    def sys_arch_prctl(self, code, addr, *_):
        if code == 0x1002:                    # ARCH_SET_FS
            self.uc.reg_write(X.UC_X86_REG_FS_BASE, addr)
            return 0
        return -errno.EINVAL

    def sys_uname(self, buf, *_):
        fields = [b"Linux", b"bare", b"6.1.0", b"#1 SMP", b"x86_64" if self.arch == "x86_64" else b"aarch64", b""]
        self.uc.mem_write(buf, b"".join(f.ljust(65, b"\0") for f in fields))
        return 0

    def sys_prlimit64(self, pid, resource, new, old, *_):
        if old:
            self.uc.mem_write(old, struct.pack("<QQ", 8 << 20 if resource == 3 else MASK64, MASK64))
        return 0

    def sys_getrandom(self, buf, count, *_):
        self.uc.mem_write(buf, os.urandom(count))
        return count

    def sys_clock_gettime(self, clk, ts, *_):
        import time
        t = time.clock_gettime_ns(clk)
        self.uc.mem_write(ts, struct.pack("<qq", t // 10**9, t % 10**9))
        return 0

    def sys_sysinfo(self, buf, *_):
        self.uc.mem_write(buf, struct.pack("<q3Q", 0, 0, 0, 0).ljust(32, b"\0")
                          + struct.pack("<QQ", 8 << 30, 4 << 30).ljust(112 - 32, b"\0"))
        self.uc.mem_write(buf + 104, struct.pack("<I", 1))        # mem_unit
        return 0

    def sys_getpid(self, *_):
        return os.getpid()

    sys_gettid = sys_set_tid_address = sys_getpid

    def sys_readlink(self, *_):
        return -errno.ENOENT

    sys_readlinkat = sys_readlink

    def sys_ioctl(self, *_):
        return -errno.ENOTTY

    def sys_rseq(self, *_):
        return -errno.ENOSYS

    def sys_ok(self, *_):
        return 0

    sys_mprotect = sys_madvise = sys_rt_sigaction = sys_rt_sigprocmask = sys_set_robust_list = sys_ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    bare = Bare(argv[0], argv, [f"{k}={v}" for k, v in os.environ.items()])
    return bare.run()


if __name__ == "__main__":
    raise SystemExit(main())
