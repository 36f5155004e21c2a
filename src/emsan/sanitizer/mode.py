"""The interface every sanitizer mode implements, and what a mode is attached with.

A mode is one file in sanitizer/modes/: a class with a name, its capabilities and the methods
of `Mode`, registered with @register. Whoever runs the guest (emsan's Linux session, or a
harness with its own engine) creates the runtime, describes the guest in a `Target`, and from
then on talks to the mode through this interface only; the capabilities say what to wire."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol

from emsan.lazyclass import dataclass
from emsan.cache import blake2b, sha1
from emsan.report.model import Task
from emsan.sanitizer.runtime import Error, Runtime

if TYPE_CHECKING:
    from emsan.arch import Arch
    from emsan.machine import Machine


@dataclass(frozen=True)
class Capabilities:
    arches: tuple[str, ...] = ("x86_64", "arm64")
    arch_note: str = ""                 # why, when not every architecture
    string_interceptors: bool = True    # libc string functions are intercepted (their IFUNCs resolved too)
    own_allocator: bool = True          # emsan's allocator serves every allocation (else it samples the guest's)
    shadow: bool = True                 # has a shadow: the mmap area is shadowed like the kernel's vmalloc space
    reports_mmap_faults: bool = True    # a fault on a hole of the mmap area is a vmalloc-out-of-bounds report
    default_stacks: str = "auto"        # what --stacks auto means ("auto": the cheapest complete collector)
    shadow_call_stack: bool = True      # --stacks scs may run beside it (else the frame-pointer walk)
    default_stack_checks: str = "full"  # what --stack-checks auto means where the scs collector runs (full:
                                        # return addresses and the stack ranges libc touches; ret: addresses)
    leaks: bool = True                  # owns every allocation (emsan's allocator): leaks can be found
    heap: bool = True                   # serves every allocation from its own heap (bounded by the guest's limits)


class ModeOptions(Protocol):
    """The options modes read (emsan.session.options.RunOptions has them)."""

    quarantine_size: int
    allocator_errors: str               # KASAN modes: "report" or "null"
    seed: int | None
    checks: str                         # generic mode: "inline", "mmio" or "hook"
    shadow: str                         # "per-page" or "full"
    kfence_objects: int
    sample_interval: int
    sample_instructions: int


class ModuleInfo(Protocol):
    """A loaded ELF module: its file, load bias and extent."""

    path: str
    base: int
    start: int
    end: int


@dataclass(frozen=True)
class Layout:
    """Where emsan's own memory goes in the guest's address space, clear of the guest's own
    (physical = virtual there, and below 2^44: arm64's physical range). The defaults sit above
    the Linux session's heap and below its mmap area; a harness may move them."""

    heap: int                           # emsan's allocator: [heap, heap + heap_size)
    heap_size: int
    mmio_view: int = 0x0640_0000_0000   # physical address of the heap's checking view (--checks mmio)
    kfence_pool: int = 0x0680_0000_0000  # the KFENCE pool, its spill arena right after it
    kfence_trap: int = 0x06C0_0000_0000  # the inaccessible twin guard and freed pages map to
    # the tag modes' checking views (256 copies of the heap's size, one per pointer tag; --checks
    # mmio), physical only: the engine's TLB fill alone maps there. None: at mmio_view.
    tag_views: int | None = None


@dataclass
class Target:
    """What a mode attaches to: the engine, the guest's architecture, emsan's runtime on that
    engine, the options, where emsan's memory goes, and what the guest's world can tell."""

    machine: Machine
    arch: Arch
    runtime: Runtime
    options: ModeOptions
    # map_memory(lo, hi, prot, name, host): make [lo, hi) guest memory, backed by host memory
    # emsan owns when host is not None
    map_memory: Callable[[int, int, int, str, "int | None"], None]
    layout: Layout
    # is_call_return(pc, ret): does ret follow a call instruction, in another function than pc?
    is_call_return: Callable[[int, int], bool] = lambda pc, ret: False
    # stack_of(addr): (lo, hi) of the stack mapping holding addr, or None
    stack_of: Callable[[int], "tuple[int, int] | None"] = lambda addr: None
    # symbolize(pc): the kernel's %pS of a code address
    symbolize: Callable[[int], str] = lambda pc: f"{pc:#x}"
    # debug_file(path): the separate debug file of a module (its stripped copies' names), or None
    debug_file: Callable[[str], "str | None"] = lambda path: None
    # words in the names of string-routine variants for instruction sets the CPU lacks
    # (__strlen_avx2: "avx2"): they never run, and are not stood in for
    absent_isa: frozenset[str] = frozenset()


class Mode(Protocol):
    """A sanitizer mode attached to one guest."""

    name: ClassVar[str]
    caps: ClassVar[Capabilities]
    # Errors are built into reports from inside the engine as they are queued: build() may find
    # one no bug (an MMIO piece of an unaligned load), and the access must not be made again.
    report_in_engine: bool

    def __init__(self, target: Target) -> None: ...

    def module_loaded(self, module: ModuleInfo) -> None:
        """Stand in for the functions of a newly loaded module that the mode serves."""

    def intercept(self, addr: int, fn: str) -> None:
        """Stand in for the function at addr (fn: its native name, MALLOC, STRLEN...)."""

    def check_range(self, addr: int, size: int, is_write: bool, pc: int) -> None:
        """A range the kernel reads or writes on the guest's behalf (a system call's buffer)."""

    def build(self, error: Error, task: Task):
        """The report of a queued error (an emsan.report.model report), or None when the error
        is no bug after all."""

    def report_key(self, report) -> tuple:
        """What makes a bug distinct: each is reported once."""

    def stats(self) -> dict[str, int]:
        """The counters --stats prints."""

    def reseed(self, seed: int) -> None:
        """New random choices (KFENCE's sampling, memory tags) from `seed`: each input of a
        fuzzing campaign gets its own (input_seed)."""

    def checkpoint(self) -> None:
        """The guest's registers and memory are saved now, to go back to after each input of a
        persistent fuzzing loop (Machine.snapshot: guest memory is copy-on-write from here on);
        save the mode's own state with them. EmsanError if the mode cannot go back."""

    def rollback(self) -> None:
        """Go back to the checkpoint's state (before the guest's memory does)."""


class ShadowMode(Mode, Protocol):
    """A mode with Capabilities.shadow."""

    def shadow_byte(self, addr: int) -> int | None: ...

    def shadow_mmap_area(self, lo: int, hi: int) -> None:
        """Shadow [lo, hi) as the kernel shadows vmalloc space: from what is mapped, lazily."""

    def mapping_changed(self, lo: int, hi: int, mapped: bool) -> None: ...


class HeapMode(Mode, Protocol):
    """A mode with Capabilities.heap."""

    def limit_heap(self, live_bytes: int | None) -> None:
        """The live bytes the guest's resource limits leave the heap (None: no limit)."""


def input_seed(seed: int | None, data: bytes) -> int:
    """The seed of one fuzzing input: the modes' random choices differ from input to input, and
    are the same whenever the input runs again under the same --seed (a KFENCE crash reproduces
    when triage runs it)."""
    return stream_seed(seed, "input:" + sha1(data).hexdigest())


def stream_seed(seed: int | None, stream: str) -> int:
    """A mode's own random stream from --seed (which also drives the guest's randomness), hashed
    so that consecutive seeds, a fleet's, give unrelated streams; random without --seed."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    return int.from_bytes(blake2b(b"%s:%d" % (stream.encode(), seed), digest_size=8).digest(), "little")
