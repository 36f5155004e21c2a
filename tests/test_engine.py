"""emsan's own engine (engine/): the library emsan loads, what it exports, and each patch's effect.

Each patch in engine/patches/ has tests here that fail on an engine built without it (checked by
building such engines and swapping them into an installed copy):
  without 001                    test_store_fast_path
  001 without its TLB flush      test_exec_added_after_store[*-memhook], test_self_modifying_guest
  001 without its snapshot case  test_snapshot_copy_on_write
  without 002 (and stock 2.1.3)  test_wx_rewrite_bare (its rx->rw->rx and rwx->rw->rwx cases), test_self_modifying_guest
  without 003                    test_tbi_one_tlb_entry_per_page
  without 004                    test_sse_translated_inline
  without 005                    test_host_ptr_matches_mem_read (and every emsan run: the symbol is missing)
  without 006                    test_code_hooks_by_address
  without 007                    test_mmio_access_skips_region_walk
  without 008                    test_store_fast_path_virtual_tlb
  without 009                    test_host_ptr_remembers_regions
  010 changes nothing observable (test_mmio_pieces checks that); its effect is measured (bench/README.md)
The store fast path is checked white-box through QEMU's own TLB probe (tlb_vaddr_to_host), the SSE
translation by disassembling the host code of a block, the arm64 tag stripping by the addresses QEMU's
TLB fill receives, and the translation invalidations by running code that was rewritten, on bare engines
and in guest programs compared with native/qemu-aarch64 runs.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from emsan.machine import Machine, unicorn_lib
import unicorn
from unicorn import arm64_const, unicorn_const as uc, x86_const

from conftest import build, emsan, native

REPO = Path(__file__).resolve().parent.parent
PATCHES = REPO / "engine" / "patches"
RW, RX, RWX = uc.UC_PROT_READ | uc.UC_PROT_WRITE, uc.UC_PROT_READ | uc.UC_PROT_EXEC, uc.UC_PROT_ALL
ARCHES = ("x86_64", "arm64")


# --- the library -----------------------------------------------------------------------------------------
def test_loaded_library_is_emsans_engine():
    assert unicorn_lib.loaded_path() == unicorn_lib.LIBRARY.resolve()
    maps = Path("/proc/self/maps").read_text()
    loaded = {line.split()[-1] for line in maps.splitlines() if "libunicorn" in line}
    assert loaded == {str(unicorn_lib.LIBRARY.resolve())}, "another libunicorn is mapped in this process"


def test_manifest_lists_this_repositorys_patches():
    m = unicorn_lib.manifest()
    want = [(p.stem, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(PATCHES.glob("*.patch"))]
    assert want, "no patches in engine/patches"
    assert [(p["name"], p["sha256"]) for p in m["patches"]] == want, "installed engine is stale: pip install ."
    assert m["unicorn"] == "2.1.3"
    assert m["sdist_sha256"] == "0c06456cf550c228f2003cc70366afa4aece2e6e7e4c32d8f4b22c717ba6b729"
    assert set(m["arches"]) == {"x86", "arm", "aarch64"}


def test_engine_exports_the_internals_emsan_calls():
    """mmio.c recovers exact PCs with qemu_get_cpu_<arch> and cpu_restore_state_<arch>; the build must
    export them (read from the ELF's dynamic symbol table, not through the loader)."""
    with open(unicorn_lib.LIBRARY, "rb") as f:
        dynsym = ELFFile(f).get_section_by_name(".dynsym")
        exported = {s.name for s in dynsym.iter_symbols()
                    if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] != "SHN_UNDEF"
                    and s["st_info"]["bind"] == "STB_GLOBAL"}
    needed = set(unicorn_lib.INTERNALS) | {"qemu_get_cpu_arm", "cpu_restore_state_arm", "uc_open", "uc_mem_protect"}
    assert needed <= exported, f"missing: {sorted(needed - exported)}"
    for arch in ARCHES:
        m = Machine(arch)
        m.map(0x10000, 0x1000, RW)            # Unicorn creates its CPU on first use
        assert _cpu(m), f"qemu_get_cpu_{_suffix(arch)} found no CPU"


def test_version_names_the_engine_and_its_patches():
    p = emsan("--version")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert f"library: {unicorn_lib.LIBRARY.resolve()}" in out
    for patch in sorted(PATCHES.glob("*.patch")):
        assert f"patch {patch.stem}: " in out
    assert unicorn_lib.manifest()["build_id"] in out


def test_other_libunicorn_first_is_refused():
    """A harness that imported the stock binding first gets one clear error, not a mixed-up engine."""
    p = subprocess.run([sys.executable, "-c", "import unicorn\nimport emsan.machine"], capture_output=True, text=True)
    assert p.returncode != 0
    assert "unicorn was imported before emsan" in p.stderr and "import emsan.machine before unicorn" in p.stderr


def test_libunicorn_path_of_the_user_does_not_win():
    stock = Path(unicorn.__file__).parent / "lib"             # the wheel's own library
    env = dict(os.environ, LIBUNICORN_PATH=str(stock))
    p = emsan("--version", env=env)
    assert p.returncode == 0, p.stderr
    assert f"library: {unicorn_lib.LIBRARY.resolve()}" in p.stdout.decode()


