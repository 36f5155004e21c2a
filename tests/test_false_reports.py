"""No report for correct code, and the right report for the bug next to it.

* Unaligned loads that end at a heap object's end: through the MMIO view the engine performs them
  as the aligned loads around them, which reach past the object; emsan judges the instruction's
  own bytes (both --checks modes, both architectures).
"""
from __future__ import annotations

import json

import pytest

from conftest import build, emsan, native


@pytest.mark.parametrize("checks", ["mmio", "hook"])
def test_unaligned_loads_at_an_objects_end(arch, checks, tmp_path):
    exe = build("unaligned_loads", arch, "static")
    ref = native(exe, "inbounds", arch=arch)
    got = emsan("run", "--checks", checks, exe, "inbounds")
    assert got.stderr == b"", got.stderr.decode(errors="replace")[-3000:]
    assert got.stdout == ref.stdout and got.returncode == ref.returncode == 0
    for size in (2, 4, 8, 16):
        out = tmp_path / f"{size}.json"
        res = emsan("run", "--checks", checks, "--json", str(out), exe, "over", str(size))
        assert res.returncode == 99, res.stderr.decode(errors="replace")[-2000:]
        (rep,) = json.loads(out.read_text())["reports"]
        # A memory hook sees a 16-byte load as 8-byte pieces; the MMIO view decodes the instruction.
        want = 8 if checks == "hook" and size == 16 else size
        assert (rep["bug_type"], rep["access"], rep["size"], rep["object"]["offset"]) == \
            ("slab-out-of-bounds", "read", want, 61)
        assert rep["function"] == "load"
