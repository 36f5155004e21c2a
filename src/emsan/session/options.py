"""Everything a run can be told, independent of how the CLI spells it."""
from __future__ import annotations

from dataclasses import dataclass, field

from emsan.errors import EXIT_REPORT


@dataclass
class RunOptions:
    program: str
    args: list[str] = field(default_factory=list)
    env_set: dict[str, str] = field(default_factory=dict)
    env_unset: list[str] = field(default_factory=list)
    sysroot: str | None = None
    mode: str = "generic"
    timeout: float | None = None
    max_instructions: int | None = None
    seed: int | None = None
    trace_syscalls: bool = False
    json_path: str | None = None
    sarif_path: str | None = None     # --sarif: reports as a SARIF 2.1.0 log
    error_exitcode: int = EXIT_REPORT
    keep_going: bool = False          # --continue: the kernel's multi-shot
    quarantine_size: int = 256 << 20
    stats: bool = False
    shadow: str = "per-page"          # --shadow: per-page (shared zero/black pages) or full
    checks: str = "mmio"              # --checks: heap accesses checked through MMIO, or by a memory hook
    mmap_shadow: bool = True          # --no-mmap-shadow: leave the mmap area unshadowed (the ablation)
    stacks: str = "auto"              # --stacks: allocation/free stack collector
    no_depot: bool = False            # --no-depot: every trace stored separately
    kfence_objects: int = 255         # --kfence-objects: pool size (CONFIG_KFENCE_NUM_OBJECTS)
    sample_interval: int = 100        # --sample-interval: every Nth allocation goes to the pool
    sample_instructions: int = 0      # --sample-instructions: or one per N guest instructions
