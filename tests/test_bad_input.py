"""Programs emsan cannot run: each ends with exactly one `emsan: ...` line on stderr and status 2."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from conftest import COMPILERS, build, emsan, have

ENV = {"PATH": "/usr/bin:/bin"}


def assert_bad_input(got: subprocess.CompletedProcess, *phrases: str) -> str:
    """One `emsan: ...` line naming the problem, status 2 (the runner has checked that emsan did
    not fail inside itself)."""
    text = got.stderr.decode(errors="replace")
    lines = text.splitlines()
    assert len(lines) == 1 and text.endswith("\n"), lines
    assert lines[0].startswith("emsan: "), lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert got.returncode == 2, lines
    assert got.stdout == b""
    return lines[0]


def run(path: str, env: dict | None = None, *extra: str) -> subprocess.CompletedProcess:
    return emsan("run", "--mode", "none", *extra, path, env=env or ENV)


def copy_exec(src: str, dst, data: bytes | None = None) -> str:
    raw = open(src, "rb").read() if data is None else data
    dst.write_bytes(raw)
    dst.chmod(0o755)
    return str(dst)


def test_missing_file(tmp_path):
    assert_bad_input(run(str(tmp_path / "nope")), "no such file")


def test_command_not_in_path():
    assert_bad_input(run("emsan-no-such-command-xyz"), "not found")


def test_text_file_with_exec_bit(tmp_path):
    path = copy_exec("/dev/null", tmp_path / "notes.txt", b"just some text\nmore text\n")
    assert_bad_input(run(path), "not an ELF file")


def test_shell_script(tmp_path):
    path = copy_exec("/dev/null", tmp_path / "script.sh", b"#!/bin/sh\necho hi\n")
    assert_bad_input(run(path), "script", "/bin/sh", "not an ELF program")


def test_empty_file(tmp_path):
    path = copy_exec("/dev/null", tmp_path / "empty", b"")
    assert_bad_input(run(path), "not an ELF file")


def _phdrs(data: bytes) -> list[tuple[int, int, int]]:
    """(type, offset, filesz) of each program header of a 64-bit ELF."""
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    return [(t, off, fsz) for t, _f, off, _va, _pa, fsz, _msz, _al in
            (struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum))]


def _truncation_points(data: bytes) -> dict[str, tuple[int, str]]:
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    loads = [(off, fsz) for t, off, fsz in _phdrs(data) if t == 1 and fsz > 0x2000]
    big_off, big_size = loads[0]
    return {
        "magic-only": (4, "header incomplete"),
        "inside-header": (40, "header incomplete"),
        "header-only": (64, "program headers end at"),
        "inside-phdrs": (phoff + 56 * (phnum // 2) + 7, "program headers end at"),
        "inside-segment": (big_off + big_size // 2, "segment at offset"),
        "segment-short-by-one": (big_off + big_size - 1, "segment at offset"),
    }


@pytest.mark.parametrize("where", ["magic-only", "inside-header", "header-only", "inside-phdrs",
                                   "inside-segment", "segment-short-by-one"])
def test_truncated_elf(arch, where, tmp_path):
    exe = build("hello", arch, "static")
    data = open(exe, "rb").read()
    cut, phrase = _truncation_points(data)[where]
    path = copy_exec(exe, tmp_path / f"cut{cut}", data[:cut])
    assert_bad_input(run(path), "truncated ELF file", phrase)


def test_cut_section_headers_still_run(tmp_path):
    """The kernel never reads section headers: a file cut inside them still runs (and so under emsan)."""
    exe = build("hello", "x86_64", "static")
    data = open(exe, "rb").read()
    shoff, = struct.unpack_from("<Q", data, 40)
    end_of_segments = max(off + fsz for t, off, fsz in _phdrs(data) if t == 1)
    assert shoff >= end_of_segments
    path = copy_exec(exe, tmp_path / "cut-sections", data[:shoff + 10])
    ref = subprocess.run([path, "x", "3"], capture_output=True)
    got = emsan("run", "--mode", "none", path, "x", "3", env=ENV)
    assert got.returncode == ref.returncode == 3
    assert got.stdout == ref.stdout


def _elf32(machine: int = 3) -> bytes:
    """A minimal, well-formed 32-bit ELF executable: the header and one PT_LOAD."""
    ehdr = struct.pack("<16sHHIIIIIHHHHHH", b"\x7fELF\x01\x01\x01" + bytes(9), 2, machine, 1,
                       0x8048054, 52, 0, 0, 52, 32, 1, 40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0, 0x8048000, 0x8048000, 0x60, 0x60, 5, 0x1000)
    return ehdr + phdr + b"\xeb\xfe" + bytes(10)       # jmp . ; padding


def test_unsupported_class_crafted(tmp_path):
    path = copy_exec("/dev/null", tmp_path / "elf32", _elf32())
    assert_bad_input(run(path), "unsupported ELF class (32-bit)")


def test_unsupported_class_compiled(tmp_path):
    src = tmp_path / "start.c"
    src.write_text("void _start(void) { for (;;) ; }\n")
    out = tmp_path / "m32"
    if subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-o", str(out), str(src)],
                      capture_output=True).returncode != 0:
        pytest.skip("gcc -m32 cannot build here")
    assert_bad_input(run(str(out)), "unsupported ELF class (32-bit)")


def test_big_endian(tmp_path):
    data = bytearray(open(build("hello", "x86_64", "static"), "rb").read())
    data[5] = 2
    assert_bad_input(run(copy_exec("/dev/null", tmp_path / "be", bytes(data))), "big-endian")


@pytest.mark.parametrize("machine, name", [(243, "RISC-V"), (40, "ARM"), (0x1234, "machine 4660")])
def test_unsupported_machine(machine, name, tmp_path):
    data = bytearray(open(build("hello", "x86_64", "static"), "rb").read())
    struct.pack_into("<H", data, 18, machine)
    assert_bad_input(run(copy_exec("/dev/null", tmp_path / "patched", bytes(data))), f"unsupported machine {name}")


def test_object_file_is_not_an_executable(tmp_path):
    obj = tmp_path / "hello.o"
    subprocess.run(["gcc", "-c", "-o", str(obj), os.path.join(os.path.dirname(__file__), "guest", "hello.c")],
                   check=True)
    obj.chmod(0o755)
    assert_bad_input(run(str(obj)), "not an executable", "ET_REL")


def test_missing_interpreter(arch, tmp_path):
    exe = build("hello", arch, "dynamic")
    data = bytearray(open(exe, "rb").read())
    (off, size), = [(o, s) for t, o, s in _phdrs(bytes(data)) if t == 3]
    old = bytes(data[off:off + size]).split(b"\0")[0]
    new = (b"/emsan/no/such/ld.so" + b"x" * len(old))[:len(old)]
    data[off:off + len(old)] = new
    line = assert_bad_input(run(copy_exec("/dev/null", tmp_path / "nointerp", bytes(data))), "interpreter",
                            new.decode(), "not found")
    assert old.decode() not in line


def test_not_executable(tmp_path):
    path = copy_exec(build("hello", "x86_64", "static"), tmp_path / "noexec")
    os.chmod(path, 0o644)
    if os.access(path, os.X_OK):
        pytest.skip("running as a user who may execute anything")
    assert_bad_input(run(path), "permission denied", "not executable")


def test_directory(tmp_path):
    assert_bad_input(run(str(tmp_path)), "is a directory")


def test_device_file():
    assert_bad_input(run("/dev/null"), "not a regular file")


def test_bad_sysroot(tmp_path):
    exe = build("hello", "arm64", "dynamic")
    assert_bad_input(run(exe, None, "--sysroot", str(tmp_path / "nowhere")), "--sysroot", "not a directory")


# --- shared libraries ------------------------------------------------------------------------------
LIB_A = "int emsan_lib_b(void);\nint emsan_lib_a(void) { return emsan_lib_b() + 3; }\n"
LIB_B = "int emsan_lib_b(void) { return 4; }\n"
MAIN = "int emsan_lib_a(void);\nint main(void) { return emsan_lib_a(); }\n"


def _build_libs(arch: str, root) -> dict[str, str]:
    """libemsanb.so.1 <- libemsana.so.2 <- three programs: one finding libs through RUNPATH=$ORIGIN/lib,
    one through DT_RPATH, one with no path at all (found only through LD_LIBRARY_PATH)."""
    cc = COMPILERS[arch]
    if not have(cc):
        pytest.skip(f"{cc} is not installed")
    lib = root / "lib"
    lib.mkdir()
    for name, text in (("a.c", LIB_A), ("b.c", LIB_B), ("main.c", MAIN)):
        (root / name).write_text(text)

    def cc_run(*args: str) -> None:
        subprocess.run([cc, *args], check=True, capture_output=True, cwd=root)

    cc_run("-shared", "-fPIC", "-Wl,-soname,libemsanb.so.1", "-o", "lib/libemsanb.so.1", "b.c")
    cc_run("-shared", "-fPIC", "-Wl,-soname,libemsana.so.2", "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN",
           "-o", "lib/libemsana.so.2", "a.c", "lib/libemsanb.so.1")
    out = {}
    for kind, flags in (("runpath", ["-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/lib"]),
                        ("rpath", ["-Wl,--disable-new-dtags", "-Wl,-rpath,$ORIGIN/lib"]),
                        ("bare", [])):
        cc_run(*flags, "-o", f"prog-{kind}", "main.c", "lib/libemsana.so.2", "-Wl,-rpath-link,lib")
        out[kind] = str(root / f"prog-{kind}")
    return out


@pytest.fixture(scope="module", params=["x86_64", "arm64"])
def libs(request, tmp_path_factory) -> tuple[str, dict[str, str], object]:
    root = tmp_path_factory.mktemp(f"libs-{request.param}")
    return request.param, _build_libs(request.param, root), root


def test_libraries_found_through_runpath_rpath_and_ld_library_path(libs):
    _arch, progs, root = libs
    for kind in ("runpath", "rpath"):
        got = emsan("run", "--mode", "none", progs[kind], env=ENV)
        assert got.returncode == 7, (kind, got.stderr)
        assert got.stderr == b""
    got = emsan("run", "--mode", "none", "--env", f"LD_LIBRARY_PATH=/nonexistent::{root}/lib", progs["bare"], env=ENV)
    assert got.returncode == 7, got.stderr
    assert got.stderr == b""


def test_missing_library_without_search_path(libs):
    _arch, progs, _root = libs
    assert_bad_input(run(progs["bare"]), "shared library libemsana.so.2 not found", f"(needed by {progs['bare']})")


def test_missing_direct_and_indirect_library(libs, tmp_path):
    _arch, progs, root = libs
    moved = tmp_path / "moved"
    shutil.copytree(root, moved, symlinks=True)
    prog = str(moved / "prog-runpath")
    os.rename(moved / "lib" / "libemsanb.so.1", moved / "lib" / "libemsanb.so.1.away")
    assert_bad_input(run(prog), "shared library libemsanb.so.1 not found",
                     f"(needed by {moved}/lib/libemsana.so.2)")
    os.unlink(moved / "lib" / "libemsana.so.2")
    assert_bad_input(run(prog), "shared library libemsana.so.2 not found", f"(needed by {prog})")


def test_library_for_another_machine_is_skipped(libs, tmp_path):
    """ld.so skips a library built for another machine; so does the pre-check."""
    arch, progs, root = libs
    other = "arm64" if arch == "x86_64" else "x86_64"
    if not have(COMPILERS[other]):
        pytest.skip(f"{COMPILERS[other]} is not installed")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    subprocess.run([COMPILERS[other], "-shared", "-fPIC", "-o", str(wrong / "libemsana.so.2"), str(root / "b.c")],
                   check=True, capture_output=True)
    got = emsan("run", "--mode", "none", "--env", f"LD_LIBRARY_PATH={wrong}", progs["bare"], env=ENV)
    assert_bad_input(got, "shared library libemsana.so.2 not found")
    got = emsan("run", "--mode", "none", "--env", f"LD_LIBRARY_PATH={wrong}:{root}/lib", progs["bare"], env=ENV)
    assert got.returncode == 7, got.stderr


@pytest.mark.parametrize("program", ["/bin/ls", "/usr/bin/sort", "/bin/gzip", "/usr/bin/sha256sum"])
def test_precheck_accepts_real_programs(program):
    """Conservative: programs whose libraries ld.so finds are never refused."""
    if not os.path.exists(program):
        pytest.skip(f"{program} is not installed")
    got = emsan("run", "--mode", "none", program, "--version", env=ENV)
    assert got.returncode == 0, got.stderr
    assert got.stderr == b""
    assert b"GNU" in got.stdout or b"gzip" in got.stdout

