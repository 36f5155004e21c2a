"""Hostile input (issue 14): what a guest, an ELF file or an option does must never crash, hang
or escape emsan. The guest is tests/guest/hostile.c; its output under emsan is compared with a
native x86-64 run (system-call argument checks and /proc are the kernel's generic code: the
native x86-64 answers are the oracle for arm64 too; qemu-user answers some of these itself)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import pytest

from conftest import build, emsan, native

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
X86_ONLY = ("2^47",)


def one_line(got: subprocess.CompletedProcess, *phrases: str) -> str:
    text = got.stderr.decode(errors="replace")
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("emsan: "), lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def reference(case: str, *args: str) -> bytes:
    """The native x86-64 run of hostile CASE ARGS: the oracle for both architectures."""
    return native(build("hostile", "x86_64", "static"), case, *args, env=ENV).stdout


def guest_lines(out: bytes, arch: str) -> list[str]:
    lines = out.decode().splitlines()
    return [line for line in lines if arch == "x86_64" or not any(k in line for k in X86_ONLY)]


# --- 1. the guest's own /proc ----------------------------------------------------------------------------
def test_proc_is_the_guests_own_through_every_spelling(arch, tmp_path):
    (tmp_path / "nat").mkdir()
    (tmp_path / "ems").mkdir()
    ref = native(build("hostile", "x86_64", "static"), "proc", str(tmp_path / "nat"), env=ENV)
    got = emsan("run", "--mode", "none", build("hostile", arch, "static"), "proc", str(tmp_path / "ems"), env=ENV)
    assert got.returncode == ref.returncode == 0, got.stderr
    assert got.stderr == b""
    want = ref.stdout.decode().replace(str(tmp_path / "nat"), "WORKDIR")
    assert got.stdout.decode().replace(str(tmp_path / "ems"), "WORKDIR") == want
    assert "a foreign process 0" in want and "this program's code 1" in want


def test_emsans_own_files_are_out_of_reach(tmp_path):
    """emsan's JSON file (and its other descriptors) survive a guest that opens every descriptor
    number it did not open itself through /dev/fd/N and /proc/self/fd/N, truncates and writes it."""
    out = tmp_path / "r.json"
    got = emsan("run", "--json", str(out), build("hostile", "x86_64", "static"), "proc", str(tmp_path), env=ENV)
    assert got.returncode == 0 and got.stderr == b""
    doc = json.loads(out.read_text())
    assert (doc["tool"], doc["reports"], [scan["new"] for scan in doc["leak_scans"]]) == ("emsan", [], [0])


# --- 2. system-call arguments -----------------------------------------------------------------------------
def test_hostile_arguments_get_the_kernels_errors(arch):
    want = guest_lines(reference("args"), arch)
    got = emsan("run", "--mode", "none", build("hostile", arch, "static"), "args", env=ENV)
    assert got.stderr == b"", got.stderr.decode()
    assert got.returncode == 0
    assert guest_lines(got.stdout, arch) == want
    assert "write SIZE_MAX: errno 14" in want and "pread64 offset -1: errno 22" in want


def measured(arch: str, *args: str) -> tuple[int, bytes, bytes, float]:
    """emsan run --mode none hostile ARGS: (exit status, stdout, stderr, emsan's peak RSS in MiB)."""
    proc = subprocess.Popen([sys.executable, "-m", "emsan", "run", "--mode", "none", build("hostile", arch, "static"),
                             *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return os.waitstatus_to_exitcode(status), out, err, usage.ru_maxrss / 1024


def test_large_transfers_stay_small_in_emsan(arch):
    """write/read of 4 GiB through an 8 KiB buffer: a short count, and emsan never holds more than a
    chunk (the issue saw 4 GiB of RSS)."""
    status, out, err, rss = measured(arch, "bigio")
    assert status == 0 and err == b""
    assert out == reference("bigio")
    assert rss < 400


def test_a_bug_in_a_handler_is_one_line_and_einval(capfd, monkeypatch):
    """The last-resort guard: a Python exception inside a system call is the guest's -EINVAL and
    one line naming the call, not an internal error (exit 70)."""
    from emsan.cli.main import main
    from emsan.os.linux.syscalls import HANDLERS, load_all
    load_all()                              # registered now, so that the patch below stays

    def broken(p, *args):
        raise RuntimeError("a bug")
    monkeypatch.setitem(HANDLERS, "getppid", broken)
    monkeypatch.delenv("EMSAN_DEBUG", raising=False)
    status = main(["run", "--mode", "none", build("hostile", "x86_64", "static"), "getppid"])
    out, err = capfd.readouterr()
    assert status == 0
    assert out == "getppid: no pid errno 22\n"
    assert err.splitlines() == ["emsan: internal error in system call getppid: RuntimeError: a bug "
                                "(returning -EINVAL; EMSAN_DEBUG=1 shows the traceback)"]


# --- 3. emsan's own regions and the mapping layer ----------------------------------------------------------
def test_emsan_heap_is_as_out_of_reach_as_kernel_memory(arch):
    """mmap(MAP_FIXED), mremap and munmap of a page of emsan's heap get what Linux answers for a
    kernel address (the native run), and the object on it is untouched, with no report."""
    want = reference("own", "kernel")
    got = emsan("run", build("hostile", arch, "static"), "own", "heap", env=ENV)
    assert got.returncode == 0 and got.stderr == b"", got.stderr.decode()
    assert got.stdout == want
    assert b"mmap fixed over it: errno 12" in want and b"munmap it: errno 22" in want


def test_mappings_behave_and_partial_unmaps_copy_nothing(arch):
    """Partial munmap of a touched 256 MiB mapping, mprotect, mremap, MAP_FIXED and exact fault
    addresses, as natively; emsan's memory stays near the mapping's own size (the engine used to
    copy the whole region: +256 MiB)."""
    status, out, err, rss = measured(arch, "mapping")
    assert status == 0 and err == b""
    assert out == reference("mapping")
    assert rss < 256 + 200


def test_pvalloc_and_memalign_as_glibc(arch):
    want = reference("alloc")
    # pvalloc(SIZE_MAX) is an allocation error emsan reports by default (pvalloc-overflow, as ASan:
    # tests/test_alloc_errors.py); --allocator-errors null keeps only the C library's answer
    got = emsan("run", "--allocator-errors", "null", build("hostile", arch, "static"), "alloc", env=ENV)
    assert got.returncode == 0 and got.stderr == b""
    assert got.stdout == want
    assert b"pvalloc(SIZE_MAX) is NULL: 1" in want and b"memalign(24, 100): an object, aligned to 32: 1" in want


# --- 4. sections are optional ---------------------------------------------------------------------------------
def _ehdr_edit(data: bytes, what: str) -> bytes:
    d = bytearray(data)
    if what == "e_shoff":
        struct.pack_into("<Q", d, 0x28, 0xDEADBEEF00)
    elif what == "e_shstrndx":
        struct.pack_into("<H", d, 0x3E, 0x7777)
    elif what == "e_shnum":
        struct.pack_into("<H", d, 0x3C, 0xFFFF)
    elif what == "e_shentsize":
        struct.pack_into("<H", d, 0x3A, 12)
    elif what == "section-extent":          # every section claims to run past the end of the file
        shoff, = struct.unpack_from("<Q", d, 0x28)
        shnum, = struct.unpack_from("<H", d, 0x3C)
        for i in range(1, shnum):
            struct.pack_into("<Q", d, shoff + 64 * i + 0x20, 1 << 40)
    elif what == "truncated-sections":
        shoff, = struct.unpack_from("<Q", d, 0x28)
        del d[shoff + 100:]
    return bytes(d)


@pytest.mark.parametrize("what", ["e_shoff", "e_shstrndx", "e_shnum", "e_shentsize", "section-extent",
                                  "truncated-sections"])
@pytest.mark.parametrize("mode", ["generic", "none"])
def test_damaged_section_headers_still_run(arch, what, mode, tmp_path):
    exe = build("hello", arch, "static")
    bad = tmp_path / "hello"
    bad.write_bytes(_ehdr_edit(open(exe, "rb").read(), what))
    bad.chmod(0o755)
    ref = emsan("run", "--mode", mode, exe, "x", "7", env=ENV)
    got = emsan("run", "--mode", mode, str(bad), "x", "7", env=ENV)
    assert got.returncode == ref.returncode == 7, got.stderr
    assert got.stdout == ref.stdout and got.stderr == b""


def _set_bss(path: str, out, memsz: int) -> str:
    d = bytearray(open(path, "rb").read())
    phoff, = struct.unpack_from("<Q", d, 32)
    phnum, = struct.unpack_from("<H", d, 56)
    last = [i for i in range(phnum) if struct.unpack_from("<I", d, phoff + 56 * i)[0] == 1][-1]
    struct.pack_into("<Q", d, phoff + 56 * last + 40, memsz)
    out.write_bytes(bytes(d))
    out.chmod(0o755)
    return str(out)


def test_a_huge_bss_is_mapped_lazily(arch, tmp_path):
    """p_memsz = 2**40: no per-page table, no host memory for it: the program runs."""
    exe = _set_bss(build("hello", arch, "static"), tmp_path / "hello", 1 << 40)
    start = time.monotonic()
    got = emsan("run", "--mode", "none", exe, "x", env=ENV, timeout=120)
    assert got.returncode == 0
    assert b"hello from 2 args" in got.stdout and got.stderr == b""
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("memsz", [1 << 43, 1 << 63])
def test_segments_outside_the_address_space_are_refused(tmp_path, memsz):
    exe = _set_bss(build("hello", "x86_64", "static"), tmp_path / "hello", memsz)
    got = emsan("run", "--mode", "none", exe, env=ENV)
    assert got.returncode == 2 and got.stdout == b""
    one_line(got, "segments")


# --- 5. timer signals -------------------------------------------------------------------------------------------
def test_a_timer_reaches_a_loop_without_system_calls(arch):
    got = emsan("run", "--mode", "none", "--timeout", "60", build("hostile", arch, "static"), "timer-loop", env=ENV)
    assert got.returncode == 0, got.stderr
    assert got.stdout == reference("timer-loop") == b"the timer interrupted the loop: 1\n"


def test_timer_ticks_do_not_replay_instructions(arch):
    """Each tick stops the engine at a block start: a memory-heavy loop under a 1 ms timer computes
    exactly what it computes natively (stopping it after a memory access would run the accesses
    before it twice: Unicorn 2.1.3 then reports the block's first PC)."""
    want = reference("timer-matrix")
    got = emsan("run", "--mode", "none", "--timeout", "120", build("hostile", arch, "static"), "timer-matrix",
                env=ENV)
    assert got.returncode == 0, got.stderr
    assert got.stdout == want and want.endswith(b"handler ran: 1\n")


def _xorshift(n: int) -> int:
    x = 88172645463325252
    m = (1 << 64) - 1
    for _ in range(n):
        x ^= (x << 13) & m
        x ^= x >> 7
        x ^= (x << 17) & m
    return x


def test_a_one_microsecond_timer_does_not_livelock(arch):
    """Natively a 1 us ITIMER_REAL can starve the program; under emsan the timer ticks at 1 ms and a
    handler's return lets the interrupted code run first: the computation finishes."""
    got = emsan("run", "--mode", "none", "--timeout", "120", build("hostile", arch, "static"), "timer-storm",
                env=ENV)
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode() == f"computed {_xorshift(3_000_000):x} under the storm, handler ran: 1\n"


# --- 6. resource exhaustion --------------------------------------------------------------------------------------
def test_shadow_exhaustion_ends_the_run_with_one_line(arch):
    exe = build("hostile", arch, "static")
    assert emsan("run", exe, "churn", "3000", env=ENV).stdout == b"churned 3000\n"
    got = emsan("run", "--shadow-limit", "64K", exe, "churn", "3000", env=ENV)
    assert got.returncode == 71
    assert b"churned" not in got.stdout
    one_line(got, "out of shadow memory", "--shadow-limit")


def test_shadow_exhaustion_in_compiler_assisted_mode():
    from test_compiler import build_cc
    exe = build_cc("hostile", "x86_64")
    assert emsan("run", exe, "churn", "300", env=ENV).stdout == b"churned 300\n"
    got = emsan("run", "--shadow-limit", "64K", exe, "churn", "300", env=ENV)
    assert got.returncode == 71
    one_line(got, "out of shadow memory")


# --- 7. output paths ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "/dev/full", "empty", "fifo"])
def test_output_paths_are_checked_before_the_guest_runs(where, tmp_path):
    path = {"missing-dir": str(tmp_path / "no" / "such" / "r.json"), "a-directory": str(tmp_path),
            "/dev/full": "/dev/full", "empty": "", "fifo": str(tmp_path / "fifo")}[where]
    if where == "fifo":
        os.mkfifo(path)
    got = emsan("run", "--json", path, build("hello", "x86_64", "static"), "x", env=ENV)
    assert got.returncode == 2
    assert got.stdout == b""                    # the guest never ran
    one_line(got, "--json")


def test_a_json_file_lost_during_the_run_keeps_the_reports_status(tmp_path):
    """The guest replaces the JSON file by a directory, then overflows a heap object: the report
    stops the run with its status (99) and one line says the JSON could not be written."""
    path = tmp_path / "r.json"
    got = emsan("run", "--json", str(path), build("hostile", "x86_64", "static"), "sabotage", str(path), env=ENV)
    assert got.returncode == 99
    err = got.stderr.decode()
    assert "BUG: KASAN: slab-out-of-bounds" in err
    assert err.count(f"emsan: --json {path}: cannot write: Is a directory") == 1
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("option", [["--timeout", "-1"], ["--timeout", "nan"], ["--timeout", "inf"],
                                    ["--max-instructions", "0"], ["--max-instructions", "1e3"],
                                    ["--seed", "-1"], ["--seed", str(1 << 70)], ["--error-exitcode", "300"],
                                    ["--quarantine-size", "1e30"], ["--kfence-objects", "1000000"],
                                    ["--shadow-limit", "-5"], ["--sample-interval", "0"]])
def test_bad_options_are_usage_errors(option):
    got = emsan("run", *option, build("hello", "x86_64", "static"), env=ENV)
    assert got.returncode == 2 and got.stdout == b""
    err = got.stderr.decode()
    assert "Traceback" not in err and option[0] in err


def test_seed_extremes_run():
    for seed in ("0", str((1 << 64) - 1)):
        got = emsan("run", "--seed", seed, build("hello", "x86_64", "static"), "x", env=ENV)
        assert got.returncode == 0 and got.stderr == b""


def test_a_closed_stdout_ends_emsan_quietly():
    """`emsan --version | head -0`: the reader is gone before emsan writes. No traceback on
    stderr, and the status a shell shows for a program SIGPIPE ended (128 + 13)."""
    r, w = os.pipe()
    os.close(r)
    try:
        res = subprocess.run([sys.executable, "-m", "emsan", "--version"], stdout=w, stderr=subprocess.PIPE,
                             timeout=60)
    finally:
        os.close(w)
    assert res.stderr == b"" and res.returncode == 141, res.stderr.decode()
