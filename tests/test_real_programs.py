"""Real system programs under emsan: byte-identical stdout, the same exit status, and nothing on
stderr (no report, no "unsupported syscall" line), in every mode.

The first tests run the host's own x86-64 binaries (ls, sort, gzip, sha256sum, grep, od) with
--mode none (the Linux personality alone), generic KASAN and KFENCE. The suite after them
(PROGRAMS) runs mainstream programs on both architectures: the host's for x86-64, compared with
the native run, and Debian's arm64 packages unpacked by scripts/arm64-root.sh, compared with
qemu-aarch64 -L on the same root. Each program's runs go two at a time (the machine's two cores).
Floating-point inputs stay with operations IEEE 754 specifies exactly (arithmetic, sqrt, decimal
conversion): libm's sin or pow pick FMA variants on a host with FMA, which the engine does not offer,
and those differ from the SSE2 variants in the last bit, natively as much as under emsan."""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import emsan, have

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}
MTIME = 1_600_000_000            # 2020-09-13: old enough that ls prints the year


def tool(name: str) -> str:
    path = shutil.which(name, path=ENV["PATH"])
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def host(*cmd: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), input=input, capture_output=True, env=ENV, timeout=120)


MODE = "none"
# KFENCE samples every allocation (until its pool of 255 objects fills): the most guard pages a
# run can meet, with a fixed seed so a failure reproduces.
MODE_OPTIONS = {"none": ["--mode", "none"], "generic": ["--mode", "generic"],
                "kfence": ["--mode", "kfence", "--sample-interval", "1", "--seed", "1"]}


@pytest.fixture(params=list(MODE_OPTIONS))
def mode(request):
    global MODE
    MODE = request.param
    yield request.param


LEAK_SUMMARY = re.compile(rb"^emsan: kmemleak: (\d+) new suspected memory leaks? \((\d+) bytes from ", re.M)


def valgrind_lost(cmd: tuple[str, ...], input: bytes | None) -> tuple[int, int]:
    """Valgrind memcheck's verdict on the same command: definitely lost (blocks, bytes)."""
    res = subprocess.run(["valgrind", "--leak-check=full", *cmd], input=input, capture_output=True, env=ENV,
                         timeout=300)
    m = re.search(rb"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", res.stderr)
    assert m or b"All heap blocks were freed" in res.stderr, res.stderr[-2000:].decode(errors="replace")
    return (int(m.group(2).replace(b",", b"")), int(m.group(1).replace(b",", b""))) if m else (0, 0)


def under_emsan(*cmd: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    """The command under emsan; in generic mode, Valgrind's leak verdict on it rides along
    (`got.lost`; without Valgrind there is no oracle, and the scan is turned off). The only
    program here that leaks: GNU sort never frees one block main allocates (Valgrind's stack
    for it is the same call site), a true leak."""
    leaks = () if MODE != "generic" or shutil.which("valgrind") else ("--no-leaks",)
    got = emsan("run", *MODE_OPTIONS[MODE], *leaks, *cmd, input=input, env=ENV, timeout=300)
    got.lost = valgrind_lost(cmd, input) if MODE == "generic" and not leaks else (0, 0)  # type: ignore[attr-defined]
    return got


def assert_same(ref: subprocess.CompletedProcess, got: subprocess.CompletedProcess) -> None:
    """Same output and status as the host run; leaks exactly where Valgrind finds them (then
    the leak status and the summary of the leaks' count and bytes)."""
    assert got.stdout == ref.stdout
    lost = got.lost  # type: ignore[attr-defined]
    if lost != (0, 0):
        m = LEAK_SUMMARY.search(got.stderr)
        assert m is not None and (int(m.group(1)), int(m.group(2))) == lost, got.stderr.decode(errors="replace")
        assert got.returncode == 99 and ref.returncode == 0
        return
    assert got.stderr == b"", got.stderr.decode(errors="replace")
    assert got.returncode == ref.returncode


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    """~2,000 lines of pseudo-random words: deterministic, big enough to exercise buffering."""
    rng = random.Random(1234)
    words = ["alpha", "beta", "gamma", "delta", "emsan", "kasan", "kfence", "shadow", "quarantine", "Zulu"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) + f" {rng.randint(0, 99999)}"
             for _ in range(2000)]
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def listing_dir(tmp_path_factory) -> str:
    """A directory whose `ls -la` is stable: fixed names, sizes, modes and mtimes (its parent too)."""
    parent = tmp_path_factory.mktemp("listing")
    d = parent / "fixture"
    d.mkdir()
    for i, name in enumerate(["README", "a.txt", "b.bin", "zz-last", ".hidden"]):
        (d / name).write_bytes(bytes(range(256)) * i + b"x" * (7 * i))
        os.chmod(d / name, 0o644 if i % 2 else 0o600)
    (d / "subdir").mkdir()
    (d / "subdir" / "inner").write_text("inner\n")
    os.symlink("a.txt", d / "link-to-a")
    os.chmod(d / "b.bin", 0o755)
    for i, p in enumerate(sorted([*d.rglob("*"), d, parent], reverse=True)):
        os.utime(p, (MTIME + 3600 * i, MTIME + 3600 * i), follow_symlinks=False)
    return str(d)


