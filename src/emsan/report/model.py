"""Reports as data: what a mode found (bug type, access, call stacks as addresses, the object,
the shadow or tag window), before any rendering. report.text and report.json render them."""
from __future__ import annotations

from dataclasses import field, fields

from emsan.lazyclass import dataclass

GRANULE = 8                   # bytes per shadow byte (generic); tag modes: 16 per memory tag
UNTAG_MASK = (1 << 56) - 1
ROW_GRANULES = 16             # granules per row of the memory state window


@dataclass(frozen=True)
class Task:
    """Who made the access: the guest thread (the kernel's task; pid is its thread id, the
    process's pid in a single-threaded guest)."""

    comm: str
    pid: int

    def __str__(self) -> str:
        return f"{self.comm}/{self.pid}"


@dataclass
class ObjectInfo:
    start: int
    size: int                 # requested size
    cache_size: int           # size class
    state: str                # allocated / freed
    large: bool
    alloc_stack: list[int]
    free_stack: list[int]
    kind: str                 # malloc / new / new[]
    align: int = 0            # the alignment an aligned operator new asked for (0: the default)
    alloc_tid: int = 0        # the threads that allocated and freed it (0: not known)
    free_tid: int = 0


@dataclass
class AllocRequest:
    """The allocator call a report is about: a refused allocation, or a sized or aligned delete
    that does not match its object."""

    call: str                 # "calloc", "operator delete(void*, unsigned long)"...
    size: int | None = None   # bytes asked for (calloc, reallocarray: per element); a delete's size
    count: int | None = None  # calloc, reallocarray: the number of elements
    align: int | None = None  # the alignment asked for, or the one a delete passes
    limit: int | None = None  # out of memory: the bytes the guest's limits leave the heap
    in_use: int | None = None  # out of memory: the bytes the heap holds

    def __str__(self) -> str:
        """What was asked, for the report's second line ("Allocation of ... by task ...")."""
        if self.count is not None:
            return f"{self.count} * {self.size} bytes"
        if self.align is not None:
            return f"size {self.size} aligned to {self.align}"
        return f"size {self.size}"


@dataclass
class Report:
    """A KASAN report (generic, tag-based and compiler-assisted modes)."""

    mode: str
    bug_type: str
    access: str               # read / write / free / allocate
    addr: int
    size: int
    pc: int
    task: Task
    stack: list[int]          # innermost first; stack[0] is the PC
    title_frame: int          # which frame names the bug (the caller for frees and interceptors)
    obj: ObjectInfo | None
    first_bad: int
    shadow_rows: list[tuple[int, list[int | None]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # tag-based modes: the pointer's tag and the first bad granule's; the rows then hold
    # memory tags, one per 16-byte granule
    pointer_tag: int | None = None
    memory_tag: int | None = None
    granule: int = GRANULE
    request: AllocRequest | None = None     # allocation errors, sized and aligned delete
    first_is_pc = True        # stack[0] is the faulting PC, not a return address

    @property
    def untagged_addr(self) -> int:
        return self.addr & UNTAG_MASK if self.pointer_tag is not None else self.addr


@dataclass
class FrameObject:
    start: int
    end: int
    name: str


@dataclass
class StackFrame:
    """The instrumented frame a stack address belongs to (decoded from its left redzone)."""

    offset: int               # of the address from the frame's start
    pc: int                   # the function's address
    objects: list[FrameObject]


@dataclass
class CompilerReport(Report):
    """A Report plus where a stack or global address belongs (the kernel's address description)."""

    variable: dict | None = None          # name, offset, size, address, module, file, line
    frame: StackFrame | None = None
    on_stack: bool = False

    @classmethod
    def of(cls, rep: Report) -> "CompilerReport":
        return cls(**{f.name: getattr(rep, f.name) for f in fields(Report)})


# The kmalloc caches a size would come from (cache=kmalloc-N in KFENCE reports).
KMALLOC_CACHES = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096)


def cache_name(size: int) -> str:
    for c in KMALLOC_CACHES:
        if size <= c:
            return f"kmalloc-{c}"
    return "kmalloc-large"


@dataclass
class KfenceObject:
    index: int
    start: int
    size: int
    state: str
    alloc_stack: list[int]
    free_stack: list[int]
    alloc_s: float
    free_s: float
    alloc_tid: int = 0        # the threads that allocated and freed it (0: not known)
    free_tid: int = 0

    @property
    def cache(self) -> str:
        return cache_name(self.size)


@dataclass
class KfenceReport:
    """A KFENCE report."""

    mode: str
    kind: str                 # out-of-bounds, use-after-free, memory corruption, invalid, invalid free
    access: str               # read / write / free
    addr: int
    pc: int
    task: Task
    stack: list[int]          # innermost first
    first_is_pc: bool         # stack[0] is the faulting PC (accesses), not a return address (frees)
    obj: KfenceObject | None
    now_s: float
    corrupted: list[int | None] = field(default_factory=list)   # shown bytes, None = intact canary
    notes: list[str] = field(default_factory=list)
    title_frame = 0
    size = 0

    @property
    def bug_type(self) -> str:
        """The title's bug words: "out-of-bounds read", "invalid free", "memory corruption"..."""
        if self.kind in ("out-of-bounds", "use-after-free", "invalid"):
            return f"{self.kind} {self.access}"
        return self.kind


@dataclass
class ReturnReport(Report):
    """A return through an overwritten return address (--stack-checks ret): which function's
    return address, where it was kept, where the return should have gone and where it went."""

    function: int = 0          # an address inside the function that returned (its ret)
    expected: int = 0          # the call's return address, as emsan kept it
    target: int = 0            # where the return went
    slot_known: bool = True    # addr is the overwritten slot (else the frame's stack pointer)


@dataclass
class LeakReport:
    """A kmemleak report: the unreferenced objects of one allocation stack (the first one
    allocated shown in full), with the objects reachable only through them."""

    mode: str
    task: Task
    addr: int                 # the first object allocated (the guest's pointer)
    size: int
    jiffies: int              # its allocation time, ms since the run started (HZ=1000)
    age_ms: int               # at the scan
    head: bytes               # its first (at most 32) bytes
    stack: list[int]          # allocation stack, innermost first (return addresses)
    count: int                # unreferenced objects with this stack
    bytes: int
    indirect_count: int       # objects reachable only through them
    indirect_bytes: int
    objects: list[tuple[int, int]]   # (address, size) of the first ones, allocation order
    indirect: bool = False    # these objects are themselves reachable from a leak
    suppressed_by: str = ""   # the suppression that matched (not printed then)
    bug_type = "memory-leak"
    first_is_pc = False
    title_frame = 0
