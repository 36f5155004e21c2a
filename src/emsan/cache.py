"""emsan's on-disk cache of what it derives from ELF files (~/.cache/emsan, or $EMSAN_CACHE_DIR).

Entries are small JSON documents, written atomically; a cache that cannot be read or written
is simply not used."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


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
        return "path-" + hashlib.sha1(path.encode()).hexdigest()
    return "path-" + hashlib.sha1(b"%s|%d|%d" % (os.path.realpath(path).encode(), st.st_size,
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
