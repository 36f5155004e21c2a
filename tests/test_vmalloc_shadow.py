"""The mmap area shadowed like the kernel's vmalloc space (tests/guest/vmalloc_shadow.c): a hole
left by munmap gives a KASAN vmalloc-out-of-bounds report, chunks are populated lazily and
released after munmap, and per-page shadow keeps fewer private pages than full shadow."""
from __future__ import annotations

import re

from conftest import EXIT_REPORT, build, emsan, run_report, source_line, tail


def stats(stderr: bytes) -> dict[str, int]:
    m = re.search(rb"^emsan: stats: (.*)$", stderr, re.M)
    assert m, stderr.decode(errors="replace")[-2000:]
    return {k: int(v) for k, _, v in (kv.partition("=") for kv in m.group(1).decode().split(", "))
            if v.lstrip("-").isdigit()}


def test_hole_is_vmalloc_out_of_bounds(arch, tmp_path):
    exe = build("vmalloc_shadow", arch)
    res, reports = run_report(tmp_path / "hole.json", exe, "hole", status=99)
    text = res.stderr.decode(errors="replace")
    line = source_line("vmalloc_shadow.c", "read_hole")
    assert re.search(rf"^BUG: KASAN: vmalloc-out-of-bounds in read_hole\+0x[0-9a-f]+/0x[0-9a-f]+ "
                     rf"vmalloc_shadow.c:{line}$", text, re.M), text
    assert re.search(r"^Read of size 1 at addr [0-9a-f]+ by task vmalloc_shadow/", text, re.M), text
    assert "in an unmapped hole of the mmap area" in text
    (rep,) = reports
    assert (rep["bug_type"], rep["access"], rep["size"], rep["function"]) == ("vmalloc-out-of-bounds", "read", 1,
                                                                              "read_hole")
    assert (rep["stack"][0]["function"], rep["stack"][0]["line"]) == ("read_hole", line)
    # the byte 16 of the unmapped middle page: the mapping's first page ends 4096 - 16 bytes before it
    assert "The buggy address is located 16 bytes to the right of the mapping" in text


def test_interceptor_range_into_a_hole(arch):
    """memset from a mapping across the hole after it: one report for the whole range, at the caller."""
    exe = build("vmalloc_shadow", arch, flags=("-fno-builtin",))
    res = emsan("run", exe, "memset_hole", status=99)
    text = res.stderr.decode(errors="replace")
    line = source_line("vmalloc_shadow.c", "fill_across")
    assert re.search(rf"^BUG: KASAN: vmalloc-out-of-bounds in fill_across\+0x[0-9a-f]+/0x[0-9a-f]+ "
                     rf"vmalloc_shadow.c:{line}$", text, re.M), text
    assert re.search(r"^Write of size 32 at addr ", text, re.M), text
    trace = text.splitlines()[text.splitlines().index("Call Trace:") + 1:]
    assert "memset" in trace[0] and trace[1].startswith(" fill_across+0x"), trace[:3]


def test_hole_without_mmap_shadow_is_a_plain_segv(arch):
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--no-mmap-shadow", exe, "hole", status=139)
    text = res.stderr.decode(errors="replace")
    assert "BUG: KASAN" not in text
    assert "killed by SIGSEGV (signal 11)" in text, text[-3000:]
    pc = next(ln for ln in text.splitlines() if ln.startswith("PC is at "))
    assert pc.startswith("PC is at read_hole+0x") and pc.endswith(f" vmalloc_shadow.c:{source_line('vmalloc_shadow.c', 'read_hole')}"), pc


def test_cycles_run_clean(arch):
    """mmap/munmap cycles over 32 KiB-aligned chunks, each buffer passed to write(): no report."""
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--stats", exe, "cycles", status=0)
    text = res.stderr.decode(errors="replace")
    assert "BUG: KASAN" not in text
    assert res.stdout.decode().startswith("cycles wrote 3145728, faults 0")
    assert stats(res.stderr)["errors"] == 0


def test_cycles_populate_and_release_on_a_clean_run(arch):
    """write() checks its buffer like copy_to_user: the mmap area's chunks it reads are populated
    on that first use (3-page mappings in 32 KiB chunks: private pages) and go back after munmap."""
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--stats", exe, "cycles", status=0)
    st = stats(res.stderr)
    assert st["vm_populated"] > 0 and st["vm_released"] > 0, tail(res)


def test_chunks_populated_lazily_and_released(arch):
    """The same cycles, each also reading past its 3 pages into the hole under a SIGSEGV handler:
    one report (one bug), every fault resolves a chunk to a private page, and the pages go back
    to the pool in batches after munmap."""
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--stats", "--continue", exe, "faults", status=EXIT_REPORT)
    text = res.stderr.decode(errors="replace")
    assert text.count("BUG: KASAN: vmalloc-out-of-bounds in read_after") == 1
    assert res.stdout.decode().startswith("cycles wrote 3145728, faults 256")
    st = stats(res.stderr)
    assert st["vm_populated"] > 0 and st["vm_released"] > 0
    assert st["vm_released"] <= st["vm_populated"]
    assert st["shadow_pages"] < st["shadow_pages_peak"]       # released pages are no longer counted


def test_full_shadow_populates_mapped_regions_eagerly(arch):
    """16 mappings the program only touches with its own stores (which emsan does not check
    outside its heap): per-page shadow never needs their chunks, full shadow gives each its
    private page as it is mapped."""
    exe = build("vmalloc_shadow", arch)
    populated = {}
    for shadow in ("full", "per-page"):
        res = emsan("run", "--stats", "--shadow", shadow, exe, "untouched", status=0)
        assert res.stdout.decode() == "untouched 16 136\n"
        populated[shadow] = stats(res.stderr)["vm_populated"]
    assert populated["full"] >= populated["per-page"] + 16, populated


def test_full_shadow_keeps_more_pages_than_per_page(arch):
    exe = build("vmalloc_shadow", arch)
    peaks = {}
    for shadow in ("full", "per-page"):
        res = emsan("run", "--stats", "--shadow", shadow, exe, "large", status=0)
        assert res.stdout.decode().startswith("large check ")
        st = stats(res.stderr)
        assert st["errors"] == 0
        peaks[shadow] = st["shadow_pages_peak"]
    assert peaks["full"] > peaks["per-page"], peaks
