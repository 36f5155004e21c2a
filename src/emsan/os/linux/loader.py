"""Loads an ELF program (static, static-PIE or dynamic) and builds the Linux initial stack.

Dynamic programs are linked by the guest's own ld.so: emsan maps the program and its
interpreter and starts at the interpreter's entry, exactly as the kernel's binfmt_elf does.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from emsan.errors import EmsanError
from emsan.os.linux.cpu import hwcaps, set_start_registers
from emsan.os.linux.elf import ElfImage, open_elf
from emsan.os.linux.libsearch import check_libraries
from emsan.os.linux.memory import (PAGE, PIE_BASE, STACK_SIZE, STACK_TOP, MemoryMap, Module,
                                   page_down, page_up)
from emsan.os.linux.sigframe import frame_size

AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = 0, 3, 4, 5, 6, 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN, AT_MINSIGSTKSZ = 23, 25, 26, 31, 51


@dataclass
class LoadedProgram:
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


def map_image(mem: MemoryMap, image: ElfImage, bias: int) -> None:
    """Map PT_LOAD segments with their protections; pages shared by two segments get both."""
    pages: dict[int, int] = {}
    for s in image.segments:
        prot = (1 if s.flags & 4 else 0) | (2 if s.flags & 2 else 0) | (4 if s.flags & 1 else 0)
        for pg in range(page_down(bias + s.vaddr), page_up(bias + s.vaddr + s.memsz), PAGE):
            pages[pg] = pages.get(pg, 0) | prot
    run_start = None
    ordered = sorted(pages)
    for i, pg in enumerate(ordered):
        if run_start is None:
            run_start = pg
        nxt = ordered[i + 1] if i + 1 < len(ordered) else None
        if nxt != pg + PAGE or pages[nxt] != pages[pg]:
            mem.map(run_start, pg + PAGE, pages[pg], image.path)
            run_start = None
    for s in image.segments:
        if s.filesz:
            mem.machine.write(bias + s.vaddr, image.data[s.offset:s.offset + s.filesz])
    lo, hi = image.span
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
        interp_bias = mem.find_free(ihi - ilo) - ilo
        map_image(mem, interp, interp_bias)

    entry = (interp.entry + interp_bias) if interp else (image.entry + bias)
    stack_lo = STACK_TOP - STACK_SIZE
    mem.map(stack_lo, STACK_TOP, 3, "[stack]")
    mem.stack = (stack_lo, STACK_TOP)
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
    platform_p = push_bytes({"x86_64": b"x86_64\0", "arm64": b"aarch64\0"}[arch_name])
    sp &= ~15
    random_p = push_bytes(rand[:16])
    sp &= ~15
    auxv = [(AT_PHDR, image.phdr_vaddr() + bias), (AT_PHENT, image.phentsize), (AT_PHNUM, image.phnum),
            (AT_PAGESZ, PAGE), (AT_BASE, interp_base), (AT_FLAGS, 0), (AT_ENTRY, image.entry + bias),
            (AT_UID, os.getuid()), (AT_EUID, os.geteuid()), (AT_GID, os.getgid()), (AT_EGID, os.getegid()),
            (AT_PLATFORM, platform_p), (AT_HWCAP, caps[0]), (AT_HWCAP2, caps[1]), (AT_CLKTCK, 100),
            (AT_SECURE, 0), (AT_RANDOM, random_p), (AT_EXECFN, execfn_p)]
    # The signal stack a handler needs: what emsan's frame takes on x86-64 (glibc would otherwise
    # size it from CPUID's XSAVE area, which emsan's frames do not carry), the kernel's figure on
    # arm64 (larger than emsan's frame).
    auxv.append((AT_MINSIGSTKSZ, frame_size("x86_64") if arch_name == "x86_64" else 5120))
    auxv.append((AT_NULL, 0))
    words = [len(argv), *argv_p, 0, *env_p, 0]
    for k, v in auxv:
        words += [k, v]
    if len(words) % 2:
        words.append(0)          # keep the final sp 16-byte aligned
    sp -= 8 * len(words)
    sp &= ~15
    m.write(sp, struct.pack(f"<{len(words)}Q", *words))
    return sp
