"""Builds emsan's engine: libunicorn from the pinned Unicorn sdist with engine/patches/*.patch applied.

Run by setup.py at `pip install .` (and runnable by hand: `python3 engine/build.py OUT_DIR`). Steps:
the sdist is downloaded with pip (so the user's index, proxy and certificate settings apply) and its
sha256 checked; the patches are applied in name order with `patch`; cmake builds only the shared
library, only for x86, arm and aarch64. OUT_DIR receives `libunicorn.so.2` and `engine.json`, the
manifest `emsan --version` prints (sdist, patches and their hashes, build options).

pip does not cache wheels built from a local directory, so the result is cached here instead, under
$EMSAN_ENGINE_CACHE or ~/.cache/emsan/engine/<build id>: the id hashes the sdist, every patch and
the build options, so changing any of them builds anew. EMSAN_ENGINE_CACHE=off disables the cache.

Standard library only: it runs inside pip's isolated build environment.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATCHES = HERE / "patches"

UNICORN_VERSION = "2.1.3"
SDIST = f"unicorn-{UNICORN_VERSION}.tar.gz"
SDIST_SHA256 = "0c06456cf550c228f2003cc70366afa4aece2e6e7e4c32d8f4b22c717ba6b729"
ARCHES = ("x86", "arm", "aarch64")          # what emsan runs: x86-64, arm64, and arm for firmware
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", f"-DUNICORN_ARCH={';'.join(ARCHES)}",
                 "-DUNICORN_BUILD_TESTS=OFF", "-DUNICORN_LEGACY_STATIC_ARCHIVE=OFF", "-DUNICORN_INSTALL=OFF")
LIBRARY = "libunicorn.so.2"
MANIFEST = "engine.json"


class EngineBuildError(RuntimeError):
    """The engine could not be built; the message says what to install or fix."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def patch_files() -> list[Path]:
    return sorted(PATCHES.glob("*.patch"))


def patch_summary(path: Path) -> str:
    """The first line of a patch's header comment (everything before the diff is the header)."""
    for line in path.read_text().splitlines():
        if line.strip():
            return line.strip()
    return ""