def test_missing_engine_is_one_clear_error(tmp_path):
    """An emsan package without its engine (a broken install) stops with one line and status 70."""
    pkg = Path(unicorn_lib.__file__).resolve().parent.parent
    shutil.copytree(pkg, tmp_path / "emsan", ignore=shutil.ignore_patterns("_engine", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "emsan", "run", "--mode", "none", "/bin/true"], env=env,
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 70
    assert p.stderr.count("\n") == 1 and "engine is not installed" in p.stderr, p.stderr


# --- a guest driver on a bare engine ---------------------------------------------------------------------
class Driver:
    """A straight-line guest program assembled step by step: call the function at FUNC (its result is
    kept in a callee-saved register), make a system call (the hook applies the next protection change
    to the code page), rewrite FUNC's return value with a guest store, store into a data page."""

    CODE, FUNC, DATA, STACK = 0x100000, 0x100100, 0x300000, 0x400000

    def __init__(self, arch: str, memhook: bool = False):
        self.arch, self.m = arch, Machine(arch)
        self.driver = 0x200000
        self.m.map(self.driver, 0x1000, RX)
        self.m.map(self.STACK, 0x1000, RW)
        self.actions: list[int | None] = []
        self.on_syscall = None                  # also called from each system call, with the engine
        if arch == "x86_64":
            self.m.uc.hook_add(uc.UC_HOOK_INSN, lambda u, ud: self._action(), None, 1, 0, x86_const.UC_X86_INS_SYSCALL)
        else:
            self.m.uc.hook_add(uc.UC_HOOK_INTR, lambda u, intno, ud: intno == 2 and self._action())
        if memhook:     # any memory hook over the code page (it suppresses TLB refreshes in tb_gen_code)
            self.m.uc.hook_add(uc.UC_HOOK_MEM_WRITE, lambda *a: None, None, self.CODE, self.CODE + 0xFFF)
        self.reset()

    def reset(self, offset: int = 0) -> None:
        """Start a new program at driver page + offset."""
        self.base = self.driver + offset
        self.words: list[bytes] = []
        self.results = 0

    def _action(self) -> None:
        prot = self.actions.pop(0)
        if prot is not None:
            self.m.uc.mem_protect(self.CODE, 0x1000, prot)
        if self.on_syscall is not None:
            self.on_syscall(self.m.uc)

    def _func(self, v: int) -> bytes:
        if self.arch == "x86_64":
            return b"\xb8" + struct.pack("<I", v) + b"\xc3"              # mov eax, v; ret
        return struct.pack("<II", 0x52800000 | v << 5, 0xD65F03C0)      # movz w0, #v; ret

    def _emit(self, code: bytes) -> None:
        self.words.append(code)

    def _here(self) -> int:
        return self.base + sum(len(w) for w in self.words)

    def _store32(self, addr: int, value: int) -> None:
        if self.arch == "x86_64":      # movabs rdx, addr; mov ecx, value; mov [rdx], ecx
            self._emit(b"\x48\xba" + struct.pack("<Q", addr) + b"\xb9" + struct.pack("<I", value) + b"\x89\x0a")
        else:                          # movz/movk x1, addr; movz/movk w2, value; str w2, [x1]
            self._emit(struct.pack("<5I", 0xD2800001 | (addr & 0xFFFF) << 5, 0xF2A00001 | (addr >> 16) << 5,
                                   0x52800002 | (value & 0xFFFF) << 5, 0x72A00002 | (value >> 16) << 5, 0xB9000022))

    def map_func(self, prot: int, v: int) -> None:
        self.m.map(self.CODE, 0x1000, prot)
        self.m.write(self.FUNC, self._func(v))

    def map_data(self, prot: int) -> None:
        self.m.map(self.DATA, 0x1000, prot)

    def call(self) -> None:
        at = self._here()
        if self.arch == "x86_64":      # call FUNC; mov r12d..r15d, eax
            self._emit(b"\xe8" + struct.pack("<i", self.FUNC - (at + 5)) + bytes((0x41, 0x89, 0xC4 + self.results)))
        else:                          # bl FUNC; mov x19.., x0
            self._emit(struct.pack("<II", 0x94000000 | ((self.FUNC - at) >> 2) & 0x3FFFFFF, 0xAA0003F3 + self.results))
        self.results += 1

    def syscall(self, prot: int | None) -> None:
        self.actions.append(prot)
        self._emit(b"\x0f\x05" if self.arch == "x86_64" else struct.pack("<I", 0xD4000001))

    def rewrite_func(self, v: int) -> None:
        if self.arch == "x86_64":
            self._store32(self.FUNC + 1, v)                       # mov eax's immediate
        else:
            self._store32(self.FUNC, 0x52800000 | v << 5)         # the whole movz

    def store_data(self, v: int) -> None:
        self._store32(self.DATA, v)

    def load_data(self) -> None:
        if self.arch == "x86_64":      # movabs rdx, DATA; mov esi, [rdx]
            self._emit(b"\x48\xba" + struct.pack("<Q", self.DATA) + b"\x8b\x32")
        else:                          # movz/movk x1, DATA; ldr w3, [x1]
            self._emit(struct.pack("<3I", 0xD2800001 | (self.DATA & 0xFFFF) << 5,
                                   0xF2A00001 | (self.DATA >> 16) << 5, 0xB9400023))

    def data(self) -> int:
        return struct.unpack("<I", self.m.read(self.DATA, 4))[0]

    def assemble(self) -> tuple[int, int, int]:
        """Write the program into the engine: (begin, end, number of results)."""
        end = self._here()
        self.m.write(self.base, b"".join(self.words) + (b"\x90" if self.arch == "x86_64" else b"\x1f\x20\x03\xd5"))
        return self.base, end, self.results

    def execute(self, program: tuple[int, int, int]) -> tuple[int, ...]:
        begin, end, results = program
        self.m.sp = self.STACK + 0x800
        self.m.uc.emu_start(begin, end)
        regs = ("r12", "r13", "r14", "r15") if self.arch == "x86_64" else ("x19", "x20", "x21", "x22")
        return tuple(self.m.reg(r) & 0xFFFFFFFF for r in regs[:results])

    def run(self) -> tuple[int, ...]:
        return self.execute(self.assemble())


# --- 001: the store fast path ----------------------------------------------------------------------------
def _suffix(arch: str) -> str:
    return {"x86_64": "x86_64", "arm64": "aarch64"}[arch]


def _fn(name: str, restype, *argtypes):
    f = getattr(unicorn_lib.uclib, name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


def _cpu(m: Machine) -> int:
    """QEMU's CPUState of the engine, as mmio.c finds it (index 0, or -1: x86 CPUs have no index)."""
    get_cpu = _fn(f"qemu_get_cpu_{_suffix(m.arch)}", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
    return get_cpu(m.handle_int, 0) or get_cpu(m.handle_int, -1) or 0


MMU_DATA_LOAD, MMU_DATA_STORE = 0, 1


class TlbProbe:
    """QEMU's tlb_vaddr_to_host(env, addr, access, mmu_idx): the host address a load or store of `addr`
    reaches straight from its TLB entry (filling it if needed), or NULL when the entry has flags that
    send the access to the slow path (TLB_NOTDIRTY for stores). `env` is CPUState.env_ptr, found as the
    pair (env_ptr, icount_decr_ptr) of CPUState: both point into the CPU object, a few bytes apart."""

    def __init__(self, m: Machine):
        cpu = _cpu(m)
        words = (ctypes.c_uint64 * 2048).from_address(cpu)
        pairs = [(words[i], words[i + 1]) for i in range(2047)]
        self.env = next((e for e, ic in pairs if cpu < ic < e < cpu + (1 << 20) and e - ic <= 64), None)
        assert self.env, "CPUState.env_ptr not found"
        self.to_host = _fn(f"tlb_vaddr_to_host_{_suffix(m.arch)}", ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int)

    def host(self, addr: int, access: int) -> int:
        return self.to_host(self.env, addr, access, 0) or 0


def _mapped_page(m: Machine, addr: int, prot: int) -> tuple[int, ctypes.Array]:
    buf = ctypes.create_string_buffer(0x2000)
    host = (ctypes.addressof(buf) + 0xFFF) & ~0xFFF
    m.map_ptr(addr, 0x1000, prot, host)
    return host, buf


@pytest.mark.parametrize("arch", ARCHES)
def test_store_fast_path(arch):
    """A store to a writable, non-executable page goes from the TLB straight to host memory (with the
    stock engine every writable page was TLB_NOTDIRTY: every store took the helper)."""
    m = Machine(arch)
    host, keep = _mapped_page(m, 0x200000, RW)
    probe = TlbProbe(m)
    assert probe.host(0x200010, MMU_DATA_LOAD) == host + 0x10, "the probe does not see this engine's TLB"
    assert probe.host(0x200010, MMU_DATA_STORE) == host + 0x10


@pytest.mark.parametrize("arch", ARCHES)
def test_code_pages_keep_slow_path(arch):
    """Executable pages stay TLB_NOTDIRTY: a store there must invalidate translations."""
    m = Machine(arch)
    host, keep = _mapped_page(m, 0x200000, RWX)
    probe = TlbProbe(m)
    assert probe.host(0x200010, MMU_DATA_LOAD) == host + 0x10
    assert probe.host(0x200010, MMU_DATA_STORE) == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_snapshot_copy_on_write(arch):
    """uc_context_save with memory, taken from a hook while the guest runs: a store after the snapshot,
    through the TLB entry a load filled after it (a store that misses the TLB copies the page anyway),
    must still be undone by the restore."""
    d = Driver(arch)
    d.map_data(RW)
    saved = []

    def snapshot(uc_, *_):
        uc_.ctl(uc.UC_CTL_CONTEXT_MODE, uc.UC_CTL_IO_WRITE, ctypes.c_int(uc.UC_CTL_CONTEXT_CPU | uc.UC_CTL_CONTEXT_MEMORY))
        saved.append(uc_.context_save())
    d.on_syscall = snapshot
    d.store_data(0x11)
    d.syscall(None)
    d.load_data()
    d.store_data(0x22)
    d.run()
    assert len(saved) == 1 and d.data() == 0x22
    d.m.uc.context_restore(saved[0])
    assert d.data() == 0x11


# --- 001/002: translations follow rewritten code (bare engine, protection changes from a syscall) -------
CASES = {                    # initial protection of the code page, the two protection changes
    "rwx rewrite": (RWX, None, None),
    "rx->rw->rx": (RX, RW, RX),
    "rwx->rw->rwx": (RWX, RW, RWX),
    "rx->rwx": (RX, RWX, None),
}


@pytest.mark.parametrize("memhook", [False, True], ids=["plain", "memhook"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("arch", ARCHES)
def test_wx_rewrite_bare(arch, case, memhook):
    """call f; [protect]; the guest rewrites f; [protect]; call f: the second call runs the new code.
    The protection changes happen inside one emu_start, from the guest's system call, as in emsan.
    Stock Unicorn 2.1.3 runs the old code after rx->rw->rx (002)."""
    init, p1, p2 = CASES[case]
    d = Driver(arch, memhook=memhook)
    d.map_func(init, 1)
    d.call()
    d.syscall(p1)
    d.rewrite_func(2)
    d.syscall(p2)
    d.call()
    assert d.run() == (1, 2)


@pytest.mark.parametrize("memhook", [False, True], ids=["plain", "memhook"])
@pytest.mark.parametrize("arch", ARCHES)
def test_exec_added_after_store(arch, memhook):
    """The page is written while RW (its TLB entry has no TLB_NOTDIRTY), made RWX, run, rewritten and run
    again: the rewrite must reach the translation (upstream Unicorn issue #2367 under a memory hook)."""
    d = Driver(arch, memhook=memhook)
    d.map_func(RW, 1)
    d.rewrite_func(1)
    d.syscall(RWX)
    d.call()
    d.rewrite_func(2)
    d.call()
    assert d.run() == (1, 2)


# --- the same in real guest programs, compared with native / qemu-aarch64 ----------------------------------
@pytest.mark.parametrize("mode", [("none",), ("generic",), ("generic", "--checks", "hook")],
                         ids=["none", "generic", "generic-hook"])
def test_self_modifying_guest(arch, mode):
    exe = build("jit", arch)
    ref = native(exe, "30", arch=arch)
    assert ref.returncode == 0 and b"recycle 1 10" in ref.stdout, ref.stderr
    p = emsan("run", "--mode", *mode, exe, "30")
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == ref.stdout


# --- 004: x86 SSE2 integer instructions translated inline ---------------------------------------------------
def test_sse_ops_match_native():
    """Every inlined instruction (register and memory operands, aliased operands, shift counts at and
    beyond the element width) gives the results of the host CPU."""
    exe = build("sse_ops", "x86_64")
    ref = native(exe, "4000")
    assert ref.returncode == 0 and ref.stdout.count(b"\n") == 50, ref.stderr
    for mode in ("none", "generic"):
        p = emsan("run", "--mode", mode, exe, "4000")
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout == ref.stdout, mode


INLINED = ("paddl", "psrlq", "pshufd", "pmuludq", "punpckldq", "pcmpeqb", "pminub", "pmovmskb", "pxor")
SSE_BLOCK = bytes.fromhex(
    "660ffec1"      # paddd xmm0, xmm1
    "660f73d021"    # psrlq xmm0, 33
    "660f70c81b"    # pshufd xmm1, xmm0, 0x1b
    "660ff4c1"      # pmuludq xmm0, xmm1
    "660f62c1"      # punpckldq xmm0, xmm1
    "660f74c1"      # pcmpeqb xmm0, xmm1
    "660fdac1"      # pminub xmm0, xmm1
    "660fefc8"      # pxor xmm1, xmm0
    "660fd7c0"      # pmovmskb eax, xmm0
    "660f73d803")   # psrldq xmm0, 3      (a byte shift: still a helper, the control)


def _host_call_targets(m: Machine, pc: int) -> set[int]:
    """The functions QEMU's translation of the block at `pc` calls: the block is translated with
    uc_ctl_request_cache, found in CPUState.tb_jmp_cache (right after env_ptr and icount_decr_ptr),
    and its host code (TranslationBlock.tc) disassembled with capstone."""
    import capstone
    from capstone import x86_const as cx

    m.uc.ctl_request_cache(pc)
    cpu = _cpu(m)
    words = (ctypes.c_uint64 * 2048).from_address(cpu)
    i = next(i for i in range(2047) if cpu < words[i + 1] < words[i] < cpu + (1 << 20) and words[i] - words[i + 1] <= 64)
    t = pc ^ (pc >> 6)
    tb = words[i + 2 + (((t >> 6) & 0xFC0) | (t & 0x3F))]
    assert tb and ctypes.c_uint64.from_address(tb).value == pc, "translation block not found"
    code_ptr, code_size = ctypes.c_uint64.from_address(tb + 32).value, ctypes.c_uint64.from_address(tb + 40).value
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    targets = set()
    for insn in md.disasm(ctypes.string_at(code_ptr, code_size), code_ptr):
        if insn.mnemonic != "call":
            continue
        op = insn.operands[0]
        if op.type == cx.X86_OP_IMM:
            targets.add(op.imm)
        elif op.type == cx.X86_OP_MEM and op.mem.base == cx.X86_REG_RIP:
            targets.add(ctypes.c_uint64.from_address(insn.address + insn.size + op.mem.disp).value)
    return targets


def test_sse_translated_inline():
    m = Machine("x86_64")
    m.map(0x10000, 0x1000, RX)
    m.write(0x10000, SSE_BLOCK + b"\xf4")
    calls = _host_call_targets(m, 0x10000)
    helper = {n: ctypes.cast(getattr(unicorn_lib.uclib, f"helper_{n}_xmm_x86_64"), ctypes.c_void_p).value
              for n in (*INLINED, "psrldq")}
    assert helper["psrldq"] in calls, "the control helper is not seen: the inspection is broken"
    assert not [n for n in INLINED if helper[n] in calls], "SSE instructions still call their helpers"


# --- what emsan relies on: a stop takes effect right after the access that asked for it ---------------------
STOP_CODE = {"x86_64": bytes.fromhex("8903" "41bc01000000" "90"),               # mov [rbx], eax; mov r12d, 1
             "arm64": struct.pack("<3I", 0xB9000020, 0xD2800033, 0xD503201F)}  # str w0, [x1]; mov x19, #1


@pytest.mark.parametrize("how", ["memhook", "mmio", "unmapped"])
@pytest.mark.parametrize("arch", ARCHES)
def test_stop_right_after_the_access(arch, how):
    """A stop requested during a store (a memory hook or an MMIO callback calling uc_emu_stop, or an
    unmapped access) ends emulation before the next instruction runs."""
    m = Machine(arch)
    code, target = 0x10000, 0x300000
    m.map(code, 0x1000, RX)
    m.write(code, STOP_CODE[arch])
    base, marker = ("rbx", "r12") if arch == "x86_64" else ("x1", "x19")
    m.set_reg(base, target)
    if how == "memhook":
        m.map(target, 0x1000, RW)
        m.uc.hook_add(uc.UC_HOOK_MEM_WRITE, lambda u, *a: u.emu_stop(), None, target, target + 3)
    elif how == "mmio":
        m.uc.mmio_map(target, 0x1000, lambda *a: 0, None, lambda u, *a: u.emu_stop(), None)
    end = code + len(STOP_CODE[arch]) - (1 if arch == "x86_64" else 4)
    try:
        m.uc.emu_start(code, end)
    except unicorn.UcError:
        assert how == "unmapped"
    assert m.reg(marker) == 0, "the instruction after the access ran"


# --- 003: arm64 tags stripped before the TLB ----------------------------------------------------------------
def test_tbi_one_tlb_entry_per_page():
    """64 pointers with 64 different tags into one page: QEMU's TLB fill sees the untagged page once
    (the stock engine filled the TLB with each tagged alias, and again whenever 9+ aliases evicted each
    other)."""
    m = Machine("arm64")                              # TCR_EL1.TBI0 on, as for every arm64 guest
    code, table, data = 0x10000, 0x200000, 0x300000
    # loop: ldr x2,[x0,x3,lsl #3]; ldr x4,[x2]; add x3,x3,#1; and x3,x3,x6; subs x5,x5,#1; b.ne loop
    words = (0xF8637802, 0xF9400044, 0x91000463, 0x8A060063, 0xF10004A5, 0x54FFFF61)
    m.map(code, 0x1000, RX)
    m.map(table, 0x1000, RW)
    m.map(data, 0x1000, RW)
    m.write(code, struct.pack("<6I", *words))
    m.write(table, struct.pack("<64Q", *((data + 16 * i) | ((0x10 + i) << 56) for i in range(64))))
    fills: list[int] = []

    def fill(uc_, vaddr, access, entry, ud):
        if vaddr & ~0xFFF != code:
            fills.append(vaddr)
        entry.paddr = vaddr & 0x00FF_FFFF_FFFF_F000
        entry.perms = 7
        return True
    m.uc.hook_add(uc.UC_HOOK_TLB_FILL, fill)
    m.uc.ctl_set_tlb_mode(uc.UC_TLB_VIRTUAL)
    for reg, v in (("x0", table), ("x3", 0), ("x6", 63), ("x5", 64 * 20)):
        m.set_reg(reg, v)
    m.uc.emu_start(code, code + 4 * len(words))
    assert m.reg("x5") == 0
    assert not [a for a in fills if a >> 56], "the TLB was filled with tagged addresses"
    assert len([a for a in fills if a & ~0xFFF == data]) <= 2, f"{len(fills)} fills"


# --- 014: arm64 tags kept in the TLB address on request ----------------------------------------------------
def test_tagged_tlb_on_request():
    """With uc_emsan_tagged_tlb on, the virtual-TLB fill sees each pointer tag of a page and may map
    each (tag, page) pair to its own physical page; off again (the default, 003), it sees the untagged
    page only."""
    m = Machine("arm64")
    code, table, data, alias = 0x10000, 0x200000, 0x300000, 0x400000
    words = (0xF8637802, 0xF9400044, 0x91000463, 0x8A060063, 0xF10004A5, 0x54FFFF61)   # as above
    m.map(code, 0x1000, RX)
    m.map(table, 0x1000, RW)
    m.map(data, 0x1000, RW)
    m.map(alias, 0x1000, RW)
    m.write(code, struct.pack("<6I", *words))
    m.write(table, struct.pack("<64Q", *((data + 16 * i) | ((0x10 + i) << 56) for i in range(64))))
    m.write(data, struct.pack("<Q", 0x1111))
    m.write(alias, struct.pack("<Q", 0x2222))
    fills: list[int] = []

    def fill(uc_, vaddr, access, entry, ud):
        if vaddr & ~0xFFF != code:
            fills.append(vaddr)
        page = vaddr & 0x00FF_FFFF_FFFF_F000
        entry.paddr = alias if page == data and vaddr >> 56 == 0x10 else page    # tag 0x10 sees the alias
        entry.perms = 7
        return True
    m.uc.hook_add(uc.UC_HOOK_TLB_FILL, fill)
    m.uc.ctl_set_tlb_mode(uc.UC_TLB_VIRTUAL)

    def run(keep: bool) -> tuple[set[int], int]:
        m.tagged_tlb(keep)
        fills.clear()
        for reg, v in (("x0", table), ("x3", 0), ("x6", 63), ("x5", 64)):
            m.set_reg(reg, v)
        m.uc.emu_start(code, code + 4 * len(words))
        assert m.reg("x5") == 0
        m.set_reg("x3", 0)
        m.set_reg("x5", 1)
        m.uc.emu_start(code, code + 4 * len(words))            # one pass: x4 = *(data with tag 0x10)
        return {a >> 56 for a in fills if a & 0x00FF_FFFF_FFFF_F000 == data}, m.reg("x4")
    assert run(True) == (set(range(0x10, 0x50)), 0x2222)
    assert run(False) == ({0}, 0x1111)


# --- 005: direct host pointers for the runtime's reads and writes of guest memory ---------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_host_ptr_matches_mem_read(arch):
    """uc_emsan_host_ptr gives the bytes uc_mem_read reads (Unicorn's RAM and host memory mapped with
    uc_mem_map_ptr), takes writes that uc_mem_read then sees, and refuses what only uc_mem_write may do
    (read-only and executable pages, a snapshot's pending copy-on-write) and ranges outside one region."""
    host_ptr = _fn("uc_emsan_host_ptr", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t,
                   ctypes.c_bool)
    m = Machine(arch)
    rw, ro, rx, own, hole = 0x100000, 0x200000, 0x300000, 0x400000, 0x500000
    m.map(rw, 0x2000, RW)
    m.map(rw + 0x2000, 0x1000, RW)                    # adjacent, a region of its own
    m.map(ro, 0x1000, uc.UC_PROT_READ)
    m.map(rx, 0x1000, RX)
    buf = ctypes.create_string_buffer(0x1000)
    m.map_ptr(own, 0x1000, RW, ctypes.addressof(buf))
    data = bytes(range(256)) * 16
    for base in (rw, ro, rx, own):
        m.write(base, data)
    h = m.handle_int
    for base in (rw, ro, rx, own):
        p = host_ptr(h, base + 0x123, 64, False)
        assert p and ctypes.string_at(p, 64) == bytes(m.uc.mem_read(base + 0x123, 64))
    assert host_ptr(h, own + 0x40, 8, False) == ctypes.addressof(buf) + 0x40
    p = host_ptr(h, rw + 0x1ff8, 8, True)
    assert p
    ctypes.memmove(p, b"ABCDEFGH", 8)
    assert bytes(m.uc.mem_read(rw + 0x1ff8, 8)) == b"ABCDEFGH"
    assert not host_ptr(h, ro, 8, True) and not host_ptr(h, rx, 8, True)
    assert not host_ptr(h, rw + 0x2ffc, 8, False), "crosses the end of the mapping"
    assert not host_ptr(h, rw + 0x1ffc, 8, False), "crosses into the next region"
    assert not host_ptr(h, hole, 8, False) and not host_ptr(h, rw, 0, False)
    m.uc.ctl(uc.UC_CTL_CONTEXT_MODE, uc.UC_CTL_IO_WRITE, ctypes.c_int(uc.UC_CTL_CONTEXT_CPU | uc.UC_CTL_CONTEXT_MEMORY))
    saved = m.uc.context_save()
    assert host_ptr(h, rw, 8, False), "reads need no copy"
    assert not host_ptr(h, rw, 8, True), "a write must go through uc_mem_write's copy-on-write"
    m.uc.mem_write(rw, b"12345678")
    m.uc.context_restore(saved)
    assert bytes(m.uc.mem_read(rw, 8)) == data[:8]


# --- 006: code hooks found by address ---------------------------------------------------------------------
LOOP_CODE, LOOP_FUNC, LOOP_STACK = 0x100000, 0x100800, 0x300000


def _call_loop(arch: str, times: int) -> tuple[Machine, int, int]:
    """A guest that calls an empty function at LOOP_FUNC `times` times: (machine, begin, end)."""
    m = Machine(arch)
    m.map(LOOP_CODE, 0x1000, RX)
    m.map(LOOP_STACK, 0x1000, RW)
    at = LOOP_CODE + 5
    if arch == "x86_64":        # mov ecx, times; L: call FUNC; dec ecx; jnz L; nop   FUNC: ret
        code = (b"\xb9" + struct.pack("<I", times) + b"\xe8" + struct.pack("<i", LOOP_FUNC - (at + 5))
                + b"\xff\xc9\x75\xf7\x90")
        func = b"\xc3"
    else:                       # movz w19, times; L: bl FUNC; subs w19, w19, 1; b.ne L; nop   FUNC: ret
        at = LOOP_CODE + 4
        code = struct.pack("<5I", 0x52800013 | times << 5, 0x94000000 | ((LOOP_FUNC - at) >> 2) & 0x3FFFFFF,
                           0x71000673, 0x54FFFFC1, 0xD503201F)
        func = struct.pack("<I", 0xD65F03C0)
    m.write(LOOP_CODE, code)
    m.write(LOOP_FUNC, func)
    m.sp = LOOP_STACK + 0x800
    return m, LOOP_CODE, LOOP_CODE + len(code) - (1 if arch == "x86_64" else 4)      # up to the nop


HOOK_BEGIN_END = 24      # offsetof(struct hook, begin) in Unicorn 2.1.3 (include/uc_priv.h); end follows


@pytest.mark.parametrize("arch", ARCHES)
def test_code_hooks_by_address(arch):
    """Dispatching a hooked instruction reads no hook list: with the patch the hooks of an address are
    taken from the per-address cache, so a hook whose range is moved away behind the engine's back (its
    struct written directly, no uc_hook_add/uc_hook_del) still runs at the address it was found for.
    The stock engine walks every UC_HOOK_CODE hook at every hooked instruction and stops calling it."""
    m, begin, end = _call_loop(arch, 10)
    for i in range(40):          # other functions emsan would stand in for
        m.uc.hook_add(uc.UC_HOOK_CODE, lambda *a: None, None, 0x900000 + 16 * i, 0x900000 + 16 * i)
    calls = []

    def func_hook(u, address, size, ud):
        calls.append(address)
        if len(calls) == 5:      # the engine's list now says this hook covers another address
            ctypes.c_uint64.from_address(h + HOOK_BEGIN_END).value = LOOP_FUNC + 0x100
            ctypes.c_uint64.from_address(h + HOOK_BEGIN_END + 8).value = LOOP_FUNC + 0x100

    h = m.uc.hook_add(uc.UC_HOOK_CODE, func_hook, None, LOOP_FUNC, LOOP_FUNC)
    assert ctypes.c_uint64.from_address(h + HOOK_BEGIN_END).value == LOOP_FUNC, "struct hook's layout"
    m.uc.emu_start(begin, end)
    assert calls == [LOOP_FUNC] * 10


@pytest.mark.parametrize("arch", ARCHES)
def test_code_hook_order_and_deletion(arch):
    """Hooks of one address run in the order they were added, ranged ones among them; one that deletes
    itself runs once; more hooks on an address than the cache keeps all run; one that stops the
    emulation ends the dispatch there (the hooks after it do not run)."""
    m, begin, end = _call_loop(arch, 4)
    seen: list[str] = []
    m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: seen.append("a"), None, LOOP_FUNC, LOOP_FUNC)
    m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: a == LOOP_FUNC and seen.append("range"), None, 1, 0)
    once: list[int] = []
    once.append(m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: (seen.append("once"), u.hook_del(once[0])),
                              None, LOOP_FUNC, LOOP_FUNC))
    m.uc.emu_start(begin, end)
    assert seen == ["a", "range", "once"] + ["a", "range"] * 3
    # five hooks on one address (more than the engine caches: the list is walked), and a stop
    m, begin, end = _call_loop(arch, 3)
    seen.clear()
    for name in "vwxyz":
        m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d, n=name: seen.append(n), None, LOOP_FUNC, LOOP_FUNC)
    m.uc.emu_start(begin, end)
    assert seen == list("vwxyz") * 3
    m, begin, end = _call_loop(arch, 3)
    seen.clear()
    m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: seen.append("first"), None, LOOP_FUNC, LOOP_FUNC)
    m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: (seen.append("stop"), u.emu_stop()), None, LOOP_FUNC, LOOP_FUNC)
    m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: seen.append("after"), None, LOOP_FUNC, LOOP_FUNC)
    m.uc.emu_start(begin, end)
    assert seen == ["first", "stop"]
    assert m.pc == LOOP_FUNC