def test_ls_la(listing_dir, mode):
    ls = tool("ls")
    ref = host(ls, "-la", listing_dir)
    got = under_emsan(ls, "-la", listing_dir)
    assert_same(ref, got)
    assert b"link-to-a -> a.txt" in got.stdout and b" 2020 " in got.stdout


def test_ls_missing_entry_status(listing_dir, mode):
    """ls reports a missing argument with status 2 and its own message: stderr passes through."""
    ls = tool("ls")
    ref = host(ls, "-l", listing_dir, os.path.join(listing_dir, "missing"))
    got = under_emsan(ls, "-l", listing_dir, os.path.join(listing_dir, "missing"))
    assert got.returncode == ref.returncode == 2
    assert got.stdout == ref.stdout
    assert got.stderr == ref.stderr


@pytest.mark.parametrize("args", [(), ("-n", "-k", "2", "-r"), ("-u", "-f")])
def test_sort(text_file, args, mode):
    sort = tool("sort")
    ref = host(sort, *args, text_file)
    assert_same(ref, under_emsan(sort, *args, text_file))


def test_gzip_roundtrip(text_file, mode):
    gzip = tool("gzip")
    data = open(text_file, "rb").read()
    ref = host(gzip, "-n", "-c", input=data)
    packed = under_emsan(gzip, "-n", "-c", input=data)
    assert_same(ref, packed)
    unpacked = under_emsan(gzip, "-dc", input=packed.stdout)
    assert unpacked.stderr == b""
    assert unpacked.returncode == 0
    assert unpacked.stdout == data


def test_gzip_corrupt_input_status(mode):
    gzip = tool("gzip")
    bad = b"\x1f\x8b\x08\x00" + bytes(20)
    ref = host(gzip, "-dc", input=bad)
    got = under_emsan(gzip, "-dc", input=bad)
    assert got.returncode == ref.returncode != 0
    assert got.stderr == ref.stderr


def test_sha256sum(text_file, listing_dir, mode):
    sha = tool("sha256sum")
    files = [text_file, os.path.join(listing_dir, "b.bin"), os.path.join(listing_dir, "README")]
    ref = host(sha, *files)
    assert_same(ref, under_emsan(sha, *files))
    data = open(text_file, "rb").read()
    assert_same(host(sha, input=data), under_emsan(sha, input=data))


@pytest.mark.parametrize("args, status", [(("-c", "emsan"), 0), (("-c", "-i", "zulu"), 0),
                                          (("-c", "no such word"), 1)])
def test_grep_count(text_file, args, status, mode):
    grep = tool("grep")
    ref = host(grep, *args, text_file)
    got = under_emsan(grep, *args, text_file)
    assert_same(ref, got)
    assert got.returncode == status


@pytest.mark.parametrize("args", [("-c",), ("-A", "x", "-t", "x1z", "-N", "600"), ("-t", "d4", "-j", "16", "-N", "64")])
def test_od(listing_dir, args, mode):
    od = tool("od")
    target = os.path.join(listing_dir, "zz-last")
    ref = host(od, *args, target)
    assert_same(ref, under_emsan(od, *args, target))


# --- mainstream programs on both architectures ---------------------------------------------------------
ARM64_ROOT = os.environ.get("EMSAN_ARM64_ROOT") or str(Path(__file__).parent / "guest" / "build" / "arm64-root")
SETUP_ROOT = Path(__file__).parent.parent / "scripts" / "arm64-root.sh"

