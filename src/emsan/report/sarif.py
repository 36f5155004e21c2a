"""SARIF 2.1.0 (OASIS) rendering of reports, for code-scanning dashboards.

Works on the JSON renderings (emsan.report.json) so that `emsan run --sarif`
and `emsan triage` (which collects JSON from many runs) share it. One result per report, or per
group of reports when triage deduplicated them; the rule is the bug type, the location the frame
the report's title names, and the access, allocation and free stacks are SARIF stacks.
"""
from __future__ import annotations

import hashlib
import os
from urllib.parse import quote

from emsan import __version__

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFO_URI = "https://www.kernel.org/doc/html/latest/dev-tools/kasan.html"
SRCROOT = "SRCROOT"                   # source paths from DWARF are relative to the build directory


def rule_id(rep: dict) -> str:
    """`slab-out-of-bounds`, `kfence/use-after-free-read`: stable ids a dashboard groups by."""
    bug = (rep.get("bug_type") or "unknown").replace(" ", "-")
    return f"kfence/{bug}" if rep.get("mode") == "kfence" else bug


def title_index(rep: dict) -> int:
    """The frame the report's title names (interceptor and free reports blame the caller)."""
    fn = rep.get("function")
    for i, f in enumerate(rep.get("stack") or []):
        if fn is not None and f.get("function") == fn:
            return i
    return 0


def dedup_frames(rep: dict, depth: int) -> tuple[str, ...]:
    """The top `depth` functions of the access stack from the title frame on (the kernel's and
    syzkaller's dedup key idea: a bug is its type and where it happens, not its addresses)."""
    stack = (rep.get("stack") or [])[title_index(rep):]
    out = []
    for f in stack[:depth]:
        name = f.get("function")
        if name is None:               # unsymbolized: the module and its offset are still stable
            name = f"{os.path.basename(f.get('module') or '?')}+{f.get('addr')}"
        out.append(name)
    return tuple(out)


def bug_key(rep: dict, depth: int = 3) -> tuple[str, ...]:
    return (rep.get("bug_type") or "?", *dedup_frames(rep, depth))


def fingerprint(key: tuple[str, ...]) -> str:
    return hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]


def _uri(path: str) -> tuple[str, str | None]:
    if os.path.isabs(path):
        return "file://" + quote(path), None
    return quote(path), SRCROOT


def _location(frame: dict) -> dict:
    """A SARIF location for one symbolized frame: source line when DWARF had one, else the
    module and the address within it."""
    loc: dict = {}
    if frame.get("file"):
        uri, base = _uri(frame["file"])
        art = {"uri": uri, **({"uriBaseId": base} if base else {})}
        phys: dict = {"artifactLocation": art}
        if frame.get("line"):
            phys["region"] = {"startLine": int(frame["line"])}
        loc["physicalLocation"] = phys
    elif frame.get("module"):
        uri, base = _uri(frame["module"])
        loc["physicalLocation"] = {"artifactLocation": {"uri": uri, **({"uriBaseId": base} if base else {})},
                                   "address": {"absoluteAddress": int(frame["addr"], 16), "kind": "instruction"}}
    if frame.get("function"):
        loc["logicalLocations"] = [{"name": frame["function"], "kind": "function"}]
    loc["message"] = {"text": frame_text(frame)}
    return loc


def frame_text(f: dict) -> str:
    if f.get("function") is None:
        return f"{f.get('addr')} ({os.path.basename(f.get('module') or '?')})"
    s = f["function"] if f.get("inlined") else f"{f['function']}+{f.get('offset', 0):#x}/{f.get('size', 0):#x}"
    if f.get("file"):
        s += f" {f['file']}:{f.get('line')}"
    return s + (" (inlined)" if f.get("inlined") else "")


def _stack(message: str, frames: list[dict]) -> dict:
    out = []
    for f in frames:
        sf: dict = {"location": _location(f)}
        if f.get("module"):
            sf["module"] = os.path.basename(f["module"])
        out.append(sf)
    return {"message": {"text": message}, "frames": out}


