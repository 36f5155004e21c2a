"""The files a run leaves besides its text reports: JSON (every report, and the fatal signal that
ended the guest, if any) and SARIF."""
from __future__ import annotations

import json

from emsan.session.options import RunOptions


def write_outputs(opts: RunOptions, reports: list[dict], crash: dict | None = None) -> None:
    if opts.json_path:
        doc: dict = {"tool": "emsan", "reports": reports}
        if crash is not None:
            doc["crash"] = crash
        with open(opts.json_path, "w") as f:
            json.dump(doc, f, indent=2)
    if opts.sarif_path:
        from emsan.report.sarif import from_reports
        with open(opts.sarif_path, "w") as f:
            json.dump(from_reports(reports + ([crash] if crash else []), " ".join([opts.program, *opts.args]),
                                   opts.program), f, indent=2)
