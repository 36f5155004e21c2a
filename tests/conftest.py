"""Shared fixtures and runners: guest programs built from tests/guest/*.c, emsan run on them, and
the independent facts reports are checked against. tests/README.md says how a test here proves
a feature (an oracle that is not emsan: the native or qemu run, the kernel's expectations, the
guest's source, addr2line) and what each helper guarantees."""
from __future__ import annotations

import ctypes
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest

import emsan.machine  # noqa: F401  before any test imports unicorn: the binding must load emsan's engine

ROOT = Path(__file__).parent.parent
GUEST = Path(__file__).parent / "guest"
BUILD = GUEST / "build"
BENCH_WORKLOADS = Path(__file__).parent.parent / "bench" / "workloads"
ARM64_SYSROOT = "/usr/aarch64-linux-gnu"

COMPILERS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
CXX = {"x86_64": "g++", "arm64": "aarch64-linux-gnu-g++"}
LINK = {"static": ["-static"], "dynamic": [], "static-pie": ["-static-pie"], "pie": ["-pie", "-fPIE"]}

EXIT_INTERNAL = 70                      # emsan's status for a bug in itself (README, exit status)
EXIT_REPORT = 99                        # a report stopped the run, or (--continue) the run reported
# What a bug in emsan prints: the CLI's one line, or a traceback (EMSAN_DEBUG=1, or one that
# escaped the CLI). Either fails every test that runs emsan through the helpers below.
INTERNAL_ERROR = re.compile(rb"^emsan: internal error|^Traceback \(most recent call last\)", re.M)
# A report's first line: KASAN's and KFENCE's title, kmemleak's for a leak (indirect leaks are in
# the JSON only, as Valgrind shows indirectly lost blocks only in its summary).
REPORT_TITLE = re.compile(rb"^(BUG: (KASAN|KFENCE): |unreferenced object 0x)", re.M)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def build(name: str, arch: str = "x86_64", link: str = "static", flags: tuple[str, ...] = (),
          cxx: bool = False, src_dir: str = "guest") -> str:
    """Compile tests/guest/<name>.c (or .cc; src_dir="bench": bench/workloads/<name>.c) once per
    flag set; return the binary's path."""
    src = (GUEST if src_dir == "guest" else BENCH_WORKLOADS) / (name + (".cc" if cxx else ".c"))
    tag = "-".join([arch, link, *[f.strip("-").replace("=", "_").replace("/", "_") for f in flags]])
    if src_dir != "guest":
        tag += "-" + src_dir
    out = BUILD / tag / name
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return str(out)
    cc = (CXX if cxx else COMPILERS)[arch]
    if not have(cc):
        pytest.skip(f"{cc} is not installed")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cc, "-O1", "-g", "-fno-omit-frame-pointer", *LINK[link], *flags, "-o", str(out) + ".tmp", str(src)]
    subprocess.run(cmd, check=True, capture_output=True)
    os.replace(str(out) + ".tmp", out)
    return str(out)


def tail(res: subprocess.CompletedProcess, n: int = 3000) -> str:
    """The end of a run's stderr, for assertion messages."""
    return (res.stderr or b"").decode(errors="replace")[-n:]


def assert_no_internal_error(res: subprocess.CompletedProcess) -> None:
    """emsan did not fail inside itself: no `emsan: internal error` line, no traceback, and not
    its internal-error status with either (a guest may exit with 70 itself)."""
    out = (res.stderr or b"") + (res.stdout or b"")
    m = INTERNAL_ERROR.search(out)
    assert m is None, "emsan failed inside itself:\n" + out[m.start():m.start() + 3000].decode(errors="replace")


def emsan(*args: str, input: bytes | None = None, cwd: str | None = None, timeout: float = 300,
          env: dict | None = None, status: int | None = None, merge_stderr: bool = False
          ) -> subprocess.CompletedProcess:
    """Run `python -m emsan ARGS...`, capturing bytes. Always asserts that emsan did not fail
    inside itself; with `status`, that it exited with that status. merge_stderr: stderr goes
    into stdout, in order (res.stderr is then None)."""
    res = subprocess.run([sys.executable, "-m", "emsan", *args], input=input, cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, timeout=timeout, env=env)
    assert_no_internal_error(res)
    if status is not None:
        assert res.returncode == status, f"exit status {res.returncode}, expected {status}:\n{tail(res)}"
    return res


