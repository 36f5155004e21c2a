"""Shared fixtures: guest programs built from tests/guest/*.c, and running emsan on them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import emsan.machine  # noqa: F401  before any test imports unicorn: the binding must load emsan's engine

GUEST = Path(__file__).parent / "guest"
BUILD = GUEST / "build"
BENCH_WORKLOADS = Path(__file__).parent.parent / "bench" / "workloads"
ARM64_SYSROOT = "/usr/aarch64-linux-gnu"

COMPILERS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
CXX = {"x86_64": "g++", "arm64": "aarch64-linux-gnu-g++"}
LINK = {"static": ["-static"], "dynamic": [], "static-pie": ["-static-pie"], "pie": ["-pie", "-fPIE"]}


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


def emsan(*args: str, input: bytes | None = None, cwd: str | None = None, timeout: float = 300,
          env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m emsan ARGS...`, capturing bytes."""
    return subprocess.run([sys.executable, "-m", "emsan", *args], input=input, cwd=cwd, capture_output=True,
                          timeout=timeout, env=env)


def native(binary: str, *args: str, arch: str = "x86_64", input: bytes | None = None, cwd: str | None = None,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """The reference run: the host CPU for x86-64, Debian's qemu-aarch64 for arm64."""
    prefix: list[str] = []
    if arch == "arm64":
        if not have("qemu-aarch64"):
            pytest.skip("qemu-aarch64 is not installed")
        prefix = ["qemu-aarch64", "-L", ARM64_SYSROOT]
    return subprocess.run([*prefix, binary, *args], input=input, cwd=cwd, capture_output=True, timeout=120, env=env)


@pytest.fixture(params=["x86_64", "arm64"])
def arch(request) -> str:
    if not have(COMPILERS[request.param]):
        pytest.skip(f"{COMPILERS[request.param]} is not installed")
    return request.param