PYTHON = r"""
import hashlib, json, math, re, unicodedata
d = {"naïve": [1.0 / 3, math.sqrt(2), math.pi, 1e-300, -0.0, 1e22], "日本語": "テキスト", "emoji": "\U0001F600",
     "n": list(range(5)), "nested": {"a": [None, True, False], "b": "tab\tquote\"back\\slash"}}
s = json.dumps(d, ensure_ascii=False, sort_keys=True, indent=1)
print(s)
print(json.loads(s) == d, json.dumps(d)[:60])
for h in ("md5", "sha1", "sha256", "sha512", "sha3_256", "blake2b", "sha512_224"):
    print(h, hashlib.new(h, s.encode() * 50).hexdigest())
print(re.findall(r"\w+", s)[:20], re.sub(r"(?i)NAÏVE", "x", s)[:40], re.split(r"[\s,]+", "a, b  c,d"))
w = "Straße ǅemo ΣΊΣΥΦΟΣ ﬁ İstanbul"
print(w.upper(), w.lower(), w.casefold(), w.title(), w.swapcase())
print(unicodedata.normalize("NFD", w).encode("utf-8").hex(), [unicodedata.name(c, "?") for c in "é€😀"])
print(f"{1 / 7:.17g} {math.fsum([0.1] * 10)!r} {math.sqrt(2)!r} {float('1e308') * 10} {math.sqrt(3):.30f}")
print(sorted(["b", "ä", "a", "Z", "日"]), w[::-1], len(w.encode("utf-16-le")), w.encode("utf-32").hex()[:40])
print(repr(1e16), repr(0.1 + 0.2), format(123456789.123456789, ",.4f"), round(2.675, 2), int("9" * 40) // 7)
"""
SQL = b"""select 1.0/3;
create table t(x real, s text);
insert into t values (0.1, 'alpha'), (1e-5, 'gr\xc3\xbc\xc3\x9fe'), (123456.789, 'Zeta'), (-2.5e10, 'beta'), (3.0, NULL);
select avg(x), sum(x), total(x), min(x), max(x), count(s) from t;
select round(x, 3), printf('%.15g|%e|%10.4f', x * x, x, x), upper(s), length(s), typeof(x) from t order by x;
select group_concat(s, '-') from (select s from t order by s);
select 1e308 * 10, -0.0, 0.1 + 0.2, 2.0/3*3, 9007199254740993, cast(1e17 as integer), abs(-7.25), 7 % 3;
with recursive c(i, f) as (select 1, 1.0 union all select i + 1, f * (i + 1) from c where i < 25) select i, f from c;
select quote(x'00ff'), instr('hello', 'll'), substr('h\xc3\xa9llo', 2, 2), replace('aaa', 'a', 'bc');
"""
UNICODE = ("Grüße aus Köln: naïve café, Ελληνικά, русский, 日本語, emoji \U0001F600 and ASCII.\n" * 20).encode()
PERL = r"""my %h; my $n = 0;
while (my $l = <STDIN>) { for my $w (split /\s+/, $l) { $h{lc $w}++; $n++ } }
printf "%s %d\n", $_, $h{$_} for sort { $h{$b} <=> $h{$a} || $a cmp $b } keys %h;
printf "%d words, %.17g %.17g %s\n", $n, 1/3, sqrt(2), 2**70;
print join(",", map { sprintf "%08b", $_ } unpack("C*", pack("N", 0xdeadbeef))), "\n";
my $s = "The quick brown fox"; (my $t = $s) =~ s/(\w+)/\u\L$1/g; print scalar reverse($t), " ", length($s), "\n";
print join("|", sort map { sprintf "%.3e", $_ ** 3 / 7 } 1 .. 12), "\n";
"""
LUA = r"""print(string.format("%.17g %.17g %.3f %d %x", 1/3, math.sqrt(2), math.pi, 2^53 // 1, 48879))
local t = {} for w in ("the quick brown fox jumps over the lazy dog"):gmatch("%a+") do t[#t + 1] = w:upper() end
table.sort(t) print(table.concat(t, ","))
print(("ab"):rep(5, "-"), utf8.char(233, 26085, 128512), #utf8.char(233, 26085), ("%q"):format("a\nb\0c"))
local s = 0 for i = 1, 20000 do s = s + math.sqrt(i) * i / 3 end print(string.format("%.10f", s))
print(math.maxinteger, math.mininteger, 7 // 2, -7 // 2, 7 % -3, 1e15, 2^63, math.tointeger(3.0))
"""
JQ_INPUT = (b'[{"name": "delta", "x": 4.25, "s": "d\\u00e9j\\u00e0"}, {"name": "alpha", "x": 1e-3, "s": "x"},'
            b' {"name": "\\u65e5\\u672c", "x": -7, "s": "\\ud83d\\ude00"}, {"name": "beta", "x": 3.3333333333333335}]')
