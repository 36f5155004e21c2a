"""Inlined frames from DWARF (tests/guest/inline_chain.c, -O2 -g, static x86-64): the report's
call trace expands the PC into the chain of inlined functions, innermost first, then the real
function, with the same functions and source lines as `addr2line -i -f`."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import build, have, run_report, source_line


def addr2line_chain(exe: str, pc: str) -> list[tuple[str, str, int]]:
    out = subprocess.run(["addr2line", "-i", "-f", "-e", exe, pc], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    chain = []
    for fn, loc in zip(out[::2], out[1::2]):
        path, line = loc.rsplit(":", 1)
        chain.append((fn, os.path.basename(path), int(line.split()[0])))
    return chain


@pytest.mark.parametrize("dwarf", ["-gdwarf-5", "-gdwarf-4"])
def test_inlined_frames(dwarf, tmp_path):
    if not have("addr2line"):
        pytest.skip("addr2line is not installed")
    exe = build("inline_chain", "x86_64", "static", ("-O2", dwarf))
    out = tmp_path / "r.json"
    res, (rep,) = run_report(out, exe, status=99)
    err = res.stderr.decode(errors="replace")
    assert rep["bug_type"] == "slab-out-of-bounds" and rep["access"] == "write", err
    assert rep["function"] == "write_past_end"       # the title names the real function
    stack = rep["stack"]
    want = addr2line_chain(exe, rep["pc"])
    assert [w[0] for w in want] == ["poke_byte", "fill_tail", "write_past_end"], want
    # addr2line agrees with the source: the store, the call of poke_byte, the call of fill_tail
    assert [w[2] for w in want] == [source_line("inline_chain.c", m) for m in ("store", "poke", "fill")], want
    got = [(f["function"], f["file"], f["line"]) for f in stack[:3]]
    assert got == want, (got, want)
    assert [f["inlined"] for f in stack[:3]] == [True, True, False]
    assert all(f["addr"] == rep["pc"] for f in stack[:3])
    assert stack[2]["offset"] > 0 and stack[2]["size"] > stack[2]["offset"]
    assert [f["function"] for f in stack[3:4]] == ["main"] and not stack[3]["inlined"]
    # Allocation stack: malloc called from write_past_end itself, no inlining there.
    assert rep["object"]["alloc_stack"] and not any(f["inlined"] for f in rep["object"]["alloc_stack"])

    # The text report: the title keeps the real function, the trace shows the inlined frames.
    lines = err.splitlines()
    assert any(ln.startswith("BUG: KASAN: slab-out-of-bounds in write_past_end+0x") for ln in lines), err
    trace = lines[lines.index("Call Trace:") + 1:]
    assert trace[0] == f" poke_byte inline_chain.c:{want[0][2]} (inlined)", trace[:4]
    assert trace[1] == f" fill_tail inline_chain.c:{want[1][2]} (inlined)", trace[:4]
    assert trace[2].startswith(" write_past_end+0x") and trace[2].endswith(f" inline_chain.c:{want[2][2]}")
    assert trace[3].startswith(" main+0x")
