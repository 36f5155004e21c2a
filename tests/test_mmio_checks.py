"""Generic mode with --checks mmio (the default): heap accesses checked through an MMIO view of
emsan's heap instead of a memory hook. The KASAN KUnit port (tests/guest/kasan_cases.c) gives the
hook's reports, PCs included (recovered through QEMU's cpu_restore_state), except where the
MMIO view sees more: x86 lock-prefixed read-modify-writes, which Unicorn's hooks miss, and arm64
16-byte accesses, reported whole as the kernel does instead of as the hook's 8-byte pieces."""
from __future__ import annotations

import json
import pytest

from conftest import build, emsan
from test_kasan import ANY_WORD, EXPECTED, OUTLINE_ATOMICS, SOOB, SUAF, TITLES, case_results

MMIO_EXPECTED = {
    "x86_64": {**EXPECTED,
               "kasan_bitops_generic": [(SOOB, "read", 8, 8)] * 4,
               "kasan_atomics": [(SOOB, a, 4, 48) for a in ("read", "write", "read", "write", "read", "write",
                                                           "write")]},
    "arm64": {**EXPECTED,
              "kmalloc_oob_16": [(SOOB, "write", 16, 0)],
              "kmalloc_uaf_16": [(SUAF, "read", 16, 0)]},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return case_results(tmp_path_factory, "--checks", "mmio")


@pytest.mark.parametrize("case", list(EXPECTED))
def test_kasan_case_through_mmio(arch, case, results):
    res, reports = results(arch)[case]
    text = res.stderr.decode(errors="replace")
    assert "Traceback" not in text and res.returncode == (99 if reports else 0), text[-3000:]  # --continue: the error status after a report
    got = [(r["bug_type"], r["access"], r["size"], r["object"]["offset"] if "object" in r else None)
           for r in reports]
    want = MMIO_EXPECTED[arch][case]
    if case in ANY_WORD and arch == "x86_64":
        assert 1 <= len(got) <= 2 and all(g[:3] == want[0][:3] and g[3] in (0, 8) for g in got), got
    else:
        assert got == want, text[-3000:]
    for r in reports:
        fn = r["function"]
        assert fn == case or fn in TITLES.get(case, ()) or fn.startswith(OUTLINE_ATOMICS), fn
        assert r["object"]["alloc_stack"], "allocation stack missing"
    assert text.count("BUG: KASAN: ") == len(reports)


def test_same_pcs_as_the_hook(tmp_path):
    """The PC (and so the line) of each report is the hook's, on both arches."""
    for arch in ("x86_64", "arm64"):
        exe = build("kasan_cases", arch, "static", ("-fno-builtin",))
        for case in ("kmalloc_oob_right", "krealloc_less_oob", "ksize_uaf", "kasan_strings"):
            pcs = []
            for checks in ("hook", "mmio"):
                out = tmp_path / f"{arch}-{case}-{checks}.json"
                emsan("run", "--checks", checks, "--continue", "--json", str(out), exe, case)
                pcs.append([r["pc"] for r in json.loads(out.read_text())["reports"]])
            assert pcs[0] == pcs[1], (arch, case, pcs)
