#!/usr/bin/env python3
"""What over-reads correct real programs make in code emsan does not intercept, and what rule
tells them from bugs.

    python3 bench/readahead.py [--arch x86_64|arm64|all] [--tolerance] [--no-debug-files] [--only LABEL,...]
                               [--json FILE]

Runs a corpus of real programs (the host's x86-64 binaries; Debian's arm64 ones from the root
scripts/arm64-root.sh makes, $EMSAN_ARM64_ROOT or tests/guest/build/arm64-root) under `emsan run
--continue --json` in generic mode. Without --tolerance, emsan's read-ahead tolerance is switched
off in a child process (Kasan.tolerate_overreads does nothing), so every out-of-bounds
access is reported once per PC; with --tolerance the shipped rule is on and what remains is
printed. --no-debug-files hides separate debug files (libc6-dbg), so that stripped libraries'
own string routines (ld.so's) are not intercepted by name: the case read-ahead is about. The
programs are correct, so every report is a false one. Each is classified:

  where     module and function of the access (names need debug symbols: libc6-dbg for libc)
  shape     access size, the address's natural alignment, read or write
  relation  bytes the access reaches past the object's end (or before its start), whether it
            overlaps the object ("partial"), and the smallest naturally aligned block (16, 32, 64
            bytes) holding both the access and a byte of the object

and tallied against candidate rules. Nothing is asserted; figures go to stdout (and --json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARM64_ROOT = os.environ.get("EMSAN_ARM64_ROOT") or str(REPO / "tests" / "guest" / "build" / "arm64-root")

CHILD = """
import sys
if sys.argv[1] == "off":
    from emsan.sanitizer.kasan import Kasan
    Kasan.tolerate_overreads = lambda self, lo, hi: None
from emsan.cli.main import main
sys.exit(main(sys.argv[2:]))
"""

PY_TEXT = r"""
import json, re, unicodedata, textwrap, difflib, csv, io, collections, string, html, urllib.parse, base64, zlib
words = [w for w in open(0).read().split()]
c = collections.Counter(words)
print(c.most_common(5), len(words))
s = json.dumps({"w": words[:200], "é": "ünïcödé ✓ 日本", "f": [1 / 3, 1e-7]}, ensure_ascii=False)
print(len(s), json.loads(s)["é"], re.findall(r"(?i)\b(k\w+)\s+(\d+)", " ".join(words[:500]))[:3])
t = "Ünïcödé text ΣΊΣΥΦΟΣ straße " * 30
print(t.upper()[:50], t.casefold()[:50], unicodedata.normalize("NFKD", t)[:30], t.encode("utf-16").hex()[:30])
print(textwrap.fill(" ".join(words[:80]), 40)[:200])
print(list(difflib.unified_diff(words[:50], words[10:60], lineterm=""))[:5])
out = io.StringIO(); csv.writer(out).writerows([words[i:i + 4] for i in range(0, 80, 4)]); print(len(out.getvalue()))
print(html.escape("<a href='x'>&</a>"), urllib.parse.quote("ä b/c?d"), base64.b64encode(zlib.compress(s.encode()))[:40])
print(sorted(set(words), key=str.lower)[:10], string.capwords(" ".join(words[:10])))
"""
PY_HASH = r"""
import hashlib, hmac, struct, random, decimal, fractions, datetime, locale
data = open(0, "rb").read()
for h in sorted(hashlib.algorithms_guaranteed):
    print(h, hashlib.new(h, data).hexdigest()[:16] if not h.startswith("shake") else hashlib.new(h, data).hexdigest(8))