def headline(rep: dict) -> str:
    """`BUG: KASAN: slab-out-of-bounds in parse+0x11/0x2d t.c:28`, as the text report's title."""
    stack = rep.get("stack") or []
    where = frame_text(stack[title_index(rep)]) if stack else rep.get("pc", "?")
    tool = "KFENCE" if rep.get("mode") == "kfence" else "KASAN"
    return f"BUG: {tool}: {rep.get('bug_type')} in {where}"


def access_line(rep: dict) -> str:
    if rep.get("access") == "free":
        return f"Free of addr {rep.get('address')}"
    if rep.get("access") in ("read", "write"):
        return f"{rep['access'].capitalize()} of size {rep.get('size')} at addr {rep.get('address')}"
    return rep.get("description", "")


def result(rep: dict, depth: int = 3, extra: dict | None = None) -> dict:
    """One SARIF result for a report (the representative of a group, with `extra` properties)."""
    stack = rep.get("stack") or []
    title = stack[title_index(rep)] if stack else None
    res: dict = {
        "ruleId": rule_id(rep),
        "level": "error",
        "message": {"text": f"{headline(rep)}: {access_line(rep)}".rstrip(": ")},
        "locations": [_location(title)] if title else [],
        "partialFingerprints": {"emsanBugKey/v1": fingerprint(bug_key(rep, depth))},
    }
    stacks = [_stack("Call Trace", stack)] if stack else []
    obj = rep.get("object") or {}
    related = []
    for what, key in (("Allocated by task", "alloc_stack"), ("Freed by task", "free_stack")):
        frames = obj.get(key) or []
        if frames:
            stacks.append(_stack(what, frames))
            related.append({"id": len(related), **_location(frames[0]), "message": {"text": f"{what}: "
                                                                                       f"{frame_text(frames[0])}"}})
    if stacks:
        res["stacks"] = stacks
    if related:
        res["relatedLocations"] = related
    props = {"mode": rep.get("mode"), "access": rep.get("access"), "address": rep.get("address"),
             "size": rep.get("size")}
    if obj:
        props["object"] = {k: obj[k] for k in ("start", "size", "cache", "state", "offset") if k in obj}
    if extra:
        props.update(extra)
    res["properties"] = props
    return res


def rules(reports: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for rep in reports:
        bug = rep.get("bug_type") or "unknown"
        rid = rule_id(rep)
        if rid not in seen:
            tool = "KFENCE" if rep.get("mode") == "kfence" else "KASAN"
            seen[rid] = {"id": rid, "name": "".join(w.capitalize() for w in rid.replace("/", "-").split("-")),
                         "shortDescription": {"text": f"{tool}: {bug}"},
                         "helpUri": INFO_URI, "defaultConfiguration": {"level": "error"}}
    return sorted(seen.values(), key=lambda r: r["id"])


def log(results: list[dict], reports: list[dict], command_line: str | None = None,
        artifacts: list[str] | None = None) -> dict:
    """The whole SARIF log: one run of emsan with its rules, results and invocation."""
    run: dict = {
        "tool": {"driver": {"name": "emsan", "version": __version__, "semanticVersion": __version__,
                            "informationUri": INFO_URI, "rules": rules(reports)}},
        "originalUriBaseIds": {SRCROOT: {"description": {"text": "the directory the program was built in"}}},
        "results": results,
    }
    inv: dict = {"executionSuccessful": True}
    if command_line:
        inv["commandLine"] = command_line
    run["invocations"] = [inv]
    if artifacts:
        run["artifacts"] = [{"location": {"uri": _uri(os.path.abspath(a))[0]}, "roles": ["analysisTarget"]}
                            for a in artifacts]
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}


def from_reports(reports: list[dict], command_line: str | None = None, program: str | None = None) -> dict:
    """`emsan run --sarif`: every report of one run is a result."""
    return log([result(r) for r in reports], reports, command_line, [program] if program else None)
