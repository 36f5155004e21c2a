"""Return-address protection (--stack-checks ret) on real guest programs, x86-64 and arm64, -O0 and
-O2, with and without frame pointers (tests/guest/stack_ret.c, stack_ret_cxx.cc).

Oracles: the native (or qemu-aarch64) run shows the overwrite really takes over the program
(win() runs, or it dies of the smashed frame); the guest prints the address of the slot it
overwrote; the functions and lines come from the guest's source. Correct programs that unwind
in every way (longjmp, exceptions, signal handlers, swapcontext, recursion) must print what the
native run prints and report nothing, with many returns really checked (--stats)."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest

from conftest import build, emsan, native, run_report, source_line
from test_stacks import many, stats

CONFIGS = {"O0": ("-O0",), "O2": ("-O2",), "O0-nofp": ("-O0", "-fomit-frame-pointer"),
           "O2-nofp": ("-O2", "-fomit-frame-pointer")}
SMASH = "A" * 120           # past the array, the saved registers and the return address (or the caller's)


def guest(arch: str, config: str, cxx: bool = False, link: str = "static") -> str:
    flags = (*CONFIGS[config], "-fno-stack-protector")
    return build("stack_ret_cxx" if cxx else "stack_ret", arch, link, flags, cxx=cxx)


def report_of(exe: str, *args: str, extra: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, dict]:
    with tempfile.TemporaryDirectory() as d:
        p, reps = run_report(os.path.join(d, "r.json"), *extra, exe, *args, status=99, timeout=240)
    assert len(reps) == 1, p.stderr.decode(errors="replace")
    return p, reps[0]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_overwritten_return_address(arch, config):
    """vuln() overwrites its own return address with win()'s: natively win() runs; under emsan
    the return is reported, naming vuln, the slot it used, main as the caller and win as the
    target, and win() never runs."""
    exe = guest(arch, config)
    ref = native(exe, "win", arch=arch)
    assert ref.returncode == 42 and b"WIN" in ref.stdout, ref          # the exploit works natively
    p, r = report_of(exe, "win")
    err = p.stderr.decode(errors="replace")
    assert b"WIN" not in p.stdout, err
    slot = int(re.search(rb"smashed (0x[0-9a-f]+)", p.stdout).group(1), 16)
    assert (r["bug_type"], r["access"], r["size"], r["function"]) == ("stack-out-of-bounds", "read", 8, "vuln"), err
    assert int(r["address"], 16) == slot, err
    ra = r["return_address"]
    assert ra["function"] == "vuln" and int(ra["slot"], 16) == slot
    assert ra["expected"]["function"] == "main"
    assert ra["expected"]["line"] == source_line("stack_ret.c", "call_vuln"), err
    assert ra["target"]["function"] == "win" and ra["target"]["offset"] == 0
    assert [f["function"] for f in r["stack"][:2]] == ["vuln", "main"], err
    assert f"The return address of vuln() at {slot:#x} was overwritten" in err
    assert "BUG: KASAN: stack-out-of-bounds in vuln+" in err


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("how", ["overflow", "loop"])
def test_stack_smash(arch, config, how):
    """A 120-byte string copied into a 16-byte stack array (strcpy, or a byte loop): natively the
    program dies of the smashed frame; emsan reports the return through 'AAAAAAAA' before it.
    x86-64 keeps the return address above the array (copy_arg's own); arm64's frame records sit
    at the bottom of each frame, so the array's overflow reaches its caller's (main's)."""
    if how == "loop" and config.startswith("O0"):
        pytest.skip("at -O0 the loop's own index lives above the array and is smashed first")
    exe = guest(arch, config)
    ref = native(exe, how, SMASH, arch=arch)
    # natively: killed, at the copy's return (x86-64) or, after main went on, at main's (arm64)
    assert ref.returncode < 0 and (b"copied" in ref.stderr) == (arch == "arm64"), ref
    # ret alone: the default (full) reports the strcpy itself first (tests/test_stack_objects.py)
    p, r = report_of(exe, how, SMASH, extra=("--stack-checks", "ret"))
    assert (b"copied" in p.stderr) == (arch == "arm64")
    err = p.stderr.decode(errors="replace")
    victim = {"x86_64": "copy_arg" if how == "overflow" else "copy_loop", "arm64": "main"}[arch]
    assert (r["bug_type"], r["function"]) == ("stack-out-of-bounds", victim), err
    assert r["return_address"]["target"]["addr"] in ("0x4141414141414141", "0x41414141414141"), err
    if arch == "x86_64":
        assert r["return_address"]["expected"]["line"] == source_line("stack_ret.c", "call_copy") \
            if how == "overflow" else r["return_address"]["expected"]["function"] == "main"


def test_smash_continue(arch):
    """--continue: the report, then the fault the smashed return really causes, delivered as the
    kernel would (SIGSEGV)."""
    exe = guest(arch, "O2")
    p = emsan("run", "--continue", "--stack-checks", "ret", exe, "overflow", SMASH)
    err = p.stderr.decode(errors="replace")
    assert err.count("BUG: KASAN: stack-out-of-bounds") == 1, err
    assert p.returncode in (139, -11) or "SIGSEGV" in err, err


def correct_run(exe: str, arch: str, *extra: str) -> None:
    ref = native(exe, arch=arch)
    assert ref.returncode == 0, ref
    p = emsan("run", "--stats", *extra, exe, status=0, timeout=240)
    err = p.stderr.decode(errors="replace")
    assert "BUG:" not in err, err
    assert p.stdout == ref.stdout, err
    st = stats(err)
    assert int(st["ret_mismatches"]) == 0 and int(st["ret_checks"]) > 1000, st


@pytest.mark.parametrize("config", list(CONFIGS))
def test_no_false_reports(arch, config):
    """setjmp/longjmp (also tail-called, through 20 frames), siglongjmp out of a handler, signal
    handlers, swapcontext coroutines, 2000-deep recursion, and C++ exceptions (rethrown, nested,
    through destructors, from the library): same output as native, nothing reported."""
    many([(correct_run, guest(arch, config), arch), (correct_run, guest(arch, config, cxx=True), arch)])


def test_no_false_reports_dynamic(arch):
    """The same programs dynamically linked: PLT stubs, lazy binding, the shared libgcc unwinder."""
    many([(correct_run, guest(arch, "O2", link="dynamic"), arch),
          (correct_run, guest(arch, "O2", cxx=True, link="dynamic"), arch)])


def test_checks_off_and_defaults(arch):
    """--stack-checks none leaves the exploit alone (win() runs, as natively). auto is full where
    the scs collector runs anyway (these static binaries: glibc has no frame pointers), none with
    --stacks fp and in kfence mode (no block hook in their budgets); ret can be asked for."""
    exe = guest(arch, "O2")
    assert stats(emsan("run", "--stats", exe, status=0).stderr.decode())["stack_checks"] == "full"
    p = emsan("run", "--stats", "--stacks", "fp", exe, "win", status=42)
    assert stats(p.stderr.decode())["stack_checks"] == "none"
    report_of(exe, "win", extra=("--stacks", "fp", "--stack-checks", "ret"))
    p = emsan("run", "--stack-checks", "none", exe, "win", status=42)
    assert b"WIN" in p.stdout and b"BUG:" not in p.stderr
    p = emsan("run", "--mode", "kfence", "--stats", exe, "win", status=42)
    assert "ret_checks" not in stats(p.stderr.decode())
    report_of(exe, "win", extra=("--mode", "kfence", "--stack-checks", "ret"))


@pytest.mark.parametrize("prog,args,stdin", [
    ("python3", ["-c", "import json, re, decimal; print(sum(len(json.dumps({'a': [i] * 10})) for i in range(500)))"],
     b""),
    ("sqlite3", [":memory:"], b"create table t(a, b); insert into t values (1, 'x'), (2, 'y');"
                              b"select sum(a), group_concat(b) from t;"
                              b"with recursive c(x) as (select 1 union all select x + 1 from c where x < 500)"
                              b" select sum(x) from c;"),
    ("perl", ["-e", "my %h; $h{$_} = $_ * 2 for 1..3000; my $s = 0; $s += $_ for values %h; print \"$s\\n\";"
                    "eval { die \"x\\n\" }; print \"ok $@\";"], b""),
])
def test_real_programs_no_return_reports(prog, args, stdin):
    """The host's python3, sqlite3 and perl (x86-64) run with return checks and --continue: no
    return is ever reported, their output is native's, and returns really were checked."""
    path = f"/usr/bin/{prog}"
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    ref = subprocess.run([path, *args], input=stdin, capture_output=True, env=env, timeout=120)
    # --no-leaks: perl and python3 leave objects allocated at exit, which is not this test's subject
    p = emsan("run", "--continue", "--no-leaks", "--stats", "--stack-checks", "ret", path, *args, input=stdin,
              env=env)
    err = p.stderr.decode(errors="replace")
    assert p.stdout == ref.stdout and p.returncode == ref.returncode, err
    assert "return address of" not in err, err
    st = stats(err)
    assert int(st["ret_mismatches"]) == 0 and int(st["ret_checks"]) > 10000, st


# --- compiler-assisted mode: overflows made inside libc ----------------------------------------
LIBC_CASES = {
    # case: (bug type, access, size, frame or variable, object)
    "stack_memcpy": ("stack-out-of-bounds", "write", 11, "stack_memcpy", "dest"),
    "stack_memmove": ("stack-out-of-bounds", "write", 11, "stack_memmove", "dest"),
    "stack_memset": ("stack-out-of-bounds", "write", 11, "stack_memset", "dest"),
    "stack_strcpy": ("stack-out-of-bounds", "write", 11, "stack_strcpy", "dest"),
    "stack_strcat": ("stack-out-of-bounds", "write", 6, "stack_strcat", "dest"),
    "stack_strncpy": ("stack-out-of-bounds", "write", 11, "stack_strncpy", "dest"),
    "stack_wcscpy": ("stack-out-of-bounds", "write", 44, "stack_wcscpy", "dest"),
    "stack_overread": ("stack-out-of-bounds", "read", 11, "stack_overread", "src"),
    "stack_read_syscall": ("stack-out-of-bounds", "write", 16, "stack_read_syscall", "dest"),
    "global_memcpy": ("global-out-of-bounds", "write", 11, "global_memcpy", "global_dst"),
    "correct": None,
}


@pytest.mark.parametrize("arch,variant", [("x86_64", "inline"), ("x86_64", "outline"), ("arm64", "inline"),
                                          ("arm64", "outline")])
def test_compiler_assisted_libc_overflows(arch, variant, tmp_path):
    """Built with clang $(emsan cflags): a stack or global array overflowed (or over-read) by one
    element inside libc (memcpy, memmove, memset, strcpy, strcat, strncpy, wcscpy, a read() system call)
    is reported as the kernel reports a stack or global out-of-bounds: the frame, its objects
    and the array from the compiler's frame description, or the global variable; the source
    line of the call. In-bounds calls (struct copies, arrays of structs) report nothing."""
    from test_compiler import build_cc
    exe = build_cc("stack_libc", arch, variant)

    def one(case):
        p, reps = run_report(tmp_path / f"{case}.json", "--mode", "compiler-assisted", exe, case,
                             status=0 if LIBC_CASES[case] is None else 99)
        return case, p, reps
    for case, p, reps in many([(one, c) for c in LIBC_CASES]):
        err = p.stderr.decode(errors="replace")
        want = LIBC_CASES[case]
        if want is None:
            assert reps == [] and b"pair-3" in p.stdout, err
            continue
        bug, access, size, where, obj = want
        assert len(reps) == 1, (case, err)
        r = reps[0]
        assert (r["bug_type"], r["access"], r["size"]) == (bug, access, size), (case, err)
        frames = [f["function"] for f in r["stack"]]
        assert where in frames, (case, err)
        line = next(f["line"] for f in r["stack"] if f["function"] == where)
        assert line == source_line("stack_libc.c", case), (case, err)
        if bug == "global-out-of-bounds":
            assert r["variable"]["name"] == obj and r["variable"]["offset"] == 0, (case, err)
        else:
            so = r["stack_object"]
            assert so["frame"]["function"] == where, (case, err)
            named = {o["name"]: (o["start"], o["end"]) for o in so["objects"]}
            assert named[obj][1] - named[obj][0] == (40 if case == "stack_wcscpy" else 10) and so["offset"] == named[obj][0] + \
                (5 if case == "stack_strcat" else 0), (case, err)
