"""Threads: pthreads (mutex, condition variable, __thread data, joins, thread-directed signals,
timed waits) under every mode with output identical to native; a use-after-free across threads
reported with the accessing, allocating and freeing threads; a deadlock detected instead of a
hang; the deterministic scheduler (same interleaving for the same --threads-slice); real
multi-threaded programs (xz -T2, sort --parallel=2, python3's threading) byte-identical to
native with no report.

The oracle is the native x86-64 run: what tests/guest/threads.c prints does not depend on the
architecture, and qemu-aarch64 is unreliable with threads and signals (see test_processes.py).
Thread ids come from the guest itself (gettid), never from emsan's reports."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import build, emsan, have, native

MODES = ["none", "generic", "kfence"]
ENV = {"PATH": "/usr/bin:/bin"}
EXIT_DEADLOCK = 72


def _no_reports(res) -> None:
    assert b"BUG: KASAN" not in res.stderr and b"BUG: KFENCE" not in res.stderr, res.stderr.decode()[-3000:]
    assert b"unreferenced object" not in res.stderr, res.stderr.decode()[-3000:]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["work", "signals", "robust"])
def test_pthreads_match_native(arch, mode, case):
    ref = native(build("threads", "x86_64", "dynamic"), case)
    assert ref.returncode == 0
    got = emsan("run", "--mode", mode, "--timeout", "60", build("threads", arch, "dynamic"), case, env=ENV)
    assert got.returncode == 0, got.stderr.decode()[-3000:]
    assert got.stdout == ref.stdout
    _no_reports(got)
    if case == "work":
        assert b"counter 16000 (expected 16000)\n" in got.stdout
        assert b"log w0:100 w1:101 w2:102 w3:103 w4:104 w5:105 w6:106 w7:107 \n" in got.stdout


def test_static_pthreads_match_native(arch):
    ref = native(build("threads", "x86_64", "static"), "work")
    got = emsan("run", "--timeout", "60", build("threads", arch, "static"), "work", env=ENV)
    assert got.stdout == ref.stdout and got.returncode == ref.returncode == 0, got.stderr.decode()[-3000:]


@pytest.mark.parametrize("mode", ["generic", "kfence"])
def test_use_after_free_across_threads_names_each_thread(arch, mode, tmp_path):
    """Thread A allocates, thread B frees, thread C reads: the access is C's, the Allocated and
    Freed tracks are A's and B's (the tids the guest printed), with A's, B's and C's functions."""
    exe = build("threads", arch, "dynamic")
    out = tmp_path / "r.json"
    got = emsan("run", "--mode", mode, "--sample-interval", "1", "--json", str(out), exe, "uaf", env=ENV)
    assert got.returncode == 99, got.stderr.decode()[-3000:]
    text = got.stdout.decode()
    main, alloc, freed, reader = (int(re.search(rf"{w} (\d+)", text)[1])
                                  for w in ("main", "allocated by", "freed by", "read by"))
    assert len({main, alloc, freed, reader}) == 4
    err = got.stderr.decode()
    if mode == "generic":
        assert "BUG: KASAN: slab-use-after-free in reader_thread" in err
        assert re.search(rf"Read of size 1 at addr [0-9a-f]+ by task threads/{reader}\n", err), err
        assert f"CPU: 0 PID: {reader} Comm: threads" in err
        assert re.search(rf"Allocated by task {alloc}:\n allocator_thread\+", err), err
        assert re.search(rf"Freed by task {freed}:\n freer_thread\+", err), err
    else:
        assert "BUG: KFENCE: use-after-free read in reader_thread" in err
        assert f"CPU: 0 PID: {reader} Comm: threads" in err
        assert re.search(rf"allocated by task {alloc} on cpu 0 at .*\n allocator_thread\+", err), err
        assert re.search(rf"freed by task {freed} on cpu 0 at .*\n freer_thread\+", err), err
    rep = json.loads(out.read_text())["reports"][0]
    assert rep["task"]["pid"] == reader and rep["stack"][0]["function"] == "reader_thread"
    assert rep["object"]["alloc_task"] == alloc and rep["object"]["free_task"] == freed
    assert rep["object"]["alloc_stack"][0]["function"] == "allocator_thread"
    assert rep["object"]["free_stack"][0]["function"] == "freer_thread"


