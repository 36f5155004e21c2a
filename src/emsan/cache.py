"""emsan's on-disk cache of what it derives from ELF files (~/.cache/emsan, or $EMSAN_CACHE_DIR).

Entries are small JSON documents, written atomically; a cache that cannot be read or written
is simply not used."""
from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

try:    # CPython's own SHA-1 and BLAKE2b: hashlib's digests, without hashlib loading OpenSSL (~3 ms of start-up)
    from _blake2 import blake2b
    from _sha1 import sha1
except ImportError:                     # another Python
    from hashlib import blake2b, sha1


def cache_dir(*parts: str) -> Path | None:
    """The cache directory for `parts` (created), or None when there is nowhere to write."""
    root = os.environ.get("EMSAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "emsan")
    try:
        p = Path(root).joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p
    except OSError:
        return None


def file_key(path: str, build_id: str | None) -> str:
    """What identifies a file's contents: its GNU build-id, else its path, size and mtime."""
    if build_id:
        return "id-" + build_id
    try:
        st = os.stat(path)
    except OSError:
        return "path-" + sha1(path.encode()).hexdigest()
    return "path-" + sha1(b"%s|%d|%d" % (os.path.realpath(path).encode(), st.st_size,
                                                 st.st_mtime_ns)).hexdigest()


def load_json(d: Path | None, name: str):
    if d is None:
        return None
    try:
        with open(d / name) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def store_json(d: Path | None, name: str, value) -> None:
    if d is None:
        return
    tmp = d / f".{name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, separators=(",", ":"))
        os.replace(tmp, d / name)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def file_identity(path: str) -> str | None:
    """What changes whenever a file's contents may have: its device and inode (which file, by
    whatever path), size, modification and change times (a rewrite in place that restores the
    mtime, `cp -p` over it, still moves the change time, which no one can set). None when it
    cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return stat_identity(st)


def stat_identity(st: os.stat_result) -> str:
    """file_identity() of a file already stat'ed."""
    return f"{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


# File times tick coarsely (a few ms on Linux, 1-2 s on some file systems): two versions of a file
# written within one tick can share every field of the identity. As git does with its index, a
# file changed less than this long ago is not cached (each run derives it again until it is older).
RACY_NS = 2_000_000_000


@lru_cache(maxsize=None)
def code_version(source: str) -> str:
    """A digest of the Python file that derives a cached value (its __file__): an install with
    other code never reads another's entries. BLAKE2b: CPython's own SHA-1 takes 2.5 times as long
    over the 15-20 kB source files every run hashes."""
    try:
        with open(source, "rb") as f:
            return blake2b(f.read(), digest_size=8).hexdigest()
    except OSError:
        return "unknown"


def _settled(path: str, before: str) -> bool:
    """May what was derived from the file, seen with identity `before`, be stored: it did not
    change while it was read, and not too recently (RACY_NS)?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - RACY_NS and stat_identity(st) == before


def per_file(path: str, kind: str, source: str, make: Callable[[], Any]) -> Any:
    """make()'s value (JSON: lists, dicts, strings, numbers) for the file at `path`, from the disk
    cache ($EMSAN_CACHE_DIR/files/) when the same file was seen by the same code (`source`, the
    deriving module's __file__) before. Start-up reads a few of these instead of parsing every
    module's ELF headers, symbol tables and notes again. What make() raises is raised."""
    before = file_identity(path)
    if before is None:
        return make()
    key = f"{kind}|{code_version(source)}|{before}"
    d = cache_dir("files")
    name = f"{kind}-{sha1(key.encode()).hexdigest()}"
    hit = load_json(d, name)
    if isinstance(hit, dict) and hit.get("key") == key and "value" in hit:
        return hit["value"]
    value = make()
    if _settled(path, before):
        store_json(d, name, {"key": key, "value": value})
    return value


def per_file_bytes(path: str, kind: str, source: str, make: Callable[[], bytes]) -> bytes:
    """per_file() for a derived blob (the stack collectors' tables, $EMSAN_CACHE_DIR/stacks/): the
    same identity, code version and racy-file rule, stored as raw bytes."""
    before = file_identity(path)
    if before is None:
        return make()
    d = cache_dir("stacks")
    f = d / sha1(f"{kind}|{code_version(source)}|{before}".encode()).hexdigest() if d else None
    if f is not None:
        try:
            return f.read_bytes()
        except OSError:
            pass
    data = make()
    if f is not None and _settled(path, before):
        tmp = f.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, f)
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
    return data
