"""`emsan triage` on a directory of inputs (no fuzzer needed) and SARIF output, validated with
jsonschema against the official OASIS SARIF 2.1.0 schema (tests/data/sarif-schema-2.1.0.json)."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from conftest import build, emsan, run_report, source_line
from emsan.report import sarif

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())


def validate_sarif(doc: dict) -> None:
    jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER).validate(doc)


def crash_dir(tmp_path) -> Path:
    d = tmp_path / "crashes"
    d.mkdir()
    (d / "id:000000,magic").write_bytes(b"EMSNabcdefgh")           # overflow (12 bytes)
    (d / "id:000001,magic-long").write_bytes(b"EMSN" + b"z" * 60)  # overflow first, then the UAF is never reached
    (d / "id:000002,long").write_bytes(b"x" * 40)                  # use after free
    (d / "id:000003,fine").write_bytes(b"ok")                      # nothing
    (d / "README.txt").write_text("AFL++'s note, not an input")
    (d / "id:000000,magic.emsan.txt").write_text("a saved report, not an input")
    return d


def test_schema_rejects_a_broken_log():
    """The validator can fail: a result without a message is not SARIF."""
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "emsan"}},
                                                      "results": [{"ruleId": "x"}]}]})


def test_triage_groups_inputs_by_bug(arch, tmp_path):
    exe = build("fuzz_target", arch)
    d = crash_dir(tmp_path)
    js, sf = tmp_path / "t.json", tmp_path / "t.sarif"
    p = emsan("triage", "--quiet", "--jobs", "2", "--json", str(js), "--sarif", str(sf), str(d), "--", exe, status=99)
    err = p.stderr.decode()
    s = json.loads(js.read_text())
    assert s["inputs"] == 4 and s["input"] == "stdin"          # no @@: the input goes to stdin
    by_type = {b["bug_type"]: b for b in s["bugs"]}
    assert set(by_type) == {"slab-out-of-bounds", "slab-use-after-free"}
    oob, uaf = by_type["slab-out-of-bounds"], by_type["slab-use-after-free"]
    assert sorted(Path(i["input"]).name for i in oob["inputs"]) == ["id:000000,magic", "id:000001,magic-long"]
    assert Path(oob["smallest"]["input"]).name == "id:000000,magic" and oob["smallest"]["size"] == 12
    assert oob["key"] == ["slab-out-of-bounds", "parse_header", "parse", "main"]
    assert oob["report"]["access"] == "write" and oob["report"]["size"] == 1
    assert oob["report"]["object"]["size"] == 16 and oob["report"]["object"]["offset"] == 16
    assert uaf["key"] == ["slab-use-after-free", "parse_records", "parse", "main"]
    assert uaf["report"]["access"] == "read" and uaf["text"].startswith("=" * 66)
    assert [Path(q["input"]).name for q in s["not_reproduced"]] == ["id:000003,fine"]
    assert "2 distinct bugs" in err and "3 of 4 inputs reproduced" in err

    log = json.loads(sf.read_text())
    validate_sarif(log)
    results = log["runs"][0]["results"]
    assert sorted(r["ruleId"] for r in results) == ["slab-out-of-bounds", "slab-use-after-free"]
    r = next(r for r in results if r["ruleId"] == "slab-out-of-bounds")
    loc = r["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "fuzz_target.c"
    assert loc["physicalLocation"]["region"]["startLine"] == source_line("fuzz_target.c", "overflow")
    assert loc["logicalLocations"][0]["name"] == "parse_header"
    assert [st["message"]["text"] for st in r["stacks"]] == ["Call Trace", "Allocated by task"]
    assert r["properties"]["inputs"] == 2 and r["properties"]["smallestInputSize"] == 12
    assert r["partialFingerprints"]["emsanBugKey/v1"] == sarif.fingerprint(tuple(oob["key"]))


def test_triage_frames_and_input_modes(tmp_path):
    """--frames 1 keys on the access's own function only; @@ makes the input a file argument."""
    exe = build("fuzz_target", "x86_64")
    d = crash_dir(tmp_path)
    js = tmp_path / "t.json"
    emsan("triage", "--quiet", "--frames", "1", "--json", str(js), "--sarif", str(tmp_path / "t.sarif"),
          str(d), "--", exe, "@@", status=99)
    s = json.loads(js.read_text())
    assert s["input"] == "file"
    assert sorted(b["key"][1:] for b in s["bugs"]) == [["parse_header"], ["parse_records"]]


def test_triage_bad_input(tmp_path):
    p = emsan("triage", str(tmp_path / "nowhere"), "--", "/bin/true", status=2)
    assert b"not a directory" in p.stderr
    (tmp_path / "c").mkdir()
    p = emsan("triage", str(tmp_path / "c"), status=2)
    assert b"emsan-fuzz.json" in p.stderr


def test_run_sarif(arch, tmp_path):
    """`emsan run --sarif`: every report a result; a clean run an empty, valid log."""
    exe = build("kasan_cases", arch)
    sf, js = tmp_path / "r.sarif", tmp_path / "r.json"
    _, reports = run_report(js, "--continue", "--sarif", str(sf), exe, "kmalloc_oob_right", status=99)
    log = json.loads(sf.read_text())
    validate_sarif(log)
    results = log["runs"][0]["results"]
    assert [(r["ruleId"], r["locations"][0]["logicalLocations"][0]["name"]) for r in results] == [
        (r["bug_type"], r["function"]) for r in reports]
    assert len(results) == 3 and {r["ruleId"] for r in results} == {"slab-out-of-bounds"}
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in results] == [
        source_line("kasan_cases.c", f"oob_right.{i}") for i in (1, 2, 3)]
    run_report(js, "--sarif", str(sf), exe, "kmalloc_uaf", status=99)
    log = json.loads(sf.read_text())
    validate_sarif(log)
    (uaf,) = log["runs"][0]["results"]
    assert uaf["ruleId"] == "slab-use-after-free"
    assert [st["message"]["text"] for st in uaf["stacks"]] == ["Call Trace", "Allocated by task", "Freed by task"]
    assert [rel["logicalLocations"][0]["name"] for rel in uaf["relatedLocations"]] == ["kmalloc_uaf"] * 2
    assert {r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]} == {"slab-use-after-free"}
    run_report(js, "--mode", "none", "--sarif", str(sf), build("hello", arch))
    log = json.loads(sf.read_text())
    validate_sarif(log)
    assert log["runs"][0]["results"] == []


def test_run_json_records_the_fatal_signal(tmp_path):
    """A guest killed by a signal leaves a `crash` record (what triage groups when no report was
    made), with the faulting function from the call trace."""
    exe = build("os_signals", "x86_64")
    js, sf = tmp_path / "r.json", tmp_path / "r.sarif"
    run_report(js, "--mode", "none", "--sarif", str(sf), exe, "null-func", status=128 + 11)
    crash = json.loads(js.read_text())["crash"]
    assert (crash["bug_type"], crash["signal"], crash["access"], crash["address"]) == ("SIGSEGV", 11, "write", "0x0")
    assert crash["function"] == crash["stack"][0]["function"] == "write_through_null"
    assert crash["stack"][0]["line"] == source_line("os_signals.c", "null-func")
    log = json.loads(sf.read_text())
    validate_sarif(log)
    assert [r["ruleId"] for r in log["runs"][0]["results"]] == ["SIGSEGV"]
