"""AFL++'s Unicorn mode, natively (src/emsan/native/afl.c): the fork server, edge coverage from a
C block hook over the code ranges asked for, CompCov for multi-byte comparisons, and blocks a
child translated are translated again in the fork server for the children after it.

Why not unicornafl: its only PyPI release (2.1.0) cannot run a child. Its block hook indexes
AFL++'s 64 KiB map with an unmasked 32-bit hash and the first block faults (fixed upstream
after the release, never published), and its Python wrapper does not import on Python 3.11
(`distutils.sysconfig`). The protocol is small and emsan needs more of it anyway: coverage
limited to the program (qemu mode's default), and a persistent loop that restores emsan's own
heap between inputs.
"""
from __future__ import annotations

from unicorn import unicorn_const as uconst

from emsan.machine import native

# uc_ctl_request_cache(): UC_CTL_READ_WRITE(UC_CTL_TB_REQUEST_CACHE, 2)
REQUEST_CACHE = uconst.UC_CTL_TB_REQUEST_CACHE | (2 << 26) | (uconst.UC_CTL_IO_READ_WRITE << 30)

NO_AFL, CHILD, FINISHED = 0, 1, 2


class ForkServer:
    """AFL++'s target side for one engine: `handle` is its uc_engine pointer (a Machine's
    handle_int, or int(uc._uch.value) of a Uc made elsewhere), `arch` "x86_64" or "arm64"."""

    def __init__(self, handle: int, arch: str):
        self.ffi, self.lib = native.load()
        self.arch = arch
        self.a = self.lib.emsan_afl_new(self.ffi.cast("void *", handle), REQUEST_CACHE)
        if self.a == self.ffi.NULL:
            raise MemoryError("no memory for the fork server")
        self._len = self.ffi.new("uint32_t *")
        self._compcov_all = False

    @property
    def has_afl(self) -> bool:
        return bool(self.lib.emsan_afl_has_afl(self.a))

    def cover(self, begin: int, end: int, compcov: bool = True) -> None:
        """Edge coverage (and CompCov) for the code in [begin, end]; comparisons are logged for
        CmpLog in the fork server afl-fuzz starts for it, whatever `compcov` says."""
        lib = self.lib
        if lib.emsan_afl_cover(self.a, uconst.UC_HOOK_BLOCK, begin, end):
            raise RuntimeError("cannot add the coverage hook")
        if not compcov and not self.lib.emsan_afl_cmplog(self.a):
            return
        if self.arch == "x86_64":
            # x86's translator marks comparisons (and subtractions) itself.
            for flag in (uconst.UC_TCG_OP_FLAG_CMP, uconst.UC_TCG_OP_FLAG_DIRECT):
                lib.emsan_afl_compcov(self.a, uconst.UC_HOOK_TCG_OPCODE, uconst.UC_TCG_OP_SUB, flag, begin, end)
        elif not self._compcov_all:
            # arm64's does not: every subtraction is seen (flags 0, tcg_gen_sub_i32/i64), CMP and
            # SUBS included, and unicorn 2.1.3's aarch64 translator never sets the PC that
            # bounded TCG-opcode hooks are matched against, so the hook covers every address
            # and the entries are told apart by the preceding block.
            self._compcov_all = True
            lib.emsan_afl_compcov(self.a, uconst.UC_HOOK_TCG_OPCODE, uconst.UC_TCG_OP_SUB, 0, 1, 0)

    def serve(self) -> int:
        """NO_AFL (run the one input yourself), CHILD (run AFL++'s input) or FINISHED (the
        server's end: AFL++ has gone)."""
        if self.lib.emsan_afl_share_cache(self.a, uconst.UC_HOOK_EDGE_GENERATED):
            raise RuntimeError("cannot add the translation hook")
        ret = self.lib.emsan_afl_serve(self.a)
        if ret < 0:
            raise OSError("the fork server lost AFL++ (protocol error)")
        return ret

    def input(self, path: str | None) -> bytes:
        """The current input: AFL++'s shared-memory test case, else the file it writes."""
        p = self.lib.emsan_afl_input(self.a, self._len)
        if p != self.ffi.NULL:
            return bytes(self.ffi.buffer(p, self._len[0]))
        if path is None:
            return b""
        with open(path, "rb") as f:
            return f.read()

    def next(self) -> bool:
        """Persistent mode: this input is done; True once the next one is in place."""
        return bool(self.lib.emsan_afl_next(self.a))

    def map_bytes(self) -> bytes:
        return bytes(self.ffi.buffer(self.lib.emsan_afl_map(self.a), 1 << 16))
