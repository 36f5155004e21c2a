"""The files a run leaves besides its text reports: JSON (every report, and the fatal signal that
ended the guest, if any) and SARIF."""
from __future__ import annotations

import json
from typing import Callable

from emsan.session.options import RunOptions


def write_outputs(opts: RunOptions, reports: list[dict], crash: dict | None = None,
                  warn: Callable[[str, str], None] | None = None, extra: dict | None = None) -> None:
    """Write --json (with `extra`'s fields besides the reports) and --sarif. Their paths were
    checked before the run (Options.check_outputs); a write that fails now (a full disk) loses
    that file, not the run's status: warn(key, line)."""
    docs = []
    if opts.json_path and (reports or crash is not None or not opts.json_lazy):
        doc: dict = {"tool": "emsan", "reports": reports, **(extra or {})}
        if crash is not None:
            doc["crash"] = crash
        docs.append(("--json", opts.json_path, doc))
    if opts.sarif_path and (reports or crash is not None or not opts.json_lazy):
        from emsan.report.sarif import from_reports
        docs.append(("--sarif", opts.sarif_path,
                     from_reports(reports + ([crash] if crash else []), " ".join([opts.program, *opts.args]),
                                  opts.program)))
    for option, path, doc in docs:
        try:
            with open(path, "w") as f:
                json.dump(doc, f, indent=2)
        except OSError as e:
            if warn is None:
                raise
            warn(option, f"{option} {path}: cannot write: {e.strerror}")
