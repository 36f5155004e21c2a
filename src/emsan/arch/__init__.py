"""Per-architecture knowledge: registers, calling convention, frame layout, decoding."""
from __future__ import annotations

from emsan.arch.base import Arch
from emsan.arch.arm64 import ARM64
from emsan.arch.x86_64 import X86_64

ARCHES: dict[str, Arch] = {"x86_64": X86_64(), "arm64": ARM64()}
BY_ELF_MACHINE: dict[int, Arch] = {a.elf_machine: a for a in ARCHES.values()}

__all__ = ["Arch", "ARCHES", "BY_ELF_MACHINE"]
