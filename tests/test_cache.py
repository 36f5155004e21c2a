"""The on-disk cache of what emsan derives from ELF files (emsan.cache.per_file), which start-up
reads instead of parsing every module again:

* an entry is used only for the same file (path, inode, size, modification and change times) and
  the same deriving code; a file changed in place, or replaced by another with the same size and
  mtime, is derived again, and a file changed too recently to be told apart is never stored;
* a cache directory that cannot be created or written, and a damaged entry, cost only the cache;
* the entry-point index read back from the cache gives what nm says the new binary holds;
* reports are symbolized the same with an empty cache, a warm one and none at all.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from conftest import EXIT_REPORT, build, run_report, source_line
from emsan import cache
from emsan.sanitizer import entrypoints


@pytest.fixture
def settled(monkeypatch, tmp_path):
    """A cache in tmp_path/cache that treats every file as settled (the tests' files are seconds
    old; the real rule is tested on its own below)."""
    monkeypatch.setenv("EMSAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "RACY_NS", -10**12)
    return tmp_path / "cache"


def counting(path):
    calls = []

    def make():
        calls.append(1)
        return path.read_text()
    return make, calls


def test_an_entry_is_reused_for_the_same_file(settled, tmp_path):
    f = tmp_path / "f"
    f.write_text("one")
    make, calls = counting(f)
    assert cache.per_file(str(f), "t", __file__, make) == "one"
    assert cache.per_file(str(f), "t", __file__, make) == "one"
    assert len(calls) == 1
    assert len(list((settled / "files").iterdir())) == 1
    # other deriving code (another install) has its own entry
    assert cache.per_file(str(f), "t", cache.__file__, make) == "one" and len(calls) == 2


def test_a_file_rewritten_in_place_with_its_old_mtime_is_derived_again(settled, tmp_path):
    f = tmp_path / "f"
    f.write_text("one")
    make, calls = counting(f)
    cache.per_file(str(f), "t", __file__, make)
    st = os.stat(f)
    time.sleep(0.05)                     # the next tick of the file clock
    f.write_text("two")                  # same size, same inode
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_mtime_ns == st.st_mtime_ns and os.stat(f).st_ino == st.st_ino
    assert cache.per_file(str(f), "t", __file__, make) == "two" and len(calls) == 2


def test_a_file_replaced_by_another_of_the_same_size_and_mtime_is_derived_again(settled, tmp_path):
    f, g = tmp_path / "f", tmp_path / "g"
    f.write_text("one")
    make, calls = counting(f)
    cache.per_file(str(f), "t", __file__, make)
    st = os.stat(f)
    time.sleep(0.05)
    g.write_text("two")
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(g, f)                     # `cp -p` / a linker's rename over it
    assert cache.per_file(str(f), "t", __file__, make) == "two" and len(calls) == 2


def test_a_file_changed_moments_ago_is_not_stored(monkeypatch, tmp_path):
    monkeypatch.setenv("EMSAN_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "f"
    f.write_text("one")
    make, calls = counting(f)
    for _ in range(2):
        assert cache.per_file(str(f), "t", __file__, make) == "one"
    assert len(calls) == 2
    assert not list((tmp_path / "cache" / "files").iterdir())


def test_an_unusable_cache_costs_only_the_cache(settled, monkeypatch, tmp_path):
    f = tmp_path / "f"
    f.write_text("one")
    make, calls = counting(f)
    # a cache directory that cannot be created: its parent is a file
    (tmp_path / "plain").write_text("")
    monkeypatch.setenv("EMSAN_CACHE_DIR", str(tmp_path / "plain" / "cache"))
    assert [cache.per_file(str(f), "t", __file__, make) for _ in range(2)] == ["one", "one"]
    assert len(calls) == 2
    # an entry that cannot be written (a directory in its place), then a damaged one
    monkeypatch.setenv("EMSAN_CACHE_DIR", str(settled))
    cache.per_file(str(f), "t", __file__, make)
    entry = next((settled / "files").iterdir())
    entry.unlink()
    entry.mkdir()
    assert cache.per_file(str(f), "t", __file__, make) == "one" and len(calls) == 4
    assert not [p for p in (settled / "files").iterdir() if p.name.endswith(".tmp")]
    entry.rmdir()
    entry.write_text('{"key": "some other file", "value": "stale"}')
    assert cache.per_file(str(f), "t", __file__, make) == "one" and len(calls) == 5
    entry.write_text("{not json")
    assert cache.per_file(str(f), "t", __file__, make) == "one" and len(calls) == 6
    assert cache.per_file(str(f), "t", __file__, make) == "one" and len(calls) == 6     # rewritten


def _nm_functions(path: str) -> dict[str, int]:
    out = subprocess.run(["nm", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    return {f[2].split("@")[0]: int(f[0], 16) for f in (line.split() for line in out.splitlines())
            if len(f) == 3 and f[1] in "TtWw"}


def test_entry_points_follow_the_binary_not_the_cache(settled, tmp_path):
    """Oracle: nm. The index of one program is cached; another program then takes its place with
    the same size and mtime (padded), and emsan's entry points are the new program's."""
    first = build("kasan_cases", "x86_64", "static", ("-fno-builtin",))
    second = build("hello", "x86_64", "static")
    exe = tmp_path / "prog"
    shutil.copy(first, exe)
    before = {ep.name: ep.addr for ep in entrypoints.module_entry_points(str(exe), 0)}
    assert before["malloc"] == _nm_functions(first)["malloc"]
    assert list((settled / "files").glob("entrypoints-*"))
    st = os.stat(exe)
    time.sleep(0.05)
    data = open(second, "rb").read()
    assert len(data) <= st.st_size
    tmp = tmp_path / "new"
    tmp.write_bytes(data + b"\0" * (st.st_size - len(data)))       # trailing bytes: still the same ELF
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, exe)
    after = {ep.name: ep.addr for ep in entrypoints.module_entry_points(str(exe), 0)}
    want = _nm_functions(second)
    assert after["malloc"] == want["malloc"] != before["malloc"]
    assert all(want[name] == addr for name, addr in after.items())


def test_reports_are_symbolized_the_same_cold_warm_and_without_a_cache(tmp_path):
    """A dynamic program (its libc's index is cached; the program is too new to be): the report's
    frames are the source's, whatever the cache holds or whether there is one."""
    exe = build("kasan_cases", "x86_64", "dynamic", ("-fno-builtin",))
    (tmp_path / "plain").write_text("")
    frames = []
    for where in ("cache", "cache", "plain/cache"):
        env = {**os.environ, "EMSAN_CACHE_DIR": str(tmp_path / where)}
        _, reports = run_report(tmp_path / "r.json", exe, "kmalloc_oob_right", status=EXIT_REPORT, env=env)
        rep = reports[0]
        assert rep["bug_type"] == "slab-out-of-bounds" and rep["function"] == "kmalloc_oob_right"
        assert (rep["stack"][0]["file"], rep["stack"][0]["line"]) == \
            ("kasan_cases.c", source_line("kasan_cases.c", "oob_right.1"))
        alloc = rep["object"]["alloc_stack"]
        assert [f["function"] for f in alloc][:2] == ["kmalloc_oob_right", "main"]
        assert "__libc_start_main" in [f["function"] for f in rep["stack"]]
        frames.append([(f["function"], f["file"], f["line"]) for f in rep["stack"] + alloc])
        if where == "cache":
            assert list((tmp_path / "cache" / "files").glob("entrypoints-*"))
    assert frames[0] == frames[1] == frames[2]


def test_stack_tables_follow_the_file_too(settled, tmp_path):
    """The stack collectors' per-module tables (sanitizer/stacks.py) use the same identity."""
    from emsan.sanitizer import stacks
    f = tmp_path / "f"
    f.write_bytes(b"one")
    calls = []

    def make():
        calls.append(1)
        return f.read_bytes()
    assert stacks._cached(str(f), "t", make) == b"one" and stacks._cached(str(f), "t", make) == b"one"
    assert len(calls) == 1
    st = os.stat(f)
    time.sleep(0.05)
    f.write_bytes(b"two")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stacks._cached(str(f), "t", make) == b"two" and len(calls) == 2
