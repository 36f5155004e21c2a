"""Processes: fork, vfork, posix_spawn (system()), wait4/waitid, kill of children and groups, pipes
and shared descriptors, execve of binaries and #! scripts (and the errnos Linux gives when it
cannot), a heap bug in a child reported with the child's pid, and real programs that start others
(dash pipelines, xargs, perl's system, Python's subprocess). The oracle is the native run (x86-64)
or qemu-aarch64's. For the os_procs cases on arm64 the oracle is the native x86-64 run of the same
case: for execve because qemu-user hands foreign images to the host kernel, for the fork/signal
cases because qemu-aarch64 itself hangs in some runs of them (its fork and signal emulation; seen
with both link kinds, once in CI), and their output depends on neither the architecture nor the
link kind (pids are printed as relations, signal numbers are the same on both)."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from conftest import build, emsan, have, native, source_line

ENV = {"PATH": "/usr/bin:/bin"}
MODES = ["none", "generic", "kfence"]
OTHER = {"x86_64": "arm64", "arm64": "x86_64"}


def _no_reports(res) -> None:
    assert b"BUG: KASAN" not in res.stderr and b"BUG: KFENCE" not in res.stderr, res.stderr.decode()[-3000:]


def _pipes_reference():
    """The pipes case's expected output: the native x86-64 run (see the module's docstring)."""
    return native(build("os_procs", "x86_64", "dynamic"), "pipes", env=ENV)


@pytest.mark.parametrize("mode", MODES)
def test_fork_pipes_wait_kill_groups_match_native(arch, mode):
    exe = build("os_procs", arch, "dynamic")
    ref = _pipes_reference()
    got = emsan("run", "--mode", mode, "--timeout", "60", exe, "pipes", env=ENV)
    assert got.returncode == ref.returncode == 0, got.stderr.decode()[-3000:]
    assert got.stdout == ref.stdout
    out = got.stdout.decode()
    assert "child 2 reaped 1: exited 12\n" in out and "sleeper: killed by signal 15\n" in out
    assert "leader: killed by signal 10\nmember: killed by signal 10\n" in out
    assert "shared offset: parent1 child parent2\n" in out
    assert "catcher: SIGUSR1 handled in pause 1\ncatcher: read returned -1, EINTR 1, handled 11\n" in out
    _no_reports(got)
    # the child that wrote through a null pointer: its own oops, with its own pid (not the parent's)
    oops = re.findall(rb"emsan: os_procs/(\d+) killed by SIGSEGV", got.stderr)
    assert len(oops) == 1, got.stderr.decode()


def test_static_fork_pipes_match_native(arch):
    exe = build("os_procs", arch, "static")
    ref = _pipes_reference()
    got = emsan("run", "--timeout", "60", exe, "pipes", env=ENV)
    assert got.stdout == ref.stdout and got.returncode == ref.returncode == 0


@pytest.mark.parametrize("mode", ["generic", "kfence"])
def test_exec_scripts_binaries_and_errnos(arch, mode, tmp_path):
    """execve of the guest itself (dynamic) and of a #! script whose interpreter it is; a missing
    file, a directory, a non-executable file and an image of the other architecture fail with
    Linux's errnos in the child."""
    exe = build("os_procs", arch, "dynamic")
    foreign = build("os_procs", OTHER[arch], "dynamic")
    script = tmp_path / "script"
    script.write_text(f"#!{exe}\n")
    script.chmod(0o755)
    args = ["exec", exe, str(script), foreign]
    if arch == "x86_64":
        ref = native(exe, *args, env=ENV).stdout
    else:
        host_exe = build("os_procs", "x86_64", "dynamic")
        host_script = tmp_path / "host" / "script"
        host_script.parent.mkdir()
        host_script.write_text(f"#!{host_exe}\n")
        host_script.chmod(0o755)
        ref = native(host_exe, "exec", host_exe, str(host_script), exe, env=ENV).stdout
    got = emsan("run", "--mode", mode, "--timeout", "60", exe, *args, env=ENV)
    assert got.returncode == 0, got.stderr.decode()[-3000:]
    assert got.stdout == ref
    out = got.stdout.decode()
    assert "missing: execve failed: ENOENT\n" in out and "foreign: execve failed: ENOEXEC\n" in out
    assert "argv[1] = script\nargv[2] = one\nargv[3] = two words\nenv: env-passed, PATH set 0\nscript: exited 5" in out
    _no_reports(got)


@pytest.mark.parametrize("mode", ["generic", "kfence"])
def test_use_after_free_in_a_child_names_the_child(arch, mode, tmp_path):
    """The child's report says the child's pid (the parent prints it), goes to FILE.PID with
    --json; the parent's FILE holds the parent's reports (none); the parent sees the child's
    report exit status."""
    exe = build("os_procs", arch, "dynamic")
    path = tmp_path / "r.json"
    extra = ["--sample-interval", "1"] if mode == "kfence" else []
    got = emsan("run", "--mode", mode, *extra, "--json", str(path), exe, "uaf-child", env=ENV, status=0)
    pid = int(re.search(rb"child pid (\d+)", got.stdout).group(1))
    assert b"uaf child: exited 99\n" in got.stdout
    assert json.loads(path.read_text())["reports"] == []
    reports = json.loads((tmp_path / f"r.json.{pid}").read_text())["reports"]
    assert len(reports) == 1
    r = reports[0]
    assert r["task"] == {"comm": "os_procs", "pid": pid}
    assert r["bug_type"] == ("slab-use-after-free" if mode == "generic" else "use-after-free read")
    assert r["access"] == "read" and (mode == "kfence" or r["size"] == 1)   # KFENCE reports no size
    assert r["stack"][0]["function"] == "uaf_child" and r["stack"][0]["line"] == source_line("os_procs.c", "uaf_child")
    assert f"PID: {pid} Comm: os_procs ".encode() in got.stderr
    if mode == "generic":
        assert f"by task os_procs/{pid}".encode() in got.stderr


