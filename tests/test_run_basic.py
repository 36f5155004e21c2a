"""Running real programs: static, static-PIE and dynamic, on both architectures."""
from __future__ import annotations

import pytest

from conftest import build, emsan, native, run_report, source_line


@pytest.mark.parametrize("link", ["static", "static-pie", "dynamic"])
def test_hello_matches_native(arch, link):
    exe = build("hello", arch, link)
    env = {"EMSAN_TEST_VAR": "from-env", "PATH": "/usr/bin:/bin"}
    ref = native(exe, "a b", "7", arch=arch, env=env)
    got = emsan("run", "--mode", "none", exe, "a b", "7", env=env)
    assert got.stdout == ref.stdout
    assert got.returncode == ref.returncode == 7
    assert got.stderr == b""


@pytest.mark.parametrize("link", ["static-pie", "dynamic"])
def test_report_in_a_relocated_program(arch, link, tmp_path):
    """Where the program is loaded at a base of emsan's choosing, a report still names the
    function and source line of the access."""
    exe = build("kasan_cases", arch, link, ("-fno-builtin",))
    _, (rep,) = run_report(tmp_path / "r.json", exe, "kmalloc_uaf", status=99)
    assert (rep["bug_type"], rep["access"], rep["size"], rep["object"]["offset"]) == ("slab-use-after-free", "read",
                                                                                      1, 8)
    assert (rep["stack"][0]["function"], rep["stack"][0]["line"]) == ("kmalloc_uaf",
                                                                      source_line("kasan_cases.c", "uaf"))


def test_env_options(arch):
    exe = build("hello", arch, "static")
    got = emsan("run", "--mode", "none", "--env", "EMSAN_TEST_VAR=set-by-flag", exe, status=0)
    assert b"EMSAN_TEST_VAR=set-by-flag" in got.stdout
    got = emsan("run", "--mode", "none", "--unset-env", "EMSAN_TEST_VAR", exe,
                env={"EMSAN_TEST_VAR": "x", "PATH": "/usr/bin:/bin"}, status=0)
    assert b"EMSAN_TEST_VAR=(unset)" in got.stdout


def test_garbage_collector_off_for_start_up_only():
    """`emsan run` sets up without the cyclic garbage collector and runs the guest with it (a long
    run must not keep every reference cycle): seen from inside the command, at the sanitizer's
    set-up and at the guest's first system call."""
    import subprocess
    import sys

    probe = (
        "import gc, sys\n"
        "import emsan.session.sanitizer as san, emsan.os.linux.process as proc\n"
        "seen = []\n"
        "init, call = san.Sanitizer.__init__, proc.Process.on_syscall\n"
        "def at_init(self, *a, **k):\n"
        "    seen.append(('set-up', gc.isenabled(), gc.get_freeze_count() > 0)); init(self, *a, **k)\n"
        "def at_call(self):\n"
        "    if len(seen) == 1: seen.append(('guest', gc.isenabled(), gc.get_freeze_count() > 0)); "
        "sys.stderr.write(repr(seen) + '\\n')\n"
        "    call(self)\n"
        "san.Sanitizer.__init__, proc.Process.on_syscall = at_init, at_call\n"
        "sys.argv = ['emsan'] + sys.argv[1:]\n"
        "from emsan.cli.main import entry\n"
        "entry()\n")
    res = subprocess.run([sys.executable, "-c", probe, "run", "--mode", "generic", build("hello", "x86_64", "dynamic")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "hello" in res.stdout, res.stderr
    assert "[('set-up', False, False), ('guest', True, True)]" in res.stderr, res.stderr
