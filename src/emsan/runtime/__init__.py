"""The guest runtime of compiler-assisted mode (kasan_runtime.h) and the compiler flags that use it.

A program built with `clang $(emsan cflags) ...` checks its own accesses against a shadow at
EMSAN_SHADOW_OFFSET, with the kernel's generic KASAN encoding; emsan maps that shadow into the
guest and is the runtime the instrumentation calls (see src/emsan/native/compiler.c)."""
from __future__ import annotations

import os
from pathlib import Path

HEADER = Path(__file__).resolve().parent / "kasan_runtime.h"
SHADOW_OFFSET = 0x1000_0000_0000          # EMSAN_SHADOW_OFFSET: shadow(addr) = (addr >> 3) + this
REPORT_SYMBOL = "__emsan_kasan_report"    # defined by the runtime: its presence selects the mode
GLOBALS_SYMBOL = "__asan_register_globals"
NO_RETURN_SYMBOL = "__asan_handle_no_return"
TARGETS = {"x86_64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}


def host_arch() -> str:
    # os.uname() is what platform.machine() reads, without importing platform at every start-up
    return "arm64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"


def cflags(arch: str | None = None, outline: bool = False) -> list[str]:
    """clang flags for a guest emsan runs in compiler-assisted mode (the kernel's CFLAGS_KASAN
    for clang, with emsan's shadow offset and runtime)."""
    arch = arch or host_arch()
    flags = [] if arch == host_arch() else [f"--target={TARGETS[arch]}"]
    flags += ["-fsanitize=kernel-address",
              "-mllvm", f"-asan-mapping-offset={SHADOW_OFFSET:#x}",
              "-mllvm", "-asan-stack=1",
              "-mllvm", "-asan-globals=1",
              "-mllvm", "-asan-instrument-dynamic-allocas=1",
              "-fno-omit-frame-pointer"]          # allocation and free stacks by the frame-pointer walk
    if outline:
        flags += ["-mllvm", "-asan-instrumentation-with-call-threshold=0"]
    flags += ["-include", str(HEADER)]
    return flags
