"""`emsan fleet`: N runs with different seeds, in parallel, and a table of the bugs they caught."""
from __future__ import annotations

import json

from conftest import build, emsan


def test_fleet_tallies_bugs_per_run(tmp_path):
    exe = build("kfence_cases", "x86_64")
    js = tmp_path / "fleet.json"
    p = emsan("fleet", "--runs", "4", "--jobs", "2", "--seed", "10", "--sample-interval", "1", "--json", str(js),
              "--", exe, "use_after_free_read", "double_free", status=99)
    err = p.stderr.decode()
    # the table: one row per distinct bug, with the number of runs that caught it
    row = next(ln for ln in err.splitlines() if "use-after-free read" in ln)
    assert "test_use_after_free_read" in row and "│    4 │" in row and "100.0%" in row
    assert "runs: 4 report" in err
    s = json.loads(js.read_text())
    assert s["runs"] == 4 and s["first_seed"] == 10
    assert s["statuses"] == {"report": 4}          # each run stopped at its report (none failed inside emsan)
    assert s["options"] == ["--mode", "kfence", "--sample-interval", "1"]     # fleet's own options not forwarded
    assert s["args"] == ["use_after_free_read", "double_free"]
    (bug,) = s["bugs"]                   # the first report stops each run: double_free is never reached
    assert (bug["bug_type"], bug["function"], bug["runs"]) == ("use-after-free read", "test_use_after_free_read", 4)
    assert sorted(bug["seeds"]) == [10, 11, 12, 13]
    assert sorted(r["seed"] for r in s["per_run"]) == [10, 11, 12, 13]


def test_fleet_continue_and_clean_runs(tmp_path):
    exe = build("kfence_cases", "x86_64")
    js = tmp_path / "fleet.json"
    p = emsan("fleet", "--runs", "2", "--jobs", "2", "--quiet", "--sample-interval", "1", "--continue",
              "--json", str(js), "--", exe, "double_free", "invalid_addr_free", status=99)
    s = json.loads(js.read_text())
    assert {(b["bug_type"], b["function"], b["runs"]) for b in s["bugs"]} == {
        ("invalid free", "test_double_free", 2), ("invalid free", "test_invalid_addr_free", 2)}
    assert s["statuses"] == {"report": 2}         # --continue: the guest ran to its end, then the error status

    p = emsan("fleet", "--runs", "2", "--jobs", "2", "--sample-interval", "5", "--", exe, "mixed", status=0)
    err = p.stderr.decode()
    assert "(no bug found)" in err and "runs: 2 clean" in err