def test_system_matches_native(tmp_path):
    """system() (posix_spawn of /bin/sh: clone3 or clone with CLONE_VM|CLONE_VFORK, then dash
    under emsan with its own pipeline). x86-64 only: Debian's arm64 cross root has no /bin/sh."""
    exe = build("os_procs", "x86_64", "dynamic")
    ref = native(exe, "system", env=ENV)
    got = emsan("run", exe, "system", env=ENV)
    assert got.stdout == ref.stdout == b"system says 42\nsystem returned: 9\n"
    assert got.returncode == 0
    _no_reports(got)


REAL = [
    ("dash-pipeline", ["sh", "-c", "echo hi | cat; printf '%s\\n' a b | sort -r | tr a-z A-Z; (exit 3); echo $?"],
     None),
    ("xargs", ["xargs", "-n", "2", "echo", "x"], b"a b c d e\n"),
    ("make", ["make", "-j1", "-f", "-"],   # a Makefile on stdin: recipes run through sh, one a pipeline
     b"all: one two\n\t@echo all done\none:\n\techo one | tr a-z A-Z\ntwo:\n\t@printf '%s\\n' two\n"),
    ("perl-system", ["perl", "-e", 'system("echo", "from perl"); print "status $?\\n"; '
                                   'my $o = `printf backticks`; print "$o\\n"; exit 4'], None),
    ("python-subprocess", ["python3", "-S", "-c", "import subprocess as s; r = s.run(['echo', 'sub'], "
                           "capture_output=True); print(r.returncode, r.stdout); print(s.call('exit 5', shell=True))"],
     None),
]


def _in_root(name: str) -> str:
    """An arm64 program of the root scripts/arm64-root.sh makes (python3 is python3.11 there)."""
    from test_real_programs import arm64_root
    root = arm64_root()
    for cand in (name, name + ".11"):
        for d in ("usr/bin", "bin"):
            p = os.path.join(root, d, cand)
            if os.path.exists(p):
                return p
    pytest.skip(f"{name} is not in the arm64 root (scripts/arm64-root.sh)")


@pytest.mark.parametrize("mode", ["generic", "kfence"])
@pytest.mark.parametrize("name, cmd, stdin", REAL, ids=[r[0] for r in REAL])
def test_real_programs_that_start_others(arch, name, cmd, stdin, mode):
    """Byte-identical to the native x86-64 run of the same command, with no report (on arm64 emsan
    runs the root's arm64 dash, cat, sort, echo...; what they print does not depend on the
    architecture, and qemu-aarch64, which forks and signals unreliably, is not the oracle)."""
    if not have(cmd[0]):
        pytest.skip(f"{cmd[0]} is not installed")
    ref = native(shutil.which(cmd[0]), *cmd[1:], input=stdin, env=ENV)
    if arch == "x86_64":
        prog, extra = shutil.which(cmd[0]), []
    else:
        from test_real_programs import arm64_root
        prog, extra = _in_root(cmd[0]), ["--sysroot", arm64_root()]
    # --no-leaks: GNU sort (and perl) leak at exit by design; their leaks are tests/test_real_programs.py's
    got = emsan("run", "--mode", mode, "--no-leaks", *extra, "--timeout", "120", prog, *cmd[1:], input=stdin,
                env=ENV, timeout=200)
    assert got.stdout == ref.stdout, got.stderr.decode()[-3000:]
    assert got.returncode == ref.returncode
    assert got.stderr == ref.stderr
    _no_reports(got)


def test_system_on_arm64_with_a_root():
    """system() of an arm64 guest: the root's arm64 dash (and cat) under emsan."""
    from test_real_programs import arm64_root
    root = arm64_root()
    exe = build("os_procs", "arm64", "dynamic")
    got = emsan("run", "--sysroot", root, exe, "system", env=ENV)
    assert got.stdout == b"system says 42\nsystem returned: 9\n"
    _no_reports(got)


def test_no_follow_exec_runs_the_new_image_natively():
    """By default the image after exec runs under emsan (a use-after-free in its child is
    reported: the child exits 99); with --no-follow-exec it runs natively, unchecked."""
    exe = build("os_procs", "x86_64", "dynamic")
    cmd = ["/bin/sh", "-c", f"exec {exe} uaf-child"]
    ref = native(*cmd, env=ENV)
    fast = emsan("run", "--no-follow-exec", *cmd, env=ENV, status=0)
    followed = emsan("run", *cmd, env=ENV, status=0)
    assert b"uaf child: exited 99\n" in followed.stdout
    assert re.sub(rb"\d+", b"N", fast.stdout) == re.sub(rb"\d+", b"N", ref.stdout)
    assert b"BUG: KASAN" not in fast.stderr


def test_exit_status_of_a_child_killed_by_a_signal():
    """A child that dies of a signal (here dash killing itself) is seen so by its parent."""
    cmd = ["/bin/sh", "-c", "sh -c 'kill -TERM $$'; echo status $?"]
    ref = native(*cmd, env=ENV)
    got = emsan("run", *cmd, env=ENV)
    assert got.stdout == ref.stdout == b"status 143\n"