# --- 007: the region of an MMIO access from its TLB entry ----------------------------------------------
MMIO_PAGE = 0x500000


def _mmio_loop(arch: str, times: int) -> tuple[Machine, int, int]:
    """A guest that loads a word from MMIO_PAGE and stores it 8 bytes further, `times` times."""
    m = Machine(arch)
    m.map(LOOP_CODE, 0x1000, RX)
    if arch == "x86_64":   # mov rdx, MMIO_PAGE; mov ecx, times; L: mov eax, [rdx]; mov [rdx+8], eax; dec ecx; jnz L; nop
        code = (b"\x48\xc7\xc2" + struct.pack("<I", MMIO_PAGE) + b"\xb9" + struct.pack("<I", times)
                + b"\x8b\x02\x89\x42\x08\xff\xc9\x75\xf7\x90")
        end = LOOP_CODE + len(code) - 1
    else:                  # movz x1, MMIO_PAGE >> 16, lsl 16; movz w2, times; L: ldr w0, [x1]; str w0, [x1, 8]; subs; b.ne L; nop
        code = struct.pack("<7I", 0xD2A00001 | (MMIO_PAGE >> 16) << 5, 0x52800002 | times << 5, 0xB9400020,
                           0xB9000820, 0x71000442, 0x54FFFFA1, 0xD503201F)
        end = LOOP_CODE + len(code) - 4
    m.write(LOOP_CODE, code)
    return m, LOOP_CODE, end


