"""emsan fuzzed (issue 14): seeded mutants of small valid x86-64 and arm64 programs (byte flips,
truncations, ELF- and program-header edits) and a guest calling about 200 system calls with
random arguments. The oracle (bench/fuzz.py judge()): exit 2 with one `emsan:` line, a guest
signal with its oops, or a normal end; never exit 70, a traceback, an internal-error line, a
host signal or a hang. A few hundred cases with fixed seeds here; bench/fuzz.py runs thousands."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fuzz  # noqa: E402

ARCHES = [a for a, cc in fuzz.COMPILERS.items() if shutil.which(cc)]


@pytest.mark.parametrize("arch", ARCHES)
def test_mutated_programs_and_random_syscalls(arch):
    res = fuzz.fuzz([arch], elf=90, syscalls=3000, seed=14, jobs=2, per_run=1500,
                    modes=("none", "none", "none", "generic"), hang=30.0, log=print)
    failures = res["failures"]
    assert not failures, "\n".join(f"{f['case']}: {f['verdict']}\n{f['stderr_tail']}" for f in failures[:5])
    elf, calls = res["summary"][f"{arch} elf"], res["summary"][f"{arch} syscalls"]
    assert elf["runs"] == 90
    assert elf["statuses"].get("2", 0) >= 10           # the mutants reach the loader's refusals...
    assert len(elf["statuses"]) >= 3                    # ...and run, crash or exit in other ways
    assert calls["syscalls"] >= 3000                    # runs the guest ended early were made up for
