"""The Linux personality on real C programs: argv, environment, stdin, files, directories, pipes,
brk, mmap and exit codes, byte for byte against the native run (qemu-aarch64 for arm64)."""
from __future__ import annotations

import pytest

from conftest import build, emsan, native

LINKS = ["static", "dynamic"]
ENV = {"PATH": "/usr/bin:/bin", "OS_FILES_VAR": "value with spaces=and equals", "LC_ALL": "C"}
STDIN = b"".join(b"line %d of the input\n" % i for i in range(300)) + b"no newline at the end"
ARGS = ("two words", "", "--dash", "\u00e9t\u00e9")


def _same(ref, got, status: int) -> None:
    assert got.stderr == ref.stderr == b""
    assert got.stdout == ref.stdout
    assert got.returncode == ref.returncode == status


@pytest.mark.parametrize("mode", ["none", "generic"])
@pytest.mark.parametrize("link", LINKS)
def test_files_dirs_pipes_match_native(arch, link, mode, tmp_path):
    exe = build("os_files", arch, link)
    (tmp_path / "native").mkdir()
    (tmp_path / "emsan").mkdir()
    ref = native(exe, str(tmp_path / "native"), *ARGS, arch=arch, input=STDIN, env=ENV)
    got = emsan("run", "--mode", mode, exe, str(tmp_path / "emsan"), *ARGS, input=STDIN, env=ENV)
    _same(ref, got, 40)                          # 40 + the number of failed checks
    assert b"failures=0\n" in got.stdout
    assert b"argv[2]=<two words> len=9\n" in got.stdout
    assert b"OS_FILES_VAR=value with spaces=and equals\n" in got.stdout
    assert b"stdin: %d bytes, 300 lines" % len(STDIN) in got.stdout
    assert b"dir: alpha beta.txt mid sub zeta\n" in got.stdout
    assert b"pipe got: redirected 99\n" in got.stdout
    assert b"times: atime 1000000000.250000000 mtime 1300000000.123456789\n" in got.stdout
    assert sorted(p.name for p in (tmp_path / "emsan").iterdir()) == []     # the program cleaned up


def test_files_with_empty_environment_and_closed_stdin(tmp_path):
    exe = build("os_files", "x86_64", "static")
    got = emsan("run", "--mode", "none", exe, str(tmp_path), input=b"", env={"PATH": "/usr/bin:/bin"})
    assert got.returncode == 40, got.stderr
    assert b"OS_FILES_VAR=(unset)\n" in got.stdout
    assert b"stdin: 0 bytes, 0 lines, hash 00000000\n" in got.stdout


@pytest.mark.parametrize("mode", ["none", "generic"])
@pytest.mark.parametrize("link", LINKS)
def test_memory_matches_native(arch, link, mode):
    exe = build("os_memory", arch, link)
    # map the binary itself: a file of a few hundred KiB that both runs read the same way
    ref = native(exe, exe, arch=arch, env=ENV)
    got = emsan("run", "--mode", mode, exe, exe, env=ENV)
    _same(ref, got, 50)
    assert b"failures=0\n" in got.stdout
    assert b"brk grew by 400000 bytes\n" in got.stdout


@pytest.mark.parametrize("link", LINKS)
def test_waits_events_sockets_match_native(arch, link, tmp_path):
    exe = build("os_waits", arch, link)
    (tmp_path / "native").mkdir()
    (tmp_path / "emsan").mkdir()
    ref = native(exe, str(tmp_path / "native"), arch=arch, env=ENV)
    got = emsan("run", "--mode", "none", exe, str(tmp_path / "emsan"), env=ENV)
    _same(ref, got, 70)
    out = got.stdout.decode()
    assert "select: 2 ready, read end 1, write end 1" in out
    assert "epoll: 1 event(s), EPOLLIN 1, data 1122334455667788" in out
    assert "sendmsg/recvmsg: [hello][ unix]\ngetsockname: sock\n" in out
    assert "sigsuspend: 3 alarms handled, SIGALRM blocked again 1" in out


@pytest.mark.parametrize("status", [0, 1, 3, 255, 256 + 7])
def test_exit_status_passes_through(status):
    exe = build("hello", "x86_64", "static")
    got = emsan("run", "--mode", "none", exe, "x", str(status))
    assert got.returncode == status & 0xFF
    assert got.stderr == b""
