"""The mmap area shadowed like the kernel's vmalloc space (tests/guest/vmalloc_shadow.c): a hole
left by munmap gives a KASAN vmalloc-out-of-bounds report, chunks are populated lazily and
released after munmap, and per-page shadow keeps fewer private pages than full shadow."""
from __future__ import annotations

import json
import re


from conftest import build, emsan


def stats(stderr: bytes) -> dict[str, int]:
    m = re.search(rb"^emsan: stats: (.*)$", stderr, re.M)
    assert m, stderr.decode(errors="replace")[-2000:]
    return {k: int(v) for k, _, v in (kv.partition("=") for kv in m.group(1).decode().split(", "))
            if v.lstrip("-").isdigit()}


def test_hole_is_vmalloc_out_of_bounds(arch, tmp_path):
    exe = build("vmalloc_shadow", arch)
    out = tmp_path / "hole.json"
    res = emsan("run", "--json", str(out), exe, "hole")
    text = res.stderr.decode(errors="replace")
    assert res.returncode == 99, text[-3000:]
    assert "Traceback" not in text
    assert text.count("BUG: KASAN: ") == 1
    assert re.search(r"^BUG: KASAN: vmalloc-out-of-bounds in read_hole\b", text, re.M), text
    assert re.search(r"^Read of size \d+ at addr [0-9a-f]+ by task vmalloc_shadow/", text, re.M), text
    assert "in an unmapped hole of the mmap area" in text
    (rep,) = json.loads(out.read_text())["reports"]
    assert rep["bug_type"] == "vmalloc-out-of-bounds" and rep["access"] == "read"
    assert rep["function"] == "read_hole"


def test_interceptor_range_into_a_hole(arch):
    """memset from a mapping across the hole after it: one report for the whole range, at the caller."""
    exe = build("vmalloc_shadow", arch, flags=("-fno-builtin",))
    res = emsan("run", exe, "memset_hole")
    text = res.stderr.decode(errors="replace")
    assert res.returncode == 99, text[-3000:]
    assert re.search(r"^BUG: KASAN: vmalloc-out-of-bounds in fill_across\b", text, re.M), text
    assert re.search(r"^Write of size 32 at addr ", text, re.M), text


def test_hole_without_mmap_shadow_is_a_plain_segv(arch):
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--no-mmap-shadow", exe, "hole")
    text = res.stderr.decode(errors="replace")
    assert res.returncode == 139, text[-3000:]
    assert "BUG: KASAN" not in text and "Traceback" not in text
    assert "SIGSEGV" in text or "segfault" in text.lower(), text[-3000:]


def test_cycles_run_clean(arch):
    """mmap/munmap cycles over 32 KiB-aligned chunks, each buffer passed to write(): no report."""
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--stats", exe, "cycles")
    text = res.stderr.decode(errors="replace")
    assert res.returncode == 0, text[-3000:]
    assert "BUG: KASAN" not in text
    assert res.stdout.decode().startswith("cycles wrote 3145728, faults 0")
    assert stats(res.stderr)["errors"] == 0


def test_cycles_populate_and_release_on_a_clean_run(arch):
    """write() checks its buffer like copy_to_user: the mmap area's chunks it reads are populated
    on that first use (3-page mappings in 32 KiB chunks: private pages) and go back after munmap."""
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--stats", exe, "cycles")
    st = stats(res.stderr)
    assert res.returncode == 0 and st["vm_populated"] > 0 and st["vm_released"] > 0, res.stderr[-2000:]


def test_chunks_populated_lazily_and_released(arch):
    """The same cycles, each also reading past its 3 pages into the hole under a SIGSEGV handler:
    one report (one bug), every fault resolves a chunk to a private page, and the pages go back
    to the pool in batches after munmap."""
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--stats", "--continue", exe, "faults")
    text = res.stderr.decode(errors="replace")
    assert res.returncode == 99, text[-3000:]  # --continue: the error status after a report
    assert text.count("BUG: KASAN: vmalloc-out-of-bounds in read_after") == 1
    assert res.stdout.decode().startswith("cycles wrote 3145728, faults 256")
    st = stats(res.stderr)
    assert st["vm_populated"] > 0 and st["vm_released"] > 0
    assert st["vm_released"] <= st["vm_populated"]
    assert st["shadow_pages"] < st["shadow_pages_peak"]       # released pages are no longer counted


def test_full_shadow_populates_mapped_regions_eagerly(arch):
    exe = build("vmalloc_shadow", arch)
    res = emsan("run", "--stats", "--shadow", "full", exe, "cycles")
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]
    assert stats(res.stderr)["vm_populated"] > 0


def test_full_shadow_keeps_more_pages_than_per_page(arch):
    exe = build("vmalloc_shadow", arch)
    peaks = {}
    for shadow in ("full", "per-page"):
        res = emsan("run", "--stats", "--shadow", shadow, exe, "large")
        assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]
        assert res.stdout.decode().startswith("large check ")
        st = stats(res.stderr)
        assert st["errors"] == 0
        peaks[shadow] = st["shadow_pages_peak"]
    assert peaks["full"] > peaks["per-page"], peaks