class SlotCounter:
    """While in use, the function pointer at words[slot] is a wrapper (of type PROTO) that counts the
    calls in .calls and calls the original."""
    PROTO: Any

    def _count(self, words, slot: int) -> None:
        self.words, self.slot, self.orig, self.calls = words, slot, words[slot], 0
        original = self.PROTO(self.orig)

        def counting(*args):
            self.calls += 1
            return original(*args)
        self.counting = self.PROTO(counting)

    def __enter__(self):
        self.words[self.slot] = ctypes.cast(self.counting, ctypes.c_void_p).value
        return self

    def __exit__(self, *exc) -> None:
        self.words[self.slot] = self.orig


class MappingCounter(SlotCounter):
    """Counts the engine's uc->memory_mapping() calls (find_memory_mapping_<arch>, Unicorn's region
    lookup) by swapping the function pointer in struct uc_struct for a counting one while in use."""

    PROTO = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64)

    def __init__(self, m: Machine):
        self.find = ctypes.cast(getattr(unicorn_lib.uclib, f"find_memory_mapping_{_suffix(m.arch)}"),
                                ctypes.c_void_p).value
        words = (ctypes.c_uint64 * 1024).from_address(m.handle_int)
        slots = [i for i in range(1024) if words[i] == self.find]
        assert len(slots) == 1, "uc_struct.memory_mapping not found"
        self._count(words, slots[0])


@pytest.mark.parametrize("arch", ARCHES)
def test_mmio_access_skips_region_walk(arch):
    """2,000 loads and stores through an MMIO TLB entry find their region from the entry: the engine's
    region lookup runs a few dozen times (translating the code), not once per access as on the stock
    engine. The callbacks still see every access with its offset, size and value."""
    m, begin, end = _mmio_loop(arch, 1000)
    reads, writes = [], []
    m.uc.mmio_map(MMIO_PAGE, 0x1000, lambda u, off, size, d: reads.append((off, size)) or 0x1234ABCD, None,
                  lambda u, off, size, value, d: writes.append((off, size, value)), None)
    with MappingCounter(m) as count:
        m.uc.emu_start(begin, end)
    assert reads == [(0, 4)] * 1000 and writes == [(8, 4, 0x1234ABCD)] * 1000
    assert count.calls < 100, count.calls


@pytest.mark.parametrize("arch", ARCHES)
def test_mmio_unmapped_and_protection(arch):
    """What the region decides is still decided: a load from an unmapped page faults (and a hook that
    maps it lets the load proceed), and MMIO pages whose region lost read or write permission fault on
    that access."""
    m, begin, end = _mmio_loop(arch, 1)
    with pytest.raises(unicorn.UcError) as e:
        m.uc.emu_start(begin, end)
    assert e.value.errno == uc.UC_ERR_READ_UNMAPPED
    m, begin, end = _mmio_loop(arch, 2)

    def map_it(u, access, addr, size, value, d):
        u.mem_map(MMIO_PAGE, 0x1000, RW)
        u.mem_write(MMIO_PAGE, struct.pack("<I", 77))
        return True
    m.uc.hook_add(uc.UC_HOOK_MEM_READ_UNMAPPED, map_it)
    m.uc.emu_start(begin, end)
    assert struct.unpack("<I", m.read(MMIO_PAGE + 8, 4))[0] == 77
    for prot, err in ((uc.UC_PROT_WRITE, uc.UC_ERR_READ_PROT), (uc.UC_PROT_READ, uc.UC_ERR_WRITE_PROT)):
        m, begin, end = _mmio_loop(arch, 3)
        m.uc.mmio_map(MMIO_PAGE, 0x1000, lambda *a: 5, None, lambda *a: None, None)
        m.uc.mem_protect(MMIO_PAGE, 0x1000, prot)
        with pytest.raises(unicorn.UcError) as e:
            m.uc.emu_start(begin, end)
        assert e.value.errno == err


