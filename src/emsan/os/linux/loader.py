"""Loads an ELF program (static, static-PIE or dynamic) and builds the Linux initial stack.

Dynamic programs are linked by the guest's own ld.so: emsan maps the program and its
interpreter and starts at the interpreter's entry, exactly as the kernel's binfmt_elf does.
"""
from __future__ import annotations

import os
import struct

from emsan.errors import EmsanError
from emsan.os.linux.cpu import hwcaps, set_start_registers
from emsan.os.linux.elf import ElfImage, open_elf
from emsan.os.linux.libsearch import check_libraries
from emsan.os.linux.memory import (EMSAN_BAND, MMAP_MIN_ADDR, PAGE, PIE_BASE, STACK_SIZE, STACK_TOP, MemoryMap,
                                   Module, page_down, page_up)
from emsan.lazyclass import dataclass
from emsan.os.linux.sigframe import min_signal_stack

AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = 0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN, AT_MINSIGSTKSZ = 23, 25, 26, 31, 51


@dataclass
class LoadedProgram:
    """A program and its interpreter in guest memory, and its initial stack."""

    image: ElfImage
    bias: int
    entry: int               # where execution starts (interpreter entry for dynamic programs)
    interp: ElfImage | None
    interp_bias: int
    sp: int
    hwcap: int = 0           # AT_HWCAP and AT_HWCAP2 as the process was told them
    hwcap2: int = 0


def resolve_guest_path(path: str, sysroot: str | None) -> str:
    """Host path of a guest path: under --sysroot first (like qemu-user's -L), then the host's."""
    if sysroot and path.startswith("/"):
        cand = os.path.join(sysroot, path.lstrip("/"))
        if os.path.lexists(cand):
            return cand
    return path


def segment_pages(image: ElfImage, bias: int) -> list[tuple[int, int, int]]:
    """(start, end, prot) page runs of the PT_LOAD segments; a page two segments share gets both
    protections. A sweep over the segments' edges: the cost does not grow with their sizes."""
    edges: list[tuple[int, int, int]] = []       # (address, +1/-1, prot)
    for s in image.segments:
        prot = (1 if s.flags & 4 else 0) | (2 if s.flags & 2 else 0) | (4 if s.flags & 1 else 0)
        edges.append((page_down(bias + s.vaddr), 1, prot))
        edges.append((page_up(bias + s.vaddr + s.memsz), -1, prot))
    edges.sort()
    counts = {1: 0, 2: 0, 4: 0}
    covering = 0                                  # segments over this address (PROT_NONE ones too)
    runs: list[tuple[int, int, int]] = []
    for i, (addr, step, prot) in enumerate(edges):
        covering += step
        for bit in counts:
            if prot & bit:
                counts[bit] += step
        nxt = edges[i + 1][0] if i + 1 < len(edges) else addr
        if nxt > addr and covering:
            cur = sum(bit for bit, n in counts.items() if n)
            if runs and runs[-1][1] == addr and runs[-1][2] == cur:
                runs[-1] = (runs[-1][0], nxt, cur)
            else:
                runs.append((addr, nxt, cur))
    return runs


def map_image(mem: MemoryMap, image: ElfImage, bias: int) -> None:
    """Map PT_LOAD segments with their protections (as binfmt_elf does), or refuse the file."""
    lo, hi = image.span
    if mem.usable(lo + bias, hi + bias) or not mem.is_free(lo + bias, hi + bias):
        raise EmsanError(f"{image.path}: segments at [{lo + bias:#x}, {hi + bias:#x}) lie outside the addresses "
                         f"a program may use (from {MMAP_MIN_ADDR:#x} to {mem.task_size:#x}, not emsan's "
                         f"[{EMSAN_BAND[0]:#x}, {EMSAN_BAND[1]:#x}) nor the stack)")
    for start, end, prot in segment_pages(image, bias):
        mem.guest_map(start, end, prot, image.path)
    for s in image.segments:
        if s.filesz:
            mem.machine.write(bias + s.vaddr, image.data[s.offset:s.offset + s.filesz])
    mem.register_module(Module(image.path, bias, lo + bias, hi + bias))