JQ = ("(map(.x * 1.5) | add / length), (sort_by(.name) | map(.name)), (.[0].s | @base64, ascii_downcase?), "
      "(.[] | select(.x > 2) | .name | ascii_upcase), ([.[].x] | min, max), (1/3), ([.[].s | length]), "
      "(.[1] | to_entries), ([range(0; 10)] | map(. * .) | add), (\"\\(.[0].x) and \\(.[3].x)\"), (.[2].s | explode)")
BC = b"scale=40\n4*a(1)\nsqrt(2)\ne(1)\nl(10)\n2^100\n355/113\ns(1)+c(1)\nobase=16\n2^64-1\n"
SED = r"s/([a-z]+) ([0-9]+)$/\2:\1/; y/abc/ABC/; 10,20d; /Zulu/s/ /_/g; $a\
the end"
AWK = r"""{ n += NF; s += $NF; c[$1]++; if (length($0) > m) m = length($0) }
END { printf "%d %.6f %.17g %d\n", n, s / NR, s * 1.1, m; for (k in c) print k, c[k];
      printf "%s %c %5.2e %x\n", toupper("mawk"), 65, 1 / 3, 255 }"""


@dataclass
class Prog:
    argv: list[str]                 # argv[0]: the program's name in /usr/bin or /bin
    stdin: bytes | str = b""        # bytes, or "text" (the words file) / "packed:TOOL" (its compressed words)
    needs: list[str] = field(default_factory=list)     # files the arguments refer to: "text", "dir"


PROGRAMS = {
    "python3": Prog(["python3.11", "-I", "-c", PYTHON]),
    "sqlite3-float": Prog(["sqlite3"], SQL),
    "iconv-utf16": Prog(["iconv", "-f", "UTF-8", "-t", "UTF-16LE"], UNICODE),
    "iconv-translit": Prog(["iconv", "-f", "UTF-8", "-t", "ISO-8859-15//TRANSLIT"], UNICODE),
    "perl": Prog(["perl", "-e", PERL], "text"),
    "lua": Prog(["lua5.4", "-e", LUA]),
    "jq": Prog(["jq", "-c", JQ], JQ_INPUT),
    "bc": Prog(["bc", "-l"], BC),
    "gzip": Prog(["gzip", "-9", "-n", "-c"], "text"),
    "gunzip": Prog(["gzip", "-d", "-c"], "packed:gzip"),
    "xz": Prog(["xz", "-1", "-c", "-T1"], "text"),
    "unxz": Prog(["xz", "-d", "-c"], "packed:xz"),
    "bzip2": Prog(["bzip2", "-1", "-c"], "text"),
    "bunzip2": Prog(["bzip2", "-d", "-c"], "packed:bzip2"),
    "sort": Prog(["sort", "-k2,2", "-k3,3nr", "-s"], "text"),
    "grep-E": Prog(["grep", "-E", "-n", "-i", "(alpha|kfence) [a-z]+ [0-9]{3,}$"], "text"),
    "grep-P": Prog(["grep", "-P", "-o", "-i", r"(?<=zulu )\d+\b"], "text"),
    "sed": Prog(["sed", "-E", SED], "text"),
    "awk": Prog(["mawk", AWK], "text"),
    "tar-create": Prog(["tar", "--sort=name", "--mtime=@1600000000", "--owner=0", "--group=0", "--numeric-owner",
                        "--format=gnu", "-cf", "-", "-C", "{dir}", "."], needs=["dir"]),
    "tar-list": Prog(["tar", "-tvf", "-"], "packed:tar"),
}
PACK = {"gzip": ["gzip", "-9", "-n", "-c"], "xz": ["xz", "-1", "-c", "-T1"], "bzip2": ["bzip2", "-1", "-c"]}


def arm64_root() -> str:
    """The arm64 root, made by scripts/arm64-root.sh (bash scripts/setup.sh runs it) if missing."""
    if not os.path.isfile(os.path.join(ARM64_ROOT, ".emsan-root")):
        if not have("apt-get") or not have("dpkg"):
            pytest.skip("no arm64 root and no apt to make one (bash scripts/arm64-root.sh DIR)")
        res = subprocess.run(["bash", str(SETUP_ROOT), ARM64_ROOT], capture_output=True, timeout=900)
        if res.returncode != 0:
            pytest.skip(f"could not build the arm64 root: {res.stderr.decode(errors='replace')[-500:]}")
    return ARM64_ROOT