# --- 010: MMIO callbacks called directly --------------------------------------------------------------------
def test_mmio_pieces():
    """Loads and stores of 1, 2, 4 and 8 bytes in a uc_mmio_map() region reach the callbacks in the pieces
    QEMU's generic path makes (at most 4 bytes, lowest first), with their offsets and values: 010 calls
    the callbacks directly and must not change what they see (that it skips the generic path is
    test_mmio_callbacks_called_directly; its effect on speed is in bench/README.md, "Engine")."""
    m = Machine("x86_64")
    m.map(LOOP_CODE, 0x1000, RX)
    code = (b"\x48\xc7\xc2" + struct.pack("<I", MMIO_PAGE)      # mov rdx, MMIO_PAGE
            + b"\x8a\x42\x01" + b"\x66\x8b\x5a\x02"             # mov al, [rdx+1]; mov bx, [rdx+2]
            + b"\x8b\x4a\x04" + b"\x48\x8b\x72\x08"             # mov ecx, [rdx+4]; mov rsi, [rdx+8]
            + b"\x48\x89\x72\x10" + b"\x89\x4a\x18"             # mov [rdx+16], rsi; mov [rdx+24], ecx
            + b"\x66\x89\x5a\x1e" + b"\x88\x42\x21" + b"\x90")  # mov [rdx+30], bx; mov [rdx+33], al; nop
    m.write(LOOP_CODE, code)

    def value(off: int, size: int) -> int:
        return (0x0101010101010101 * (off + 1)) & ((1 << 8 * size) - 1)
    reads, writes = [], []
    m.uc.mmio_map(MMIO_PAGE, 0x1000, lambda u, off, size, d: reads.append((off, size)) or value(off, 8), None,
                  lambda u, off, size, v, d: writes.append((off, size, v)), None)
    m.uc.emu_start(LOOP_CODE, LOOP_CODE + len(code) - 1)
    assert reads == [(1, 1), (2, 2), (4, 4), (8, 4), (12, 4)]
    assert writes == [(16, 4, value(8, 4)), (20, 4, value(12, 4)), (24, 4, value(4, 4)), (30, 2, value(2, 2)),
                      (33, 1, value(1, 1))]


class MmioOps:
    """The MemoryRegionOps that uc_mmio_map() made for the region at `addr` (QEMU reads ops->valid.accepts,
    then ops->read or ops->write, through it on its generic path), found from the region the engine's
    lookup returns: MemoryRegion.ops at word 2 points into its opaque (word 3), Unicorn's mmio_cbs, right
    after the user's callbacks and their data (4 words). Swapped words are put back on exit."""

    ACCEPTS = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint,
                               ctypes.c_bool, ctypes.c_uint32)
    READ = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint)
    # ops->read; ops->valid.accepts: after read, write, the *_with_attrs pair, endianness and (the struct
    # `valid` being 8-aligned from 0x28) its two sizes and `unaligned` (memory_region_access_valid loads 0x38)
    READ_SLOT, ACCEPTS_SLOT = 0, 7

    def __init__(self, m: Machine, addr: int):
        find = MappingCounter.PROTO(ctypes.cast(getattr(unicorn_lib.uclib, f"find_memory_mapping_{_suffix(m.arch)}"),
                                                ctypes.c_void_p).value)
        region = (ctypes.c_uint64 * 4).from_address(find(m.handle_int, addr))
        assert region[2] == region[3] + 32, "MemoryRegion.ops is not the mmio_cbs' ops"
        self.words = (ctypes.c_uint64 * 8).from_address(region[2])
        assert self.words[2] == self.words[3] == self.words[self.ACCEPTS_SLOT] == 0   # no *_with_attrs, no accepts
        self.saved = list(self.words)
        self.accepted: list[tuple[int, int, bool]] = []
        self.reads = 0
        self.accepts = self.ACCEPTS(lambda u, opaque, off, size, is_write, attrs:
                                    self.accepted.append((off, size, is_write)) or True)
        wrapper = self.READ(self.words[self.READ_SLOT])

        def counting(u, opaque, off, size):
            self.reads += 1
            return wrapper(u, opaque, off, size)
        self.read = self.READ(counting)

    def count_accepts(self) -> None:
        self.words[self.ACCEPTS_SLOT] = ctypes.cast(self.accepts, ctypes.c_void_p).value

    def count_reads(self) -> None:
        self.words[self.READ_SLOT] = ctypes.cast(self.read, ctypes.c_void_p).value

    def __enter__(self) -> "MmioOps":
        return self

    def __exit__(self, *exc) -> None:
        self.words[:] = self.saved


@pytest.mark.parametrize("arch", ARCHES)
def test_mmio_callbacks_called_directly(arch):
    """1,000 aligned loads and stores in a uc_mmio_map() region reach the callbacks without QEMU's generic
    path: memory_region_access_valid(), which calls ops->valid.accepts on every access there, is not run
    (the stock engine runs it 2,000 times). Control: once ops->read is no longer Unicorn's wrapper (a
    counting pass-through), 010 leaves the region to the generic path, and every load calls accepts and
    the counting read."""
    m, begin, end = _mmio_loop(arch, 1000)
    reads, writes = [], []
    m.uc.mmio_map(MMIO_PAGE, 0x1000, lambda u, off, size, d: reads.append((off, size)) or 0x1234ABCD, None,
                  lambda u, off, size, value, d: writes.append((off, size, value)), None)
    with MmioOps(m, MMIO_PAGE) as ops:
        ops.count_accepts()
        m.uc.emu_start(begin, end)
        assert reads == [(0, 4)] * 1000 and writes == [(8, 4, 0x1234ABCD)] * 1000
        assert ops.accepted == []
        m, begin, end = _mmio_loop(arch, 10)
        reads.clear()
    m.uc.mmio_map(MMIO_PAGE, 0x1000, lambda u, off, size, d: reads.append((off, size)) or 7, None,
                  lambda u, off, size, value, d: None, None)
    with MmioOps(m, MMIO_PAGE) as ops:
        ops.count_accepts()
        ops.count_reads()
        m.uc.emu_start(begin, end)
        assert reads == [(0, 4)] * 10 and ops.reads == 10
        assert ops.accepted == [(0, 4, False), (8, 4, True)] * 10


# --- 008: the store fast path under the virtual TLB ------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_store_fast_path_virtual_tlb(arch):
    """emsan's guest memory (machine/vmem.py: RWX arenas, each page's protection from the guest's page
    table through the virtual-TLB fill): a store to a page the guest maps RW goes straight to memory,
    one to a page it maps RWX keeps the slow path that invalidates translations. The stock engine and
    001 alone looked at the arena's RWX only: every store took the slow path."""
    from emsan.machine.vmem import GuestSpace
    m = Machine(arch)
    space = GuestSpace(m, 1 << 47)
    space.map(0x200000, 0x201000, RW)
    space.map(0x201000, 0x202000, RWX)
    probe = TlbProbe(m)
    assert probe.host(0x200010, MMU_DATA_STORE) == space.host(0x200010)
    assert probe.host(0x201010, MMU_DATA_LOAD) == space.host(0x201010)
    assert probe.host(0x201010, MMU_DATA_STORE) == 0


# --- 009: uc_emsan_host_ptr remembers regions --------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_host_ptr_remembers_regions(arch):
    """100 reads through uc_emsan_host_ptr in two regions look each region up once (the stock lookup ran
    at every call), and a change of the memory map is seen: a region unmapped and mapped again elsewhere
    in host memory gives the new host address, an unmapped one none."""
    host_ptr = _fn("uc_emsan_host_ptr", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t,
                   ctypes.c_bool)
    m = Machine(arch)
    a, b = ctypes.create_string_buffer(0x2000), ctypes.create_string_buffer(0x2000)
    page_a, page_b = (ctypes.addressof(a) + 0xFFF) & ~0xFFF, (ctypes.addressof(b) + 0xFFF) & ~0xFFF
    m.map_ptr(0x100000, 0x1000, RW, page_a)
    m.map(0x200000, 0x1000, RW)
    h = m.handle_int
    with MappingCounter(m) as count:
        for i in range(50):
            assert host_ptr(h, 0x100000 + 8 * i, 8, False) == page_a + 8 * i
            assert host_ptr(h, 0x200000 + 8 * i, 8, True)
    assert count.calls <= 2, count.calls
    m.unmap(0x100000, 0x1000)
    assert not host_ptr(h, 0x100010, 8, False)
    m.map_ptr(0x100000, 0x1000, RW, page_b)
    assert host_ptr(h, 0x100010, 8, False) == page_b + 0x10


# --- 011: heap shadow checks in translated code --------------------------------------------------------------
CHECK_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_bool, ctypes.c_size_t,
                            ctypes.c_void_p)
HEAP, CLEAN = 0x40000000, 0xFC


def _checked_accesses(arch: str) -> tuple[bytes, int, list[tuple[int, int, int, bool]]]:
    """Code making loads and stores in HEAP's first page, and the accesses the check must report when
    only the granule [HEAP+0x100, HEAP+0x108) is not clean: (pc offset, address offset, size, is_write).
    The misaligned 8-byte load at 0xFC starts in a clean granule and ends in the flagged one; those at
    0xF8 and 0x108 touch only clean granules."""
    if arch == "x86_64":
        ins = [b"\x48\xbb" + struct.pack("<Q", HEAP),      # mov rbx, HEAP
               b"\x48\x8b\x83\xf8\x00\x00\x00",         # mov rax, [rbx+0xf8]
               b"\x8b\x83\x00\x01\x00\x00",             # mov eax, [rbx+0x100]
               b"\x88\x83\x04\x01\x00\x00",             # mov [rbx+0x104], al
               b"\x48\x8b\x83\xfc\x00\x00\x00",         # mov rax, [rbx+0xfc]
               b"\x48\x8b\x83\x08\x01\x00\x00",         # mov rax, [rbx+0x108]
               b"\xf0\x0f\xc1\x8b\x00\x01\x00\x00",     # lock xadd [rbx+0x100], ecx
               b"\x90"]
    else:
        ins = [struct.pack("<I", 0xD2A00001 | (HEAP >> 16) << 5),   # movz x1, HEAP >> 16, lsl 16
               struct.pack("<I", 0xF9400020 | 31 << 10),            # ldr x0, [x1, 0xf8]
               struct.pack("<I", 0xB9400020 | 64 << 10),            # ldr w0, [x1, 0x100]
               struct.pack("<I", 0x39000020 | 0x104 << 10),         # strb w0, [x1, 0x104]
               struct.pack("<I", 0xF8400020 | 0xFC << 12),          # ldur x0, [x1, 0xfc]
               struct.pack("<I", 0xF9400020 | 33 << 10),            # ldr x0, [x1, 0x108]
               struct.pack("<I", 0xD503201F)]                       # nop
    pcs = [sum(len(i) for i in ins[:n]) for n in range(len(ins))]
    want = [(pcs[2], 0x100, 4, False), (pcs[3], 0x104, 1, True), (pcs[4], 0xFC, 8, False)]
    if arch == "x86_64":   # a read-modify-write: its load and its store, 4 bytes each
        want += [(pcs[6], 0x100, 4, False), (pcs[6], 0x100, 4, True)]
    return b"".join(ins), pcs[-1], want