def load_program(mem: MemoryMap, arch_name: str, path: str, argv: list[str], env: list[str],
                 sysroot: str | None, rand: bytes) -> LoadedProgram:
    from emsan.arch import BY_ELF_MACHINE

    image = open_elf(path)
    arch = BY_ELF_MACHINE[image.machine]
    if arch.name != arch_name:
        raise EmsanError(f"{path}: architecture mismatch ({arch.name}, expected {arch_name})")
    caps = hwcaps(mem.machine, arch_name)
    set_start_registers(mem.machine, arch_name)
    bias = PIE_BASE if image.is_pie else 0
    stack_lo = STACK_TOP - STACK_SIZE
    mem.guest_map(stack_lo, STACK_TOP, 3, "[stack]")
    mem.stack = (stack_lo, STACK_TOP)
    map_image(mem, image, bias)
    lo, hi = image.span
    mem.brk_start = mem.brk_end = hi + bias

    interp, interp_bias = None, 0
    if image.interp:
        ipath = resolve_guest_path(image.interp, sysroot)
        if not os.path.exists(ipath):
            hint = "" if sysroot or arch_name == "x86_64" else " (give --sysroot DIR with the AArch64 libraries)"
            raise EmsanError(f"{path}: interpreter {image.interp} not found{hint}")
        interp = open_elf(ipath, what="interpreter", need_exec=False)
        if interp.machine != image.machine:
            raise EmsanError(f"{ipath}: interpreter is for another architecture")
        check_libraries(image, path, arch_name, env, interp, lambda gpath: resolve_guest_path(gpath, sysroot))
        ilo, ihi = interp.span
        try:
            interp_bias = mem.find_free(ihi - ilo) - ilo
        except MemoryError:
            raise EmsanError(f"{ipath}: interpreter segments span {ihi - ilo:#x} bytes: no room for them") from None
        map_image(mem, interp, interp_bias)

    entry = ((interp.entry + interp_bias) if interp else (image.entry + bias)) & 0xFFFF_FFFF_FFFF_FFFF
    sp = build_stack(mem, arch_name, image, bias, interp_bias if interp else 0, argv, env, path, rand, caps)
    return LoadedProgram(image, bias, entry, interp, interp_bias, sp, *caps)


def build_stack(mem: MemoryMap, arch_name: str, image: ElfImage, bias: int, interp_base: int,
                argv: list[str], env: list[str], execfn: str, rand: bytes, caps: tuple[int, int]) -> int:
    m = mem.machine
    sp = STACK_TOP

    def push_bytes(b: bytes) -> int:
        nonlocal sp
        sp -= len(b)
        m.write(sp, b)
        return sp

    execfn_p = push_bytes(os.fsencode(execfn) + b"\0")
    env_p = [push_bytes(os.fsencode(e) + b"\0") for e in reversed(env)][::-1]
    argv_p = [push_bytes(os.fsencode(a) + b"\0") for a in reversed(argv)][::-1]
    # The strings lie back to back: argv's, then the environment's, then execfn.
    args_end = env_p[0] if env_p else execfn_p
    mem.arg_range = (argv_p[0] if argv_p else args_end, args_end)
    mem.env_range = (args_end, execfn_p)
    platform_p = push_bytes({"x86_64": b"x86_64\0", "arm64": b"aarch64\0"}[arch_name])
    sp &= ~15
    random_p = push_bytes(rand[:16])
    sp &= ~15
    auxv = [(AT_PHDR, image.phdr_vaddr() + bias), (AT_PHENT, image.phentsize), (AT_PHNUM, image.phnum),
            (AT_PAGESZ, PAGE), (AT_BASE, interp_base), (AT_FLAGS, 0), (AT_ENTRY, image.entry + bias),
            (AT_UID, os.getuid()), (AT_EUID, os.geteuid()), (AT_GID, os.getgid()), (AT_EGID, os.getegid()),
            (AT_PLATFORM, platform_p), (AT_HWCAP, caps[0]), (AT_HWCAP2, caps[1]), (AT_CLKTCK, 100),
            (AT_SECURE, 0), (AT_RANDOM, random_p), (AT_EXECFN, execfn_p)]
    auxv.append((AT_MINSIGSTKSZ, min_signal_stack(arch_name)))
    auxv.append((AT_NULL, 0))
    auxv = [(k, v & 0xFFFF_FFFF_FFFF_FFFF) for k, v in auxv]      # a file's addresses wrap as the kernel's do
    mem.auxv = b"".join(struct.pack("<QQ", k, v) for k, v in auxv)
    words = [len(argv), *argv_p, 0, *env_p, 0]
    for k, v in auxv:
        words += [k, v]
    if len(words) % 2:
        words.append(0)          # keep the final sp 16-byte aligned
    sp -= 8 * len(words)
    sp &= ~15
    m.write(sp, struct.pack(f"<{len(words)}Q", *words))
    return sp
