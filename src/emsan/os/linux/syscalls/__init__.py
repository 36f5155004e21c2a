"""One implementation of each Linux system call, shared by every architecture.

Handlers take the process and the raw argument registers and return the value for the
return register; an OSError becomes -errno. The per-arch numbering tables only name calls.
"""
from __future__ import annotations

from typing import Callable

from emsan.os.linux.syscalls import numbers_arm64, numbers_x86_64

NAMES: dict[str, dict[int, str]] = {"x86_64": numbers_x86_64.NAMES, "arm64": numbers_arm64.NAMES}
HANDLERS: dict[str, Callable[..., int]] = {}
NO_RETURN = object()    # a handler that already set every register (sigreturn, exit)


def syscall(*names: str):
    def register(fn: Callable[..., int]) -> Callable[..., int]:
        for n in names:
            HANDLERS[n] = fn
        return fn
    return register


def load_all() -> None:
    from emsan.os.linux.syscalls import events, fs, mm, net, proc, signal  # noqa: F401  (they register)