def _checked(m: Machine, code: bytes, api: str, table, key: int):
    """`code` at LOOP_CODE and HEAP mapped on m, HEAP checked through `api` (uc_emsan_shadow_check or
    uc_emsan_tag_check) against `table` with `key`: (the check function, the list the callback appends
    (pc offset, address - HEAP (a tag stays in the top byte), size, is_write) to, recovering each exact PC,
    and what must stay alive while the check is on)."""
    check = _fn(api, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p,
                ctypes.c_uint8, ctypes.c_void_p, ctypes.c_void_p)
    restore = _fn(f"cpu_restore_state_{_suffix(m.arch)}", ctypes.c_bool, ctypes.c_void_p, ctypes.c_size_t,
                  ctypes.c_bool)
    m.map(LOOP_CODE, 0x1000, RX)
    m.write(LOOP_CODE, code)
    m.map(HEAP, 0x10000, RW)
    seen: list[tuple[int, int, int, bool]] = []
    pc_reg = x86_const.UC_X86_REG_RIP if m.arch == "x86_64" else arm64_const.UC_ARM64_REG_PC
    cpu = _cpu(m)

    def cb(u, addr, size, is_write, host_pc, d):
        assert host_pc
        assert restore(cpu, host_pc, False)
        seen.append((m.uc.reg_read(pc_reg) - LOOP_CODE, addr - HEAP, size, bool(is_write)))
    cb_ptr = CHECK_CB(cb)
    assert check(m.handle_int, HEAP, 0x10000, ctypes.addressof(table), key,
                 ctypes.cast(cb_ptr, ctypes.c_void_p), None) == 0
    return check, seen, (table, cb_ptr)


def _sees_then_off(m: Machine, check, seen: list, end: int, want: list) -> None:
    """Two runs of the code (TLB misses: the helpers check; then translated code does) see exactly `want`;
    with the check turned off, a third sees nothing."""
    for _ in range(2):
        seen.clear()
        m.uc.emu_start(LOOP_CODE, LOOP_CODE + end)
        assert seen == want
    assert check(m.handle_int, 0, 0, None, 0, None, None) == 0
    seen.clear()
    m.uc.emu_start(LOOP_CODE, LOOP_CODE + end)
    assert seen == []