def program_path(arch: str, name: str) -> str:
    if arch == "x86_64":
        return tool(name)
    root = arm64_root()
    for d in ("usr/bin", "bin"):
        p = os.path.join(root, d, name)
        if os.path.exists(p):
            return p
    pytest.skip(f"{name} is not in the arm64 root")


class Suite:
    """Every program of PROGRAMS on one architecture: the reference run and emsan in each mode."""

    def __init__(self, arch: str, text_file: str, listing_dir: str, home: str):
        self.arch = arch
        self.home = home
        self.text = open(text_file, "rb").read()
        self.dir = listing_dir
        self.root = arm64_root() if arch == "arm64" else None
        self.results: dict[str, tuple] = {}

    def command(self, prog: Prog) -> list[str]:
        return [program_path(self.arch, prog.argv[0]), *[a.replace("{dir}", self.dir) for a in prog.argv[1:]]]

    def stdin(self, prog: Prog) -> bytes:
        if prog.stdin == "text":
            return self.text
        if isinstance(prog.stdin, str) and prog.stdin.startswith("packed:"):
            what = prog.stdin.split(":")[1]
            if what == "tar":
                return self.reference(self.command(PROGRAMS["tar-create"]), b"").stdout
            return self.reference(self.command(Prog(PACK[what])), self.text).stdout
        return prog.stdin

    def reference(self, cmd: list[str], data: bytes) -> subprocess.CompletedProcess:
        prefix = ["qemu-aarch64", "-L", self.root] if self.arch == "arm64" else []
        return subprocess.run([*prefix, *cmd], input=data, capture_output=True, env=self.env(), timeout=300)

    def emsan(self, mode: str, cmd: list[str], data: bytes) -> subprocess.CompletedProcess:
        root = ["--sysroot", self.root] if self.root else []
        # No leak scan here: these runs must match the reference byte for byte, and some of these
        # programs leave memory to the exit on purpose (perl); the host-program tests above check
        # leak verdicts against Valgrind.
        leaks = ["--no-leaks"] if mode == "generic" else []
        return emsan("run", *MODE_OPTIONS[mode], *leaks, *root, *cmd, input=data, env=self.env(), timeout=600)

    def env(self) -> dict[str, str]:
        # EMSAN_DEBUG_FILE_DIRECTORY passes through: set it to an empty directory to run the
        # suite as on a machine without libc6-dbg (ld.so's own string routines not intercepted).
        extra = {k: os.environ[k] for k in ("EMSAN_DEBUG_FILE_DIRECTORY",) if k in os.environ}
        return {**ENV, "HOME": self.home, **extra}

    def run(self, name: str):
        """(reference, {mode: emsan run}) for one program, the three modes two at a time."""
        if name not in self.results:
            prog = PROGRAMS[name]
            cmd, data = self.command(prog), self.stdin(prog)
            with ThreadPoolExecutor(2) as pool:
                ref = pool.submit(self.reference, cmd, data)
                runs = {m: pool.submit(self.emsan, m, cmd, data) for m in MODE_OPTIONS}
                self.results[name] = (ref.result(), {m: f.result() for m, f in runs.items()})
        return self.results[name]


_suites: dict[str, Suite] = {}


@pytest.fixture(params=["x86_64", "arm64"])
def suite(request, text_file, listing_dir, tmp_path_factory) -> Suite:
    arch = request.param
    if arch == "arm64" and not have("qemu-aarch64"):
        pytest.skip("qemu-aarch64 is not installed")
    if arch not in _suites:
        _suites[arch] = Suite(arch, text_file, listing_dir, str(tmp_path_factory.mktemp("home")))
    return _suites[arch]


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_program_matches_reference_in_every_mode(suite, name):
    ref, runs = suite.run(name)
    assert ref.returncode == 0, ref.stderr.decode(errors="replace")[-1000:]
    assert ref.stdout, "the reference run printed nothing"
    for mode, got in runs.items():
        assert got.stderr == ref.stderr, f"{mode}: {got.stderr.decode(errors='replace')[-3000:]}"
        assert got.stdout == ref.stdout, f"{mode}: stdout differs from the reference"
        assert got.returncode == ref.returncode, mode


def test_roundtrips_restore_the_input(suite):
    """The decompressors' reference output is the words file itself (the inputs are what they claim)."""
    for name in ("gunzip", "unxz", "bunzip2"):
        ref, runs = suite.run(name)
        assert ref.stdout == suite.text and runs["generic"].stdout == suite.text, name
