"""Signals for a single-threaded program: handlers, masks, siglongjmp out of SIGSEGV, handlers that
edit their ucontext, alarm and pause, and the kernel-oops-like message when a signal kills the guest."""
from __future__ import annotations

import re

import pytest

from conftest import build, emsan, native, source_line

LINKS = ["static", "dynamic"]
ENV = {"PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize("link", LINKS)
def test_handlers_masks_longjmp_alarm_match_native(arch, link):
    exe = build("os_signals", arch, link)
    ref = native(exe, "handlers", arch=arch, env=ENV)
    got = emsan("run", "--mode", "none", exe, "handlers", env=ENV)
    assert got.stderr == b""
    assert got.stdout == ref.stdout
    assert got.returncode == ref.returncode == 60
    out = got.stdout.decode()
    assert "SIGUSR2 via kill: signo 12, si_code 0 (SI_USER=0), si_pid ok 1" in out
    assert "SIGUSR2 via raise: si_code -6 (SI_TKILL=-6)" in out
    assert "SIGUSR1 inside the SIGUSR2 handler: seen there 0, after return 1" in out
    assert "while blocked: handled 0, pending 1\nafter unblock: handled 1" in out
    assert "round 1: back from SIGSEGV (11), si_code 1 (SEGV_MAPERR=1), si_addr 16: 1" in out
    assert "stack overflow caught on the alternate stack: 1" in out
    assert "SIGILL skipped by the handler 2 times, si_addr is the pc: 1, after=2\n" in out
    if arch == "x86_64":
        assert "SIGILL si_code 2 (ILL_ILLOPN=2)" in out
    assert "edited uc_sigmask: SIGUSR2 blocked 1, SIGUSR1 blocked 0" in out
    assert "pause returned -1, alarm handler saw signal 14" in out


@pytest.mark.parametrize("link", LINKS)
def test_alternate_stack_of_the_advertised_minimum(arch, link):
    """A handler on an alternate stack of exactly sysconf(_SC_MINSIGSTKSZ) bytes, an inaccessible
    page below it: the signal frame fits in what the process is told (AT_MINSIGSTKSZ)."""
    exe = build("os_signals", arch, link)
    ref = native(exe, "minsigstksz", arch=arch, env=ENV)
    assert ref.stdout == b"small alternate stack: handled 1, failures 0\n" and ref.returncode == 0
    got = emsan("run", "--mode", "none", exe, "minsigstksz", env=ENV, status=0)
    assert got.stdout == ref.stdout and got.stderr == b""


def _oops_lines(stderr: bytes) -> list[str]:
    return stderr.decode().splitlines()


@pytest.mark.parametrize("link", LINKS)
def test_abort_is_sigabrt_134(arch, link):
    exe = build("os_signals", arch, link)
    ref = native(exe, "abort", arch=arch, env=ENV)
    got = emsan("run", "--mode", "none", exe, "abort", env=ENV)
    assert ref.returncode == -6 or ref.returncode == 134      # qemu-user re-raises, the host shows -6
    assert got.returncode == 134
    assert got.stdout == ref.stdout == b"about to abort\n"
    lines = _oops_lines(got.stderr)
    assert any(re.search(r"killed by SIGABRT \(signal 6\)", line) for line in lines), lines
    assert "BUG: unable to handle page fault" not in got.stderr.decode()


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("case, function", [("null-main", "main"), ("null-func", "write_through_null")])
def test_null_write_is_sigsegv_139_naming_the_function(arch, link, case, function):
    exe = build("os_signals", arch, link)
    ref = native(exe, case, arch=arch, env=ENV)
    got = emsan("run", "--mode", "none", exe, case, env=ENV)
    assert ref.returncode in (-11, 139)
    assert got.returncode == 139
    assert got.stdout == ref.stdout
    text = got.stderr.decode()
    lines = _oops_lines(got.stderr)
    assert "killed by SIGSEGV (signal 11)" in text
    assert "BUG: unable to handle page fault for address: 0000000000000000" in lines
    assert "#PF: user write access, page not present" in lines
    pc_line = next(line for line in lines if line.startswith("PC is at "))
    assert pc_line.startswith(f"PC is at {function}+0x"), pc_line
    assert pc_line.endswith(f" os_signals.c:{source_line('os_signals.c', case)}"), pc_line   # the faulting store


@pytest.mark.parametrize("case, status", [("segv-blocked", 139), ("sigpipe", 141)])
def test_default_actions_match_native(arch, case, status):
    """A fault while SIGSEGV is blocked kills even with a handler; SIGPIPE kills without a report."""
    exe = build("os_signals", arch, "static")
    ref = native(exe, case, arch=arch, env=ENV)
    got = emsan("run", "--mode", "none", exe, case, env=ENV)
    assert ref.returncode in (status - 128, -(status - 128), status)
    assert got.returncode == status
    assert got.stdout == ref.stdout
    assert b"not reached" not in got.stdout
    if case == "sigpipe":
        assert got.stderr == b""               # a shell shows nothing either
    else:
        assert b"killed by SIGSEGV" in got.stderr