def test_deadlock_ends_the_run_with_each_threads_wait(arch):
    exe = build("threads", arch, "dynamic")
    got = emsan("run", "--timeout", "60", exe, "deadlock", env=ENV, status=EXIT_DEADLOCK, timeout=120)
    assert got.stdout == b"both hold one lock\n"
    err = got.stderr.decode()
    assert "emsan: deadlock: all 2 threads of threads/" in err, err
    waits = re.findall(r"  thread (\d+) at .*: futex wait on (0x[0-9a-f]+)\n", err)
    assert len(waits) == 2 and waits[0][0] != waits[1][0] and waits[0][1] != waits[1][1], err


def test_schedule_is_deterministic_and_follows_the_slice():
    """Unlocked appends from three threads: the interleaving (the order's hash) is the same in two
    runs with the same slice, and a shorter slice switches more often."""
    exe = build("threads", "x86_64", "dynamic")

    def run(slice_):
        got = emsan("run", "--mode", "none", "--seed", "1", "--threads-slice", str(slice_), exe, "race", status=0)
        m = re.fullmatch(rb"(\d+) appends, (\d+) switches, order hash ([0-9a-f]+)\n", got.stdout)
        assert m, got.stdout
        return int(m[2]), m[3]
    first, again, short = run(1000), run(1000), run(250)
    assert first == again
    assert first[0] > 10 and short[0] > 2 * first[0]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_slice_hook_removed_once_one_thread_is_left(arch, monkeypatch, capfd):
    """The scheduler's block hook (native/sched.c) counts blocks only while threads share the
    engine: once the other thread has ended and the main one has run a slice alone, it is taken
    out of the engine (its counter stays where it stopped while the guest computes on), and a
    new thread puts it back."""
    from emsan.machine.engine import Machine
    from emsan.session.options import RunOptions
    from emsan.session.run import Session

    exe = build("threads", arch, src_dir="bench")
    counters = []
    install = Machine.use_time_slice

    def use_time_slice(self):
        install(self)
        if not counters or counters[-1] is not self.slice:
            counters.append(self.slice)
    monkeypatch.setattr(Machine, "use_time_slice", use_time_slice)
    s = Session(RunOptions(program=exe, args=["compute", "300", "thread"], mode="none", threads_slice=500))
    info = s.run()
    assert (info.kind, info.status) == ("exit", 0) and capfd.readouterr().out == "300\n"
    assert len(counters) == 1 and s.machine.slice is None
    # 300,000 rounds of the loop ran after the drop: a hook still in the engine would have
    # counted them down far below zero
    assert tuple(counters[0]) == (0, 1)


# --- real programs ---------------------------------------------------------------------------
def _program(arch: str, name: str) -> tuple[str, list[str]]:
    if arch == "x86_64":
        path = shutil.which(name)
        if path is None:
            pytest.skip(f"{name} is not installed")
        return path, []
    from test_processes import _in_root
    from test_real_programs import arm64_root
    return _in_root(name), ["--sysroot", arm64_root()]


