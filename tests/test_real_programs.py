"""Real system programs (the host's own x86-64 binaries) under emsan: byte-identical stdout, the
same exit status, and nothing on stderr (no "unsupported syscall" lines).

Each runs twice: with --mode none (the Linux personality alone) and with the default generic
KASAN mode, which must not report anything or change a byte of output; its leak scan (on by
default) must find exactly the memory Valgrind memcheck finds definitely lost in the same command.
The only one: GNU sort never frees one block main allocates (its size depends on the arguments;
Valgrind's stack for it is the same call site in sort), a true leak."""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys

import pytest

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}
MTIME = 1_600_000_000            # 2020-09-13: old enough that ls prints the year


def tool(name: str) -> str:
    path = shutil.which(name, path=ENV["PATH"])
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def host(*cmd: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), input=input, capture_output=True, env=ENV, timeout=120)


MODE = "none"
LEAK_SUMMARY = re.compile(rb"^emsan: kmemleak: (\d+) new suspected memory leaks? \((\d+) bytes from ", re.M)


def valgrind_lost(cmd: tuple[str, ...], input: bytes | None) -> tuple[int, int]:
    """Valgrind memcheck's verdict on the same command: definitely lost (blocks, bytes)."""
    res = subprocess.run(["valgrind", "--leak-check=full", *cmd], input=input, capture_output=True, env=ENV,
                         timeout=300)
    m = re.search(rb"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", res.stderr)
    assert m or b"All heap blocks were freed" in res.stderr, res.stderr[-2000:].decode(errors="replace")
    return (int(m.group(2).replace(b",", b"")), int(m.group(1).replace(b",", b""))) if m else (0, 0)


@pytest.fixture(params=["none", "generic"], autouse=True)
def mode(request):
    global MODE
    MODE = request.param
    yield request.param


def under_emsan(*cmd: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    """The command under emsan; in generic mode, Valgrind's leak verdict on it rides along
    (`got.lost`; without Valgrind there is no oracle, and the scan is turned off)."""
    leaks = () if MODE != "generic" or shutil.which("valgrind") else ("--no-leaks",)
    got = subprocess.run([sys.executable, "-m", "emsan", "run", "--mode", MODE, *leaks, *cmd], input=input,
                         capture_output=True, env=ENV, timeout=300)
    got.lost = valgrind_lost(cmd, input) if MODE == "generic" and not leaks else (0, 0)  # type: ignore[attr-defined]
    return got


def assert_same(ref: subprocess.CompletedProcess, got: subprocess.CompletedProcess) -> None:
    """Same output and status as the host run; leaks exactly where Valgrind finds them (then
    the leak status and the summary of the leaks' count and bytes)."""
    assert got.stdout == ref.stdout
    lost = got.lost  # type: ignore[attr-defined]
    if lost != (0, 0):
        m = LEAK_SUMMARY.search(got.stderr)
        assert m is not None and (int(m.group(1)), int(m.group(2))) == lost, got.stderr.decode(errors="replace")
        assert got.returncode == 99 and ref.returncode == 0
        return
    assert got.stderr == b"", got.stderr.decode(errors="replace")
    assert got.returncode == ref.returncode


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    """~2,000 lines of pseudo-random words: deterministic, big enough to exercise buffering."""
    rng = random.Random(1234)
    words = ["alpha", "beta", "gamma", "delta", "emsan", "kasan", "kfence", "shadow", "quarantine", "Zulu"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) + f" {rng.randint(0, 99999)}"
             for _ in range(2000)]
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def listing_dir(tmp_path_factory) -> str:
    """A directory whose `ls -la` is stable: fixed names, sizes, modes and mtimes (its parent too)."""
    parent = tmp_path_factory.mktemp("listing")
    d = parent / "fixture"
    d.mkdir()
    for i, name in enumerate(["README", "a.txt", "b.bin", "zz-last", ".hidden"]):
        (d / name).write_bytes(bytes(range(256)) * i + b"x" * (7 * i))
        os.chmod(d / name, 0o644 if i % 2 else 0o600)
    (d / "subdir").mkdir()
    (d / "subdir" / "inner").write_text("inner\n")
    os.symlink("a.txt", d / "link-to-a")
    os.chmod(d / "b.bin", 0o755)
    for i, p in enumerate(sorted([*d.rglob("*"), d, parent], reverse=True)):
        os.utime(p, (MTIME + 3600 * i, MTIME + 3600 * i), follow_symlinks=False)
    return str(d)


def test_ls_la(listing_dir):
    ls = tool("ls")
    ref = host(ls, "-la", listing_dir)
    got = under_emsan(ls, "-la", listing_dir)
    assert_same(ref, got)
    assert b"link-to-a -> a.txt" in got.stdout and b" 2020 " in got.stdout


def test_ls_missing_entry_status(listing_dir):
    """ls reports a missing argument with status 2 and its own message: stderr passes through."""
    ls = tool("ls")
    ref = host(ls, "-l", listing_dir, os.path.join(listing_dir, "missing"))
    got = under_emsan(ls, "-l", listing_dir, os.path.join(listing_dir, "missing"))
    assert got.returncode == ref.returncode == 2
    assert got.stdout == ref.stdout
    assert got.stderr == ref.stderr


@pytest.mark.parametrize("args", [(), ("-n", "-k", "2", "-r"), ("-u", "-f")])
def test_sort(text_file, args):
    sort = tool("sort")
    ref = host(sort, *args, text_file)
    assert_same(ref, under_emsan(sort, *args, text_file))


def test_gzip_roundtrip(text_file):
    gzip = tool("gzip")
    data = open(text_file, "rb").read()
    ref = host(gzip, "-n", "-c", input=data)
    packed = under_emsan(gzip, "-n", "-c", input=data)
    assert_same(ref, packed)
    unpacked = under_emsan(gzip, "-dc", input=packed.stdout)
    assert unpacked.stderr == b""
    assert unpacked.returncode == 0
    assert unpacked.stdout == data


def test_gzip_corrupt_input_status():
    gzip = tool("gzip")
    bad = b"\x1f\x8b\x08\x00" + bytes(20)
    ref = host(gzip, "-dc", input=bad)
    got = under_emsan(gzip, "-dc", input=bad)
    assert got.returncode == ref.returncode != 0
    assert got.stderr == ref.stderr


def test_sha256sum(text_file, listing_dir):
    sha = tool("sha256sum")
    files = [text_file, os.path.join(listing_dir, "b.bin"), os.path.join(listing_dir, "README")]
    ref = host(sha, *files)
    assert_same(ref, under_emsan(sha, *files))
    data = open(text_file, "rb").read()
    assert_same(host(sha, input=data), under_emsan(sha, input=data))


@pytest.mark.parametrize("args, status", [(("-c", "emsan"), 0), (("-c", "-i", "zulu"), 0),
                                          (("-c", "no such word"), 1)])
def test_grep_count(text_file, args, status):
    grep = tool("grep")
    ref = host(grep, *args, text_file)
    got = under_emsan(grep, *args, text_file)
    assert_same(ref, got)
    assert got.returncode == status


@pytest.mark.parametrize("args", [("-c",), ("-A", "x", "-t", "x1z", "-N", "600"), ("-t", "d4", "-j", "16", "-N", "64")])
def test_od(listing_dir, args):
    od = tool("od")
    target = os.path.join(listing_dir, "zz-last")
    ref = host(od, *args, target)
    assert_same(ref, under_emsan(od, *args, target))