def run_report(json_path, *args: str, status: int = 0, **kw) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`emsan run --json json_path ARGS...` (ARGS: options, program, its arguments): asserts the
    exit status, that the JSON file was written (emsan writes it even when nothing is reported:
    a missing file is a failure, never "no reports"), and that the text has one report title per
    JSON report. Returns the process and the reports."""
    json_path = Path(json_path)
    if json_path.exists():
        json_path.unlink()
    res = emsan("run", "--json", str(json_path), *args, status=status, **kw)
    assert json_path.exists(), f"no JSON written to {json_path}:\n{tail(res)}"
    reports = json.loads(json_path.read_text())["reports"]
    text = res.stdout if kw.get("merge_stderr") else res.stderr
    assert len(REPORT_TITLE.findall(text)) == len([r for r in reports if not r.get("indirect")]), tail(res)
    return res, reports


@cache
def _markers(path: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for i, text in enumerate(path.read_text().splitlines(), 1):
        for name in re.findall(r"/\*[^*]*?@([\w.-]+)[^*]*\*/|//.*?@([\w.-]+)", text):
            found.setdefault(name[0] or name[1], []).append(i)
    return found


def source_line(file: str, marker: str, arch: str | None = None) -> int:
    """The line of tests/guest/<file> carrying the comment marker `@marker` (e.g. `/* @oob_1 */`),
    which must occur exactly once: where a report must point, read from the guest's source. With
    `arch`, a marker `@marker.arch` (code under #if for that architecture) is preferred. A file
    named with a directory (examples/attach_lib.c) is the repository's."""
    found = _markers(ROOT / file if "/" in file else GUEST / file)
    if arch is not None and f"{marker}.{arch}" in found:
        marker = f"{marker}.{arch}"
    lines = found.get(marker, [])
    assert len(lines) == 1, f"marker @{marker} occurs {len(lines)} times in tests/guest/{file}"
    return lines[0]


def native(binary: str, *args: str, arch: str = "x86_64", input: bytes | None = None, cwd: str | None = None,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """The reference run: the host CPU for x86-64, Debian's qemu-aarch64 for arm64."""
    prefix: list[str] = []
    if arch == "arm64":
        if not have("qemu-aarch64"):
            pytest.skip("qemu-aarch64 is not installed")
        prefix = ["qemu-aarch64", "-L", ARM64_SYSROOT]
    return subprocess.run([*prefix, binary, *args], input=input, cwd=cwd, capture_output=True, timeout=120, env=env)


# --- AFL++'s fork server, driven input by input --------------------------------------------------

IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0
FS_OPT_ENABLED = 0x80000001


class ForkServerClient:
    """AFL++'s side of the fork-server protocol (a coverage map in System V shared memory, the
    control pipe on descriptor 198 and the status pipe on 199), enough to run chosen inputs
    through emsan's fork server one at a time and see each child's pid and wait status. The
    target (`command`) reads each input from input_path; its stderr is kept for failures."""

    def __init__(self, command: list[str], input_path: Path, timeout: float = 120):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.shmat.restype = ctypes.c_void_p
        self.shm = self.libc.shmget(IPC_PRIVATE, 1 << 16, IPC_CREAT | 0o600)
        assert self.shm >= 0, os.strerror(ctypes.get_errno())
        self.input_path = input_path
        ctl_r, self.ctl = os.pipe()
        self.st, st_w = os.pipe()

        def fds() -> None:
            os.dup2(ctl_r, 198)
            os.dup2(st_w, 199)
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command, env={**os.environ, "__AFL_SHM_ID": str(self.shm)}, preexec_fn=fds,
                                     close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.err)
        os.close(ctl_r)
        os.close(st_w)
        hello = self._read(timeout)
        assert hello & FS_OPT_ENABLED == FS_OPT_ENABLED, hex(hello)

    def _read(self, timeout: float = 60) -> int:
        ready, _, _ = select.select([self.st], [], [], timeout)
        data = os.read(self.st, 4) if ready else b""
        if len(data) != 4:
            self.close()
            raise AssertionError(f"the fork server went away:\n{self.stderr()[-3000:]}")
        return int.from_bytes(data, "little")

    def stderr(self) -> str:
        """What the fork server and its children wrote to stderr so far."""
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def map(self) -> bytes:
        """The coverage map the children wrote."""
        addr = self.libc.shmat(self.shm, None, 0)
        try:
            return ctypes.string_at(addr, 1 << 16)
        finally:
            self.libc.shmdt(ctypes.c_void_p(addr))

    def run(self, data: bytes) -> tuple[int, int]:
        """One input: (the pid of the child that ran it, its wait status)."""
        self.input_path.write_bytes(data)
        os.write(self.ctl, (0).to_bytes(4, "little"))
        pid = self._read()
        return pid, self._read()

    def close(self) -> None:
        for fd in (self.ctl, self.st):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.libc.shmctl(self.shm, IPC_RMID, None)


@pytest.fixture(params=["x86_64", "arm64"])
def arch(request) -> str:
    if not have(COMPILERS[request.param]):
        pytest.skip(f"{COMPILERS[request.param]} is not installed")
    return request.param
