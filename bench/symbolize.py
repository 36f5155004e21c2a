#!/usr/bin/env python3
"""How long a report takes to print after the fault, in a program whose libraries carry large DWARF.

    python3 bench/symbolize.py [--python PATH] [--warm N] [--json FILE]

Runs `emsan run PYTHON -c PROGRAM`, where PROGRAM overflows a malloc'ed ctypes buffer (a report
whose call trace goes through libpython's interpreter loop), once with an empty symbol cache and
N times with the cache it left. Each run happens in a child process that times emsan's
report_pending() (building the report, symbolizing it, printing text and JSON: from the moment the
sanitizer stops the guest to the report on stderr). PYTHON defaults to this interpreter, whose
libpython should carry DWARF (pyenv builds do; Debian's python3 does not without python3-dbg).
Prints the seconds per run; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PROGRAM = "import ctypes; b = ctypes.create_string_buffer(4000); ctypes.memset(ctypes.addressof(b), 0, 4001)"

CHILD = """
import json, sys, time
from emsan.session.sanitizer import Sanitizer
spans = []
orig = Sanitizer.report_pending
def timed(self):
    t = time.perf_counter()
    try:
        return orig(self)
    finally:
        spans.append(time.perf_counter() - t)
Sanitizer.report_pending = timed
from emsan.cli.main import main
status = main(sys.argv[2:])
json.dump({"status": status, "spans": spans}, open(sys.argv[1], "w"))
"""


def libpython(python: str) -> tuple[str | None, int]:
    """The libpython the interpreter links, and its .debug_info size (0 if none)."""
    from elftools.elf.elffile import ELFFile
    out = subprocess.run(["ldd", python], capture_output=True, text=True).stdout
    path = next((ln.split("=>")[1].split()[0] for ln in out.splitlines() if "libpython" in ln and "=>" in ln),
                os.path.realpath(python))
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".debug_info")
        return path, sec["sh_size"] if sec is not None else 0


def one_run(python: str, cache: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "t.json")
        env = {**os.environ, "EMSAN_CACHE_DIR": cache}
        p = subprocess.run([sys.executable, "-c", CHILD, out, "run", python, "-c", PROGRAM], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        res = json.load(open(out))
        title = next((ln for ln in p.stderr.decode(errors="replace").splitlines() if ln.startswith("BUG:")), None)
        return {"status": res["status"], "report_s": sum(res["spans"]), "title": title}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=os.path.realpath(sys.executable))
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    lib, dwarf = libpython(args.python)
    print(f"python: {args.python}\nlibpython: {lib}, .debug_info {dwarf / 1e6:.1f} MB; load average "
          f"{os.getloadavg()[0]:.2f}")
    results = {"python": args.python, "libpython": lib, "debug_info_bytes": dwarf, "runs": []}
    with tempfile.TemporaryDirectory() as cache:
        for i in range(1 + args.warm):
            r = one_run(args.python, cache)
            r["cache"] = "cold" if i == 0 else "warm"
            results["runs"].append(r)
            print(f"  {r['cache']:4}  report printed {r['report_s']:.3f} s after the fault   exit {r['status']}   "
                  f"{r['title']}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