def _shadow_checked(arch: str, code: bytes, granules: dict[int, int]):
    """_checked() with uc_emsan_shadow_check and a shadow that is clean but for `granules` (offset in HEAP
    -> byte): (machine, check function, accesses seen, what must stay alive)."""
    m = Machine(arch)
    shadow = (ctypes.c_uint8 * (0x10000 // 8 + 0x1000))(*([CLEAN] * (0x10000 // 8 + 0x1000)))
    for off, byte in granules.items():
        shadow[off // 8] = byte
    return (m, *_checked(m, code, "uc_emsan_shadow_check", shadow, CLEAN))


@pytest.mark.parametrize("arch", ARCHES)
def test_inline_shadow_check_sees_flagged_granules(arch):
    """uc_emsan_shadow_check: the callback runs for exactly the accesses whose first granule (or, when
    misaligned, next granule) is not clean, once each, with the address, size, direction and a host
    return address from which QEMU's cpu_restore_state() gives the exact PC of the instruction; the
    same on the first run (TLB misses: the helpers check) and the second (translated code checks).
    Accesses outside the range (the code itself) are never seen; turning the check off stops it."""
    code, end, want = _checked_accesses(arch)
    m, check, seen, _alive = _shadow_checked(arch, code, {0x100: 0x00})
    _sees_then_off(m, check, seen, end, want)


# --- 018: KASAN's partial granules in translated code ------------------------------------------------------
def _partial_accesses(arch: str) -> tuple[bytes, int, list[tuple[int, int, int, bool]]]:
    """Accesses around the granule [HEAP+0x120, HEAP+0x128) whose shadow says its first 3 bytes are
    accessible, and those the check must report: the ones reaching byte 3 or beyond (a byte load at
    0x123, 2 bytes at 0x122, 4 at 0x120, a byte store at 0x124); a byte at 0x122, 2 bytes at 0x120, 2
    misaligned bytes at 0x121 and a byte store at 0x122 stay inside and are not seen."""
    if arch == "x86_64":
        ins = [b"\x48\xbb" + struct.pack("<Q", HEAP),      # mov rbx, HEAP
               b"\x8a\x83\x22\x01\x00\x00",             # mov al, [rbx+0x122]
               b"\x8a\x83\x23\x01\x00\x00",             # mov al, [rbx+0x123]
               b"\x66\x8b\x83\x20\x01\x00\x00",         # mov ax, [rbx+0x120]
               b"\x66\x8b\x83\x22\x01\x00\x00",         # mov ax, [rbx+0x122]
               b"\x8b\x83\x20\x01\x00\x00",             # mov eax, [rbx+0x120]
               b"\x66\x8b\x83\x21\x01\x00\x00",         # mov ax, [rbx+0x121]
               b"\x88\x83\x22\x01\x00\x00",             # mov [rbx+0x122], al
               b"\x88\x83\x24\x01\x00\x00",             # mov [rbx+0x124], al
               b"\x90"]
    else:
        ins = [struct.pack("<I", 0xD2A00001 | (HEAP >> 16) << 5)    # movz x1, HEAP >> 16, lsl 16
               + struct.pack("<I", 0x91040022),                     # add x2, x1, 0x100
               struct.pack("<I", 0x39400020 | 0x122 << 10),         # ldrb w0, [x1, 0x122]
               struct.pack("<I", 0x39400020 | 0x123 << 10),         # ldrb w0, [x1, 0x123]
               struct.pack("<I", 0x79400020 | 0x90 << 10),          # ldrh w0, [x1, 0x120]
               struct.pack("<I", 0x79400020 | 0x91 << 10),          # ldrh w0, [x1, 0x122]
               struct.pack("<I", 0xB9400020 | 0x48 << 10),          # ldr w0, [x1, 0x120]
               struct.pack("<I", 0x78400040 | 0x21 << 12),          # ldurh w0, [x2, 0x21]
               struct.pack("<I", 0x39000020 | 0x122 << 10),         # strb w0, [x1, 0x122]
               struct.pack("<I", 0x39000020 | 0x124 << 10),         # strb w0, [x1, 0x124]
               struct.pack("<I", 0xD503201F)]                       # nop
    pcs = [sum(len(i) for i in ins[:n]) for n in range(len(ins))]
    want = [(pcs[2], 0x123, 1, False), (pcs[4], 0x122, 2, False), (pcs[5], 0x120, 4, False), (pcs[8], 0x124, 1, True)]
    return b"".join(ins), pcs[-1], want


@pytest.mark.parametrize("arch", ARCHES)
def test_inline_shadow_check_partial_granules(arch):
    """uc_emsan_shadow_check with a partial granule (shadow 3: its first 3 bytes accessible): the callback
    sees exactly the accesses that reach past them, with exact PCs, in the helpers (first run) and in
    translated code (second run), where accesses inside them go straight to memory (018)."""
    code, end, want = _partial_accesses(arch)
    m, check, seen, _alive = _shadow_checked(arch, code, {0x120: 3 ^ CLEAN})
    _sees_then_off(m, check, seen, end, want)


# --- 015: pointer-tag checks in translated code ----------------------------------------------------------------
TAG_KEY = 0xFE


def _tag_accesses() -> tuple[bytes, int, list[tuple[int, int, int, bool]]]:
    """arm64 code accessing HEAP's first page through pointers tagged 0x2A (x1, x2) and 0xFF (x3), and
    what the check must see when granule 0x100 carries tag 0x2A, granule 0x110 tag 0x3B and every other
    one no tag: (pc offset, tagged address offset, size, is_write). The loads at 0x100 and 0x10C stay in
    the matching granule; the misaligned one at 0x10C (through x2 = x1 + 0x100) ends in the next; DC ZVA
    zeroes the 64 bytes from 0x100 (one access); the match-all tag is the callback's to judge."""
    ins = [struct.pack("<I", 0xD2A00001 | (HEAP >> 16) << 5),   # movz x1, HEAP >> 16, lsl 16
           struct.pack("<I", 0xF2E54001),                       # movk x1, 0x2a00, lsl 48 (top byte 0x2a)
           struct.pack("<I", 0xB2400000 | 0x1F << 5 | 3 | 7 << 10 | 8 << 16),  # orr x3, xzr, #0xff00000000000000
           struct.pack("<I", 0xAA010063),                       # orr x3, x3, x1
           struct.pack("<I", 0x91040022),                       # add x2, x1, 0x100
           struct.pack("<I", 0xF9400020 | 32 << 10),            # ldr x0, [x1, 0x100]
           struct.pack("<I", 0xB9400020 | 67 << 10),            # ldr w0, [x1, 0x10c]
           struct.pack("<I", 0xF8400040 | 0xC << 12),           # ldur x0, [x2, 0xc]
           struct.pack("<I", 0x39000020 | 0x110 << 10),         # strb w0, [x1, 0x110]
           struct.pack("<I", 0xF9400020 | 31 << 10),            # ldr x0, [x1, 0xf8]
           struct.pack("<I", 0xD50B7420 | 2),                   # dc zva, x2
           struct.pack("<I", 0xF9400060 | 32 << 10),            # ldr x0, [x3, 0x100]
           struct.pack("<I", 0xD503201F)]                       # nop
    pc = [4 * n for n in range(len(ins))]
    t2a, tff = 0x2A << 56, 0xFF << 56
    want = [(pc[7], t2a | 0x10C, 8, False), (pc[8], t2a | 0x110, 1, True), (pc[9], t2a | 0xF8, 8, False),
            (pc[10], t2a | 0x100, 64, True), (pc[11], tff | 0x100, 8, False)]
    return b"".join(ins), pc[-1], want


def test_inline_tag_check_sees_mismatched_tags():
    """uc_emsan_tag_check (with the tag kept in the TLB address, 014): the callback runs for exactly the
    accesses whose first granule (or, when misaligned, last granule) carries another tag than the
    pointer's top byte, with the tagged address, size, direction and a host return address from which
    cpu_restore_state() gives the exact PC; the same when the helpers check (first run: TLB misses) and
    when translated code does (second run). Turned off, nothing is seen; x86-64 guests are refused."""
    m = Machine("arm64")
    code, end, want = _tag_accesses()

    def fill(uc_, vaddr, access, entry, ud):
        entry.paddr = vaddr & 0x00FF_FFFF_FFFF_F000
        entry.perms = 7
        return True
    m.uc.hook_add(uc.UC_HOOK_TLB_FILL, fill)
    m.uc.ctl_set_tlb_mode(uc.UC_TLB_VIRTUAL)
    m.tagged_tlb(True)
    tags = (ctypes.c_uint8 * (0x10000 // 16 + 0x1000))()          # 0: no tag (0xFE ^ TAG_KEY)
    tags[0x100 // 16], tags[0x110 // 16] = 0x2A ^ TAG_KEY, 0x3B ^ TAG_KEY
    check, seen, alive = _checked(m, code, "uc_emsan_tag_check", tags, TAG_KEY)
    _sees_then_off(m, check, seen, end, want)
    x86 = Machine("x86_64")
    assert check(x86.handle_int, HEAP, 0x10000, ctypes.addressof(tags), TAG_KEY,
                 ctypes.cast(alive[1], ctypes.c_void_p), None) == uc.UC_ERR_ARCH


# --- 012: block hook calls only where a filter wants them ---------------------------------------------------
FILTER_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


def _countdown(arch: str) -> tuple[bytes, int, int]:
    """A 5-round countdown loop: (code, loop head offset, end offset). Blocks: the first runs from the
    start through the first branch, the loop head's runs 4 more times, then the tail's once."""
    if arch == "x86_64":   # mov ecx, 5; L: dec ecx; jnz L; nop; nop
        return b"\xb9\x05\x00\x00\x00\xff\xc9\x75\xfc\x90\x90", 5, 10
    # movz w1, 5; L: subs w1, w1, 1; b.ne L; nop; nop
    return struct.pack("<5I", 0x528000A1, 0x71000421, 0x54FFFFE1, 0xD503201F, 0xD503201F), 4, 16


@pytest.mark.parametrize("arch", ARCHES)
def test_block_filter_drops_calls_of_refused_blocks(arch):
    """uc_emsan_block_filter: the filter is asked when a block is translated, with its address and
    size; the hook then runs at the blocks it accepted only (every run, from the translation cache
    too), and at all of them again once a second block hook exists or the filter is removed."""
    code, loop, end = _countdown(arch)
    m = Machine(arch)
    m.map(LOOP_CODE, 0x1000, RX)
    m.write(LOOP_CODE, code)
    ran, asked = [], []
    h = m.uc.hook_add(uc.UC_HOOK_BLOCK, lambda u, addr, size, d: ran.append(addr - LOOP_CODE))

    def want(u, addr, size, d):
        asked.append((addr - LOOP_CODE, size))
        return addr - LOOP_CODE != loop
    filt = FILTER_CB(want)
    set_filter = _fn("uc_emsan_block_filter", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                     ctypes.c_void_p)
    m.uc.emu_start(LOOP_CODE, LOOP_CODE + end)
    tail = loop + (4 if arch == "x86_64" else 8)                # after the loop's branch
    assert ran == [0, loop, loop, loop, loop, tail]
    assert set_filter(m.handle_int, h, ctypes.cast(filt, ctypes.c_void_p), None) == 0
    for _ in range(2):
        ran.clear()
        m.uc.emu_start(LOOP_CODE, LOOP_CODE + end)
        assert ran == [0, tail]
    first = len(code[:loop]) + (4 if arch == "x86_64" else 8)
    # asked when translated: once for blocks the cache keeps (the block ending at the run's exit
    # address is translated anew by each run)
    assert set(asked) == {(0, first), (loop, first - loop), (tail, end - tail)}
    assert asked.count((0, first)) == asked.count((loop, first - loop)) == 1
    other = m.uc.hook_add(uc.UC_HOOK_BLOCK, lambda u, addr, size, d: None)
    m.uc.ctl_flush_tb()
    ran.clear()
    m.uc.emu_start(LOOP_CODE, LOOP_CODE + end)
    assert ran == [0, loop, loop, loop, loop, tail]
    m.uc.hook_del(other)
    assert set_filter(m.handle_int, h, None, None) == 0
    ran.clear()
    m.uc.emu_start(LOOP_CODE, LOOP_CODE + end)
    assert ran == [0, loop, loop, loop, loop, tail]


# --- 013: where the CPU state keeps a register ----------------------------------------------------------------
def _gpr_ids(arch: str) -> list[int]:
    if arch == "x86_64":
        names = ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"] + [f"R{i}" for i in range(8, 16)]
        return [getattr(x86_const, f"UC_X86_REG_{n}") for n in names]
    return ([getattr(arm64_const, f"UC_ARM64_REG_X{i}") for i in range(31)]
            + [arm64_const.UC_ARM64_REG_SP])


@pytest.mark.parametrize("arch", ARCHES)
def test_register_pointers(arch):
    """uc_emsan_reg_ptr: for every general-purpose register, the address reads what uc_reg_read reads
    and a write through it is what uc_reg_read then reads, before and after guest code ran; the PC is
    readable there but its writes go through uc_reg_write (NULL); other registers have none."""
    reg_ptr = _fn("uc_emsan_reg_ptr", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_bool)
    code, loop, end = _countdown(arch)
    m = Machine(arch)
    m.map(LOOP_CODE, 0x1000, RX)
    m.write(LOOP_CODE, code)
    h = m.handle_int
    ids = _gpr_ids(arch)
    for i, rid in enumerate(ids):
        m.uc.reg_write(rid, 0x1111_0000_0000_0000 + i)
    m.uc.emu_start(LOOP_CODE, LOOP_CODE + end)           # the loop counts down its register to 0
    for i, rid in enumerate(ids):
        p = reg_ptr(h, rid, False)
        assert p and p == reg_ptr(h, rid, True)
        cell = ctypes.c_uint64.from_address(p)
        assert cell.value == m.uc.reg_read(rid)
        cell.value = 0x2222_0000_0000_0000 + i
        assert m.uc.reg_read(rid) == 0x2222_0000_0000_0000 + i
    pc = x86_const.UC_X86_REG_RIP if arch == "x86_64" else arm64_const.UC_ARM64_REG_PC
    p = reg_ptr(h, pc, False)
    assert p and ctypes.c_uint64.from_address(p).value == m.uc.reg_read(pc) == LOOP_CODE + end
    assert not reg_ptr(h, pc, True)
    other = x86_const.UC_X86_REG_EFLAGS if arch == "x86_64" else arm64_const.UC_ARM64_REG_NZCV
    assert not reg_ptr(h, other, False) and not reg_ptr(h, other, True)


# --- bench/engine.py ----------------------------------------------------------------------------------------
def test_bench_engine_smoke(tmp_path):
    """The engine benchmark runs and writes its JSON (figures are never asserted)."""
    if shutil.which("qemu-x86_64") is None:
        pytest.skip("qemu-x86_64 is not installed")
    out = tmp_path / "engine.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "engine.py"), "--reps", "1", "--scale", "0.002",
                        "--arch", "x86_64", "--workloads", "compute", "--no-wheel", "--no-programs",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    assert res["meta"]["engine"] == unicorn_lib.manifest()["engine"]
    (wl,) = res["workloads"]
    assert wl["outputs_match"] and wl["name"] == "compute" and wl["arch"] == "x86_64"
    assert set(wl["ratio_to_qemu_cpu"]) == {"bare-emsan", "emsan"}
    assert all(len(v) == 1 and v[0] > 0 for v in wl["cpu"].values())


# --- 016: one page's TLB entries forgotten ----------------------------------------------------------------------
def _two_page_loads(arch: str) -> bytes:
    """Loads of the words at DATA_A and DATA_B into two registers (rax, rbx / x2, x3)."""
    if arch == "x86_64":     # mov rax, [DATA_A]; mov rbx, [DATA_B]; nop
        return (b"\x48\x8b\x04\x25" + struct.pack("<I", DATA_A) + b"\x48\x8b\x1c\x25" + struct.pack("<I", DATA_B)
                + b"\x90")
    # movz x0, DATA_A >> 16, lsl 16; movz x1, DATA_B >> 16, lsl 16; ldr x2, [x0]; ldr x3, [x1]; nop
    return struct.pack("<5I", 0xD2A00000 | (DATA_A >> 16) << 5, 0xD2A00001 | (DATA_B >> 16) << 5,
                       0xF9400002, 0xF9400023, 0xD503201F)


DATA_A, DATA_B, DATA_ALIAS = 0x400000, 0x410000, 0x420000


@pytest.mark.parametrize("arch", ARCHES)
def test_tlb_flush_page_forgets_one_page(arch):
    """uc_emsan_tlb_flush_page: after it, the virtual-TLB fill is asked again for that page only (its new
    answer takes effect: the load reads the alias), every other page keeps its entry; UC_CTL_TLB_FLUSH, for
    comparison, has every page filled again. Fails without the patch: no such export."""
    flush_page = _fn("uc_emsan_tlb_flush_page", ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64)
    m = Machine(arch)
    code = _two_page_loads(arch)
    m.map(LOOP_CODE, 0x1000, RX)
    m.write(LOOP_CODE, code)
    for page, value in ((DATA_A, 0x1111), (DATA_B, 0x2222), (DATA_ALIAS, 0x3333)):
        m.map(page, 0x1000, RW)
        m.write(page, struct.pack("<Q", value))
    fills: list[int] = []
    alias = {DATA_A: DATA_A}

    def fill(uc_, vaddr, access, entry, ud):
        fills.append(vaddr & ~0xFFF)
        entry.paddr = alias.get(vaddr & ~0xFFF, vaddr & ~0xFFF)
        entry.perms = 7
        return True
    m.uc.hook_add(uc.UC_HOOK_TLB_FILL, fill)
    m.uc.ctl_set_tlb_mode(uc.UC_TLB_VIRTUAL)
    a, b = ("rax", "rbx") if arch == "x86_64" else ("x2", "x3")

    def run() -> tuple[set[int], int, int]:
        fills.clear()
        m.uc.emu_start(LOOP_CODE, LOOP_CODE + len(code) - (1 if arch == "x86_64" else 4))
        return set(fills), m.reg(a), m.reg(b)
    assert run() == ({LOOP_CODE, DATA_A, DATA_B}, 0x1111, 0x2222)
    assert run() == (set(), 0x1111, 0x2222)
    alias[DATA_A] = DATA_ALIAS
    assert flush_page(m.handle_int, DATA_A + 0x123) == 0
    assert run() == ({DATA_A}, 0x3333, 0x2222)
    m.uc.ctl(uc.UC_CTL_TLB_FLUSH, uc.UC_CTL_IO_WRITE)
    assert run() == ({LOOP_CODE, DATA_A, DATA_B}, 0x3333, 0x2222)


# --- 017: gated code hooks ------------------------------------------------------------------------------------
def _gate(m: Machine, hh: int, word: int, add: int, base: int, size: int) -> int:
    gate = _fn("uc_emsan_hook_gate", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
               ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64)
    return gate(m.handle_int, hh, word, add, base, size)


@pytest.mark.parametrize("arch", ARCHES)
def test_hook_gate_counts_down(arch):
    """A countdown gate (word -= 1, call at 0): of 10 calls of the hooked function, the hook sees every
    third (it rearms the countdown itself), with the instruction's size; the word is decremented at each
    call, by translated code or by the helper when a second hook shares the address. Fails without the
    patch: no such export."""
    for shared in (False, True):
        m, begin, end = _call_loop(arch, 10)
        word = ctypes.c_uint64(3)
        seen, others = [], []

        def hook(u, address, size, ud):
            seen.append((address, size, word.value))
            word.value = 3
        hh = m.uc.hook_add(uc.UC_HOOK_CODE, hook, None, LOOP_FUNC, LOOP_FUNC)
        if shared:
            m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: others.append(a), None, LOOP_FUNC, LOOP_FUNC)
        assert _gate(m, hh, ctypes.addressof(word), -1, 0, 1) == 0
        m.uc.emu_start(begin, end)
        assert seen == [(LOOP_FUNC, 1 if arch == "x86_64" else 4, 0)] * 3
        assert word.value == 2
        assert others == ([LOOP_FUNC] * 10 if shared else [])


@pytest.mark.parametrize("arch", ARCHES)
def test_hook_gate_on_a_register(arch):
    """A range gate on a guest register's place in the CPU state (uc_emsan_reg_ptr): the hook runs only
    while the register is in [base, base + size), as the instruction sees it, also where the register was
    set by the instruction just before, in the same block (the gated instruction starts its own block);
    deleted, the hook runs no more; without the gate, at every call."""
    reg_ptr = _fn("uc_emsan_reg_ptr", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_bool)
    m, begin, end = _call_loop(arch, 6)
    counter = x86_const.UC_X86_REG_RCX if arch == "x86_64" else arm64_const.UC_ARM64_REG_X19
    seen: list[int] = []
    hh = m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: seen.append(u.reg_read(counter)), None,
                       LOOP_FUNC, LOOP_FUNC)
    assert _gate(m, hh, reg_ptr(m.handle_int, counter, False), 0, 2, 3) == 0
    m.uc.emu_start(begin, end)
    assert seen == [4, 3, 2]
    # fall-through: the counter is set right before the gated instruction, in straight-line code
    if arch == "x86_64":     # mov ecx, 7; mov ecx, 3; nop (gated); nop
        code, at = b"\xb9\x07\x00\x00\x00\xb9\x03\x00\x00\x00\x90\x90", 10
    else:                    # movz w19, 7; movz w19, 3; nop (gated); nop
        code, at = struct.pack("<4I", 0x528000F3, 0x52800073, 0xD503201F, 0xD503201F), 8
    m2 = Machine(arch)
    m2.map(LOOP_CODE, 0x1000, RX)
    m2.write(LOOP_CODE, code)
    m2.uc.reg_write(counter, 0)
    hits: list[int] = []
    h2 = m2.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: hits.append(u.reg_read(counter)), None,
                        LOOP_CODE + at, LOOP_CODE + at)
    assert _gate(m2, h2, reg_ptr(m2.handle_int, counter, False), 0, 3, 1) == 0
    m2.uc.emu_start(LOOP_CODE, LOOP_CODE + len(code) - (1 if arch == "x86_64" else 4))
    assert hits == [3]
    # deleted: no more calls (and no use of the gate's word); ungated: every call
    m.uc.hook_del(hh)
    seen.clear()
    m.uc.emu_start(begin, end)
    assert seen == []
    hh = m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: seen.append(u.reg_read(counter)), None,
                       LOOP_FUNC, LOOP_FUNC)
    assert _gate(m, hh, reg_ptr(m.handle_int, counter, False), 0, 2, 3) == 0
    m.uc.ctl_flush_tb()                             # a hook on translated code: Unicorn's rule
    m.uc.emu_start(begin, end)
    assert seen == [4, 3, 2]
    seen.clear()
    assert _gate(m, hh, None, 0, 0, 0) == 0          # its blocks are translated anew, without the test
    m.uc.emu_start(begin, end)
    assert seen == [6, 5, 4, 3, 2, 1]
    assert _gate(m, 0, None, 0, 0, 0) != 0


# --- 019: a PC written by a hook continues inside cpu_exec ---------------------------------------------------
def _readable(addr: int, size: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr and addr + size <= hi and line.split()[1][0] == "r":
                return True
    return False


class ExecEntries(SlotCounter):
    """Counts cpu_exec()'s entries through CPUClass.cpu_exec_enter. CPUState.cc follows CPUState.uc (the
    engine's handle); in the class, cpu_exec_enter is the seventh slot after tlb_fill, which in
    virtual-TLB mode holds unicorn_fill_tlb_<arch> (QEMU 5.0's CPUClass: tlb_fill, tlb_fill_cpu,
    get_phys_page_debug, get_phys_page_attrs_debug, asidx_from_attrs, debug_check_watchpoint,
    debug_excp_handler, cpu_exec_enter)."""
    PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    def __init__(self, m: Machine):
        fill = ctypes.cast(getattr(unicorn_lib.uclib, f"unicorn_fill_tlb_{_suffix(m.arch)}"), ctypes.c_void_p).value
        words = (ctypes.c_uint64 * 8192).from_address(_cpu(m))
        at = [i for i in range(8191) if words[i] == m.handle_int]       # CPUState's, then the env's
        assert at and _readable(words[at[0] + 1], 8 * 128), "CPUState.uc, cc not found"
        cls = (ctypes.c_uint64 * 128).from_address(words[at[0] + 1])
        hits = [i for i in range(120) if cls[i] == fill]
        assert len(hits) == 1, "CPUClass.tlb_fill not found"
        self._count(cls, hits[0] + 7)


@pytest.mark.parametrize("arch", ARCHES)
def test_pc_write_in_hook_stays_in_cpu_exec(arch):
    """A code hook that stands in for a function (writes the return value and the PC, as emsan's
    allocator does at every intercepted call) leaves translated code at the hook but no longer leaves
    and re-enters cpu_exec(): ten such calls, one entry (eleven without the patch); the guest runs on at
    the written PC with the written registers, and a PC write followed by uc_emu_stop() still stops
    there."""
    m, begin, end = _call_loop(arch, 10)
    m.uc.hook_add(uc.UC_HOOK_TLB_FILL, _identity_fill)
    m.uc.ctl_set_tlb_mode(uc.UC_TLB_VIRTUAL)
    ret = "rax" if arch == "x86_64" else "x0"
    calls = []

    def stand_in(u, address, size, ud):              # return 7 to the caller without running FUNC
        calls.append(address)
        if arch == "x86_64":
            sp = m.reg("rsp")
            m.set_reg("rsp", sp + 8)
            target = struct.unpack("<Q", bytes(u.mem_read(sp, 8)))[0]
        else:
            target = m.reg("x30")
        m.set_reg(ret, 7)
        m.pc = target
    h = m.uc.hook_add(uc.UC_HOOK_CODE, stand_in, None, LOOP_FUNC, LOOP_FUNC)
    m.uc.emu_start(begin, end)                        # translated, TLB filled, before counting
    with ExecEntries(m) as entries:
        m.uc.emu_start(begin, end)
    assert entries.calls == 1
    assert calls == [LOOP_FUNC] * 20 and m.reg(ret) == 7 and m.pc == end
    m.uc.hook_del(h)
    m.uc.hook_add(uc.UC_HOOK_CODE, lambda u, a, s, d: (setattr(m, "pc", LOOP_CODE), u.emu_stop()), None,
                  LOOP_FUNC, LOOP_FUNC)
    m.uc.ctl_flush_tb()
    m.uc.emu_start(begin, end)
    assert m.pc == LOOP_CODE


def _identity_fill(uc_, vaddr, access, entry, ud):
    entry.paddr = vaddr & ~0xFFF
    entry.perms = 7
    return True