def build_id() -> str:
    """Hash of everything the library is made from: sdist, patches, build options, host machine."""
    h = hashlib.sha256()
    for part in (SDIST_SHA256, *CMAKE_OPTIONS, platform.machine(), sys.platform):
        h.update(part.encode() + b"\0")
    for p in patch_files():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def manifest(compiler: str) -> dict:
    return {
        "engine": f"unicorn {UNICORN_VERSION}+emsan.{build_id()}",
        "build_id": build_id(),
        "unicorn": UNICORN_VERSION,
        "sdist": SDIST,
        "sdist_sha256": SDIST_SHA256,
        "patches": [{"name": p.stem, "sha256": _sha256(p), "summary": patch_summary(p)} for p in patch_files()],
        "arches": list(ARCHES),
        "cmake_options": list(CMAKE_OPTIONS),
        "compiler": compiler,
        "machine": platform.machine(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def cache_root() -> Path | None:
    env = os.environ.get("EMSAN_ENGINE_CACHE")
    if env and env.lower() in ("0", "off", "no", "none"):
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emsan" / "engine"


def _run(cmd: list[str], what: str, cwd: Path | None = None, log: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        raise EngineBuildError(f"{what}: `{cmd[0]}` is not installed") from None
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    if proc.returncode:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise EngineBuildError(f"{what} failed (exit status {proc.returncode}):\n$ {' '.join(cmd)}\n{tail}")
    return proc.stdout


def _check_tools() -> str:
    """Fail early, in one message, if a tool the build needs is missing; return the compiler's name."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    missing = [t for t in ("cmake", "patch") if shutil.which(t) is None]
    if not cc or shutil.which(cc) is None:
        missing.append("a C compiler (cc)")
    if not (shutil.which("make") or shutil.which("ninja")):
        missing.append("make")
    if missing:
        raise EngineBuildError(
            "building emsan's Unicorn engine needs " + ", ".join(missing) + ", which "
            + ("is" if len(missing) == 1 else "are") + " not installed. On Debian/Ubuntu: "
            "`sudo apt-get install cmake gcc make patch` (or run `bash scripts/setup.sh`), then install again.")
    out = _run([cc, "--version"], "asking the C compiler its version")
    return out.splitlines()[0].strip() if out else cc


def fetch_sdist(cache: Path | None, work: Path) -> Path:
    """The pinned sdist, checked against its sha256 (from the cache when it is there)."""
    if cache is not None:
        cached = cache / "sdist" / SDIST
        if cached.exists() and _sha256(cached) == SDIST_SHA256:
            return cached
    dl = work / "download"
    dl.mkdir()
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--no-binary", ":all:", f"unicorn=={UNICORN_VERSION}", "-d", str(dl)],
         f"downloading the Unicorn {UNICORN_VERSION} sdist with pip")
    path = dl / SDIST
    if not path.exists():
        raise EngineBuildError(f"pip did not download {SDIST} (got: {', '.join(p.name for p in dl.iterdir())})")
    got = _sha256(path)
    if got != SDIST_SHA256:
        raise EngineBuildError(f"{SDIST} has sha256 {got}, expected {SDIST_SHA256}: refusing to build it")
    if cache is not None:
        (cache / "sdist").mkdir(parents=True, exist_ok=True)
        tmp = cache / "sdist" / f".{SDIST}.{os.getpid()}"
        shutil.copyfile(path, tmp)
        os.replace(tmp, cache / "sdist" / SDIST)
    return path


def build_library(out: Path, work: Path, compiler: str, jobs: int, log: Path) -> None:
    """Unpack, patch, configure and build; copy the library and the manifest into `out`."""
    cache = cache_root()
    sdist = fetch_sdist(cache, work)
    with tarfile.open(sdist) as tar:
        try:
            tar.extractall(work, filter="data")      # refuses links and paths out of `work`
        except TypeError:                            # Python 3.11.0-3.11.3: no filters; the sha256 was checked
            tar.extractall(work)
    src = work / f"unicorn-{UNICORN_VERSION}" / "src"
    for p in patch_files():
        _run(["patch", "-p1", "--forward", "--batch", "-d", str(src), "-i", str(p)], f"applying {p.name}", log=log)
    build = work / "build"
    _run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_OPTIONS], "configuring Unicorn (cmake)", log=log)
    _run(["cmake", "--build", str(build), "--target", "unicorn", "-j", str(jobs)], "compiling Unicorn", log=log)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build / LIBRARY, out / LIBRARY)
    os.chmod(out / LIBRARY, 0o755)
    (out / MANIFEST).write_text(json.dumps(manifest(compiler), indent=2) + "\n")


def build(out: Path, jobs: int | None = None, say=print) -> dict:
    """Put the engine into `out` (from the cache, or built now and cached); return its manifest."""
    out = Path(out)
    cache = cache_root()
    entry = cache / build_id() if cache is not None else None
    if entry is not None and (entry / LIBRARY).exists() and (entry / MANIFEST).exists():
        say(f"emsan engine: using the cached build {entry}")
        return _install(entry, out)
    compiler = _check_tools()
    jobs = jobs or int(os.environ.get("EMSAN_ENGINE_JOBS", 0)) or os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="emsan-engine-") as tmp:
        work = Path(tmp)
        lock = None
        if entry is not None:
            entry.parent.mkdir(parents=True, exist_ok=True)
            lock = open(entry.parent / f".{build_id()}.lock", "w")
            fcntl.flock(lock, fcntl.LOCK_EX)            # another install may be building the same engine
            if (entry / LIBRARY).exists() and (entry / MANIFEST).exists():
                lock.close()
                say(f"emsan engine: using the cached build {entry}")
                return _install(entry, out)
        try:
            say(f"emsan engine: building Unicorn {UNICORN_VERSION} with {len(patch_files())} patches "
                f"for {', '.join(ARCHES)} ({jobs} jobs; about 1-2 minutes)")
            t0 = time.monotonic()
            staged = work / "out"
            build_library(staged, work, compiler, jobs, work / "build.log")
            say(f"emsan engine: built in {time.monotonic() - t0:.0f} s")
            if entry is not None:
                tmp_entry = entry.parent / f".{entry.name}.{os.getpid()}"
                shutil.copytree(staged, tmp_entry)
                os.replace(tmp_entry, entry)
            return _install(staged, out)
        finally:
            if lock is not None:
                lock.close()


def _install(src: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for name in (LIBRARY, MANIFEST):
        shutil.copyfile(src / name, out / name)
    os.chmod(out / LIBRARY, 0o755)
    return json.loads((out / MANIFEST).read_text())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python3 engine/build.py OUT_DIR", file=sys.stderr)
        raise SystemExit(2)
    try:
        m = build(Path(sys.argv[1]))
    except EngineBuildError as e:
        print(f"emsan engine: {e}", file=sys.stderr)
        raise SystemExit(1)
    print(f"{m['engine']}: {', '.join(p['name'] for p in m['patches'])}")
