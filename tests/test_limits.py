"""Stopping runaway guests (--max-instructions, --timeout) and what emsan refuses: unsupported
system calls, threads, new processes."""
from __future__ import annotations

import time

import pytest

from conftest import assert_no_internal_error, build, emsan, source_line

ENV = {"PATH": "/usr/bin:/bin"}


def test_max_instructions_stops_an_infinite_loop(arch):
    exe = build("os_limits", arch, "static")
    got = emsan("run", "--mode", "none", "--max-instructions", "200000", exe, "spin", env=ENV)
    assert got.returncode == 125
    lines = got.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("emsan: instruction limit of 200000 reached; guest stopped at spin_forever+0x")
    assert lines[0].endswith(f" os_limits.c:{source_line('os_limits.c', 'spin')}"), lines[0]


def test_max_instructions_is_not_hit_by_a_short_program():
    exe = build("hello", "x86_64", "static")
    got = emsan("run", "--mode", "none", "--max-instructions", "10000000", exe, "x", "5", env=ENV)
    assert got.returncode == 5
    assert got.stderr == b""


@pytest.mark.parametrize("case, where", [("spin", "spin_forever+0x"), ("sleep", "nanosleep")])
def test_timeout_stops_loops_and_sleeps(arch, case, where):
    exe = build("os_limits", arch, "static")
    start = time.monotonic()
    got = emsan("run", "--mode", "none", "--timeout", "0.5", exe, case, env=ENV)
    elapsed = time.monotonic() - start
    assert got.returncode == 124
    lines = got.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("emsan: time limit of 0.5 s reached; guest stopped at ")
    assert where in lines[0]
    assert b"slept" not in got.stdout
    assert elapsed < 15                          # the guest's 30 s sleep was cut short


def test_timeout_stops_a_read_that_never_returns():
    """`cat` reading a pipe nobody writes to or closes: the read must not outlive --timeout."""
    import subprocess
    import sys
    writer = subprocess.Popen(["sleep", "30"], stdout=subprocess.PIPE)
    try:
        start = time.monotonic()
        got = subprocess.run([sys.executable, "-m", "emsan", "run", "--mode", "none", "--timeout", "0.5", "/bin/cat"],
                             stdin=writer.stdout, capture_output=True, timeout=60)
        assert time.monotonic() - start < 15
    finally:
        writer.kill()
        writer.wait()
    assert_no_internal_error(got)
    assert got.returncode == 124
    assert got.stderr.decode().startswith("emsan: time limit of 0.5 s reached; guest stopped at ")


def test_unsupported_syscall_is_enosys_and_named_once(arch):
    exe = build("os_limits", arch, "static")
    got = emsan("run", "--mode", "none", exe, "enosys", "25", env=ENV)
    assert got.returncode == 0
    assert got.stdout == b"kcmp: 25 of 25 calls failed with ENOSYS\n"
    lines = got.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("emsan: unsupported syscall kcmp (number ")


@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_pthread_create_runs_the_thread(arch, link):
    """Threads were refused (EAGAIN) before emsan ran them (tests/test_threads.py): now the thread
    runs and nothing is said on stderr, as natively."""
    exe = build("os_limits", arch, link)
    got = emsan("run", "--mode", "none", exe, "thread", env=ENV)
    assert got.returncode == 0, got.stderr
    # the two lines in either order: which thread prints first is the scheduler's choice
    assert sorted(got.stdout.splitlines()) == [b"pthread_create returned 0", b"thread ran"]
    assert got.stderr == b""