def _text(size: int) -> bytes:
    """Lines that compress and sort in a fixed, non-trivial way."""
    return b"".join(b"%08x line %d of the input\n" % ((i * 2654435761) & 0xFFFFFFFF, i) for i in range(size // 32))


@pytest.mark.parametrize("mode", ["generic", "kfence"])
def test_xz_two_threads_round_trip(arch, mode, tmp_path):
    """xz -T2 with blocks small enough that both threads compress (and decompress: xz 5.4's
    threaded decoder); the output is what native xz -T2 writes, and decompresses to the input.
    --check=none: liblzma's CLMUL CRC reads whole aligned 16-byte words past a buffer's end (it
    is built no_sanitize_address for that reason), which emsan reports wherever a buffer of the
    threaded decoder ends inside such a word; that is not about threads."""
    if not have("xz"):
        pytest.skip("xz is not installed")
    prog, extra = _program(arch, "xz")
    data = _text(600_000)
    args = ["-T2", "-1", "--block-size=131072", "--check=none", "-c"]
    ref = native(shutil.which("xz"), *args, input=data)
    got = emsan("run", "--mode", mode, *extra, "--timeout", "120", prog, *args, input=data, env=ENV, timeout=200)
    assert got.returncode == 0 and got.stdout == ref.stdout, got.stderr.decode()[-3000:]
    _no_reports(got)
    back = emsan("run", "--mode", mode, *extra, "--timeout", "120", prog, "-T2", "-dc", input=got.stdout, env=ENV,
                 timeout=200)
    assert back.stdout == data, back.stderr.decode()[-3000:]
    _no_reports(back)


def test_sort_parallel(arch):
    """sort --parallel=2 on 1.5 MB with a small buffer (its threads merge). --no-leaks: GNU sort
    leaks 8 bytes at exit by design (Valgrind's "definitely lost" too)."""
    prog, extra = _program(arch, "sort")
    data = _text(1_500_000)
    args = ["--parallel=2", "-S", "1M"]
    ref = native(shutil.which("sort"), *args, input=data, env=ENV)
    got = emsan("run", "--no-leaks", *extra, "--timeout", "120", prog, *args, input=data, env=ENV, timeout=200)
    assert got.returncode == 0 and got.stdout == ref.stdout, got.stderr.decode()[-3000:]
    _no_reports(got)


PY_THREADS = """
import threading, queue, hashlib
q, results, lock = queue.Queue(), {}, threading.Lock()
def worker(n):
    h = hashlib.sha256()
    for i in range(1000):
        h.update(f"{n}:{i}".encode())
    with lock:
        results[n] = h.hexdigest()[:16]
    q.put(n)
ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
ev = threading.Event()
threading.Timer(0.01, ev.set).start()
print("event", ev.wait(10))
print(sorted(q.get() for _ in range(4)))
for k in sorted(results): print(k, results[k])
"""


def test_python_threading(arch):
    if not have("python3"):
        pytest.skip("python3 is not installed")
    prog, extra = _program(arch, "python3")
    ref = native(shutil.which("python3"), "-S", "-c", PY_THREADS, env=ENV)
    got = emsan("run", *extra, "--timeout", "120", prog, "-S", "-c", PY_THREADS, env=ENV, timeout=200)
    assert got.returncode == 0 and got.stdout == ref.stdout, got.stderr.decode()[-3000:]
    assert got.stdout.startswith(b"event True\n[0, 1, 2, 3]\n")
    _no_reports(got)


def test_compiler_assisted_threads(arch):
    """A guest built with clang $(emsan cflags): its threads run, and a use-after-free across
    threads names the threads as in generic mode."""
    from test_compiler import build_cc
    exe = build_cc("threads", arch)
    ref = native(build("threads", "x86_64", "dynamic"), "work")
    got = emsan("run", "--timeout", "60", exe, "work", env=ENV, status=0)
    assert got.stdout == ref.stdout
    _no_reports(got)
    bug = emsan("run", "--timeout", "60", exe, "uaf", env=ENV, status=99)
    text, err = bug.stdout.decode(), bug.stderr.decode()
    alloc = int(re.search(r"allocated by (\d+)", text)[1])
    freed = int(re.search(r"freed by (\d+)", text)[1])
    assert "(compiler-assisted mode)" in err and "BUG: KASAN: slab-use-after-free in reader_thread" in err, err
    assert re.search(rf"Allocated by task {alloc}:\n allocator_thread\+", err), err
    assert re.search(rf"Freed by task {freed}:\n freer_thread\+", err), err


@pytest.mark.parametrize("mode", ["sw-tags", "hw-tags"])
def test_tag_modes_with_threads(mode):
    """arm64's tag modes: the pthread program as natively, and the use-after-free across threads
    with the threads of the stack ring's allocation and free records."""
    exe = build("threads", "arm64", "dynamic")
    ref = native(build("threads", "x86_64", "dynamic"), "work")
    got = emsan("run", "--mode", mode, "--timeout", "60", exe, "work", env=ENV, status=0)
    assert got.stdout == ref.stdout
    _no_reports(got)
    bug = emsan("run", "--mode", mode, "--timeout", "60", exe, "uaf", env=ENV, status=99)
    text, err = bug.stdout.decode(), bug.stderr.decode()
    reader, alloc, freed = (int(re.search(rf"{w} (\d+)", text)[1]) for w in ("read by", "allocated by", "freed by"))
    assert "BUG: KASAN: slab-use-after-free in reader_thread" in err
    assert re.search(rf"by task threads/{reader}\n", err), err
    assert re.search(rf"Allocated by task {alloc}:\n allocator_thread\+", err), err
    assert re.search(rf"Freed by task {freed}:\n freer_thread\+", err), err
