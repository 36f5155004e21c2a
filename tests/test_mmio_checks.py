"""Generic mode with --checks inline (the default: translated code checks the shadow, engine patch
011) and --checks mmio (heap accesses checked through an MMIO view of emsan's heap) instead of a
memory hook. The KASAN KUnit port (tests/guest/kasan_cases.c) gives the kernel's reports as
tests/test_kasan.py asserts them (bug type, access kind, size, offset, first frame and its marked
source line), and the same PCs as the hook (recovered through QEMU's cpu_restore_state), except
where these checks see more: x86 atomic read-modify-writes, each named exactly (the hook may only
name its candidates), and arm64 16-byte accesses, reported whole as the kernel does instead of as
the hook's 8-byte pieces."""
from __future__ import annotations

import pytest

from conftest import build, run_report
from test_kasan import EXPECTED, SUAF, R, W, case_results, check_case, status_after

MMIO_EXPECTED = {
    "x86_64": EXPECTED,
    "arm64": {**EXPECTED, "kmalloc_oob_16": [W(0, "oob_16", 16)], "kmalloc_uaf_16": [R(0, "uaf_16", 16, SUAF)]},
}


CHECKS = ("inline", "mmio")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return {checks: case_results(tmp_path_factory, "--checks", checks) for checks in CHECKS}


@pytest.mark.parametrize("checks", CHECKS)
@pytest.mark.parametrize("case", list(EXPECTED))
def test_kasan_case_through_engine_checks(arch, case, checks, results):
    res, reports = results[checks](arch)[case]
    check_case(arch, case, res, reports, MMIO_EXPECTED[arch][case])


# Cases whose reports are the guest's own loads and stores (the MMIO view's path, not the
# interceptors'): slab and large objects, in bounds of a page and across, reads and writes.
SAME_PC_CASES = ("kmalloc_oob_right", "krealloc_less_oob", "kmalloc_large_oob_right", "kmalloc_uaf2", "ksize_uaf")


@pytest.mark.parametrize("checks", CHECKS)
@pytest.mark.parametrize("arch_name", ["x86_64", "arm64"])
def test_same_pcs_as_the_hook(arch_name, checks, results, tmp_path):
    """The PC of each report is the hook's (whose PCs Unicorn syncs before these accesses)."""
    exe = build("kasan_cases", arch_name, "static", ("-fno-builtin",))
    for case in SAME_PC_CASES:
        _, hook = run_report(tmp_path / f"{case}.json", "--checks", "hook", "--continue", exe, case,
                             status=status_after(EXPECTED[case]))
        _, mine = results[checks](arch_name)[case]
        pcs = [[r["pc"] for r in reps] for reps in (hook, mine)]
        assert len(pcs[0]) == len(EXPECTED[case]) and all(pcs[0]), (case, pcs)
        assert pcs[0] == pcs[1], (arch_name, case, pcs)