print(hmac.new(b"key", data, "sha256").hexdigest()[:16], struct.pack("<dQ", 1 / 3, 2 ** 63 - 1).hex())
r = random.Random(4); print([r.random() for _ in range(3)], r.sample(range(100), 5))
decimal.getcontext().prec = 50; print(decimal.Decimal(1) / decimal.Decimal(7), fractions.Fraction(3, 7) ** 5)
print(datetime.datetime(2020, 9, 13, 12, 26, 40).isoformat(), format(1234567.891, ",.2f"), "%-10s|%5.2f" % ("x", 2.5))
"""
SQL = b"""create table t(x real, s text);
with recursive c(i) as (select 1 union all select i + 1 from c where i < 2000)
insert into t select i * 1.25, 'row-' || i || '-' || hex(i * 7919) from c;
select count(*), avg(x), sum(length(s)), max(s), min(s) from t;
select s, x from t where s like '%7%9%' order by x desc limit 5;
create index ix on t(s); select count(*) from t where s > 'row-5';
select group_concat(substr(s, 5, 3), ',') from (select s from t order by random() limit 0);
select upper('gr\xc3\xbc\xc3\x9fe'), printf('%.20g', 1.0 / 3), json_object('a', 1, 'b', json_array(1, 2.5, 'x'));
"""
UNICODE = ("Grüße aus Köln: naïve café, Ελληνικά, русский, 日本語, emoji \U0001F600 and ASCII.\n" * 40).encode()
PERL = r"""my %h; while (my $l = <STDIN>) { for my $w (split /\s+/, $l) { $h{lc $w}++ } }
printf "%s %d\n", $_, $h{$_} for (sort keys %h)[0 .. 5];
my $s = join " ", keys %h; $s =~ s/(\w+)/\u$1/g; print length($s), " ", index($s, "Kfence"), " ", rindex($s, "A"), "\n";
print join(",", unpack("(A3)*", "abcdefghij")), " ", sprintf("%vd", "1.22.333"), " ", lc("ÀÉÎ"), "\n";"""
LUA = r"""local t = {} for l in io.lines() do for w in l:gmatch("%a+") do t[w] = (t[w] or 0) + 1 end end
local k = {} for w in pairs(t) do k[#k + 1] = w end table.sort(k) print(#k, k[1], k[#k], ("x"):rep(100):find("xx", 50))
print(string.format("%q %s", "a\0b\n", table.concat(k, ","):sub(1, 40)), utf8.len("日本語"), ("abc"):byte(1, -1))"""
JQ = '[.[] | {n: .name, x: (.x * 2), s: (.s | ascii_downcase | split("") | reverse | join(""))}] | sort_by(.n), (map(.x) | add)'
JQ_IN = (b'[' + b','.join(b'{"name": "n%d\\u00e9", "x": %d.5, "s": "AbC\\u65e5%d"}' % (i, i, i) for i in range(300)) + b']')


def corpus(text: bytes) -> list[tuple[str, list[str], bytes]]:
    """(label, argv with the program's bare name first, stdin)."""
    return [
        ("python3 text", ["python3.11", "-I", "-c", PY_TEXT], text),
        ("python3 hash", ["python3.11", "-I", "-c", PY_HASH], text),
        ("sqlite3", ["sqlite3"], SQL),
        *[(f"iconv {enc}", ["iconv", "-f", "UTF-8", "-t", enc], UNICODE)
          for enc in ("UTF-16LE", "UTF-32", "ISO-8859-15//TRANSLIT", "SHIFT_JIS//TRANSLIT", "GB18030", "EBCDIC-US//TRANSLIT")],
        ("perl", ["perl", "-e", PERL], text),
        ("lua", ["lua5.4", "-e", LUA], text),
        ("jq", ["jq", "-c", JQ], JQ_IN),
        ("bc", ["bc", "-l"], b"scale=200\n4*a(1)\ne(1)\nsqrt(2)\n2^1000\n"),
        ("gzip", ["gzip", "-6", "-c"], text), ("xz", ["xz", "-1", "-c", "-T1"], text),
        ("bzip2", ["bzip2", "-1", "-c"], text),
        ("sort", ["sort", "-k2,2", "-k3,3nr"], text), ("sort -u -f", ["sort", "-u", "-f"], text),
        ("grep -E", ["grep", "-E", "-c", "-i", "(alpha|kfence) [a-z]+ [0-9]{3,}$"], text),
        ("grep -P", ["grep", "-P", "-o", "-i", r"(?<=zulu )\d+\b"], text),
        ("grep -F -w", ["grep", "-F", "-w", "-c", "shadow"], text),
        ("sed", ["sed", "-E", r"s/([a-z]+) ([0-9]+)$/\2:\1/; y/abc/ABC/; /Zulu/s/ /_/g"], text),
        ("mawk", ["mawk", '{ n += NF; c[$1]++ } END { for (k in c) print k, c[k]; print n }'], text),
        ("tr", ["tr", "a-z", "A-Z"], text), ("wc", ["wc", "-lwc"], text), ("uniq", ["uniq", "-c"], text),
        ("cut", ["cut", "-d", " ", "-f", "2,3"], text), ("base64", ["base64"], text),
        ("sha256sum", ["sha256sum"], text), ("md5sum", ["md5sum"], text), ("od", ["od", "-A", "x", "-t", "x1z"], text[:4000]),
        ("ls", ["ls", "-la", "/usr/bin"], b""), ("date", ["date", "-u", "-d", "@1600000000", "+%c %A %B"], b""),
        ("tar", ["tar", "--sort=name", "--mtime=@0", "-cf", "-", "-C", str(REPO / "tests" / "guest"), "."], b""),
    ]


def find(arch: str, name: str) -> str | None:
    if arch == "x86_64":
        return shutil.which(name, path="/usr/bin:/bin")
    for d in ("usr/bin", "bin"):
        p = os.path.join(ARM64_ROOT, d, name)
        if os.path.exists(p):
            return p
    return None


def run_one(arch: str, argv: list[str], stdin: bytes, tolerance: bool, debug: bool, tmp: str) -> tuple[list[dict], int]:
    out = tempfile.NamedTemporaryFile(dir=tmp, suffix=".json", delete=False).name
    root = ["--sysroot", ARM64_ROOT] if arch == "arm64" else []
    # --no-leaks: over-reads are the subject; programs that leave memory to the exit (sort) would add leak reports
    cmd = [sys.executable, "-c", CHILD, "on" if tolerance else "off", "run", "--continue", "--no-leaks", "--json", out,
           *root, *argv]
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": tmp}
    if not debug:
        env["EMSAN_DEBUG_FILE_DIRECTORY"] = tmp
    p = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=900)
    try:
        reports = json.load(open(out))["reports"]
    except (OSError, ValueError):
        reports = []
    return reports, p.returncode


def classify(r: dict) -> dict:
    frame = r["stack"][0] if r["stack"] else {}
    where = (os.path.basename(frame.get("module") or "?"),
             frame.get("function") or f"+{frame.get('module_offset')}")
    a, n = int(r["address"], 16), r["size"]
    obj = r.get("object")
    c = {"where": where, "bug": r["bug_type"], "access": r["access"], "size": n,
         "align": next(al for al in (64, 32, 16, 8, 4, 2, 1) if a % al == 0)}
    if obj is None:
        return c
    start = int(obj["start"], 16)
    end = start + obj["size"]
    c["partial"] = a < end and a + n > start
    c["past_end"] = a - end if a >= end else None           # bytes between the object's end and the access
    c["before"] = start - (a + n) if a + n <= start else None
    last = end - 1 if a >= start else start                  # the object byte nearest the access
    c["block"] = next((b for b in (8, 16, 32, 64, 128, 4096) if (a & ~(b - 1)) <= last < (a & ~(b - 1)) + b
                       and (a + n - 1) & ~(b - 1) == a & ~(b - 1)), None)
    return c


RULES = {
    "aligned read, any object byte in its aligned 16-byte block": lambda c: c["block"] is not None and c["block"] <= 16,
    "aligned read, any object byte in its aligned 32-byte block": lambda c: c["block"] is not None and c["block"] <= 32,
    "aligned read, any object byte in its aligned 64-byte block": lambda c: c["block"] is not None and c["block"] <= 64,
    "partial read only (Valgrind's --partial-loads-ok)": lambda c: bool(c.get("partial")),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="all", choices=("x86_64", "arm64", "all"))
    ap.add_argument("--tolerance", action="store_true", help="keep emsan's read-ahead rule on")
    ap.add_argument("--no-debug-files", dest="debug", action="store_false", help="hide separate debug files")
    ap.add_argument("--only", help="comma-separated program labels (default: the whole corpus)")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    text = (REPO / "README.md").read_bytes() * 3
    arches = ["x86_64", "arm64"] if args.arch == "all" else [args.arch]
    print(f"load average {os.getloadavg()[0]:.2f}; read-ahead tolerance {'on' if args.tolerance else 'off'}; "
          f"debug files {'used' if args.debug else 'hidden'}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in arches:
            if arch == "arm64" and not os.path.isfile(os.path.join(ARM64_ROOT, ".emsan-root")):
                print(f"arm64: no root at {ARM64_ROOT} (bash scripts/arm64-root.sh DIR)")
                continue
            jobs = [(label, [find(arch, argv[0]), *argv[1:]], data) for label, argv, data in corpus(text)]
            jobs = [j for j in jobs if j[1][0] and (not args.only or j[0] in args.only.split(","))]
            with ThreadPoolExecutor(2) as pool:
                done = list(pool.map(lambda j: (j[0], *run_one(arch, j[1], j[2], args.tolerance, args.debug, tmp)),
                                     jobs))
            rows = []
            print(f"\n{arch}: {len(done)} program runs")
            for label, reports, status in done:
                cls = [classify(r) for r in reports]
                rows += [{"program": label, **c} for c in cls]
                print(f"  {label:28} exit {status:3}  {len(reports)} report(s)")
            print(f"  {len(rows)} distinct over-reads (one per program and PC):")
            for c in rows:
                rel = ("partial" if c.get("partial") else f"{c['past_end']}B past end" if c.get("past_end") is not None
                       else f"{c['before']}B before start" if c.get("before") is not None else "no object")
                print(f"    {c['program']:16} {c['where'][0]:>22}:{c['where'][1]:28} {c['bug']:20} {c['access']:5} "
                      f"size {c['size']:2} align {c['align']:2} {rel:15} block {c.get('block')}")
            print("  rules (over-reads each would still report):")
            for name, rule in RULES.items():
                left = sum(1 for c in rows if not (c["access"] == "read" and rule(c)))
                print(f"    {left:4}  {name}")
            print("  by module:", dict(Counter(c["where"][0] for c in rows)))
            results[arch] = rows
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=1, default=list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
