"""Separate debug files, found as gdb and addr2line find them: by GNU build-id under
/usr/lib/debug/.build-id/, then by .gnu_debuglink (next to the file, in its .debug/ directory, or
under /usr/lib/debug). Distributions ship a library's symbols and DWARF that way (Debian's
libc6-dbg and -dbgsym packages); for arm64 guests the --sysroot's /usr/lib/debug comes first.
$EMSAN_DEBUG_FILE_DIRECTORY (directories separated by ':') replaces those /usr/lib/debug, as gdb's
debug-file-directory does."""
from __future__ import annotations

import os
import zlib
from functools import lru_cache

DEBUG_DIR = "usr/lib/debug"


def build_id(elf) -> str | None:
    """The GNU build-id of an open ELFFile, as hex."""
    try:
        for sec in elf.iter_sections():
            if sec["sh_type"] != "SHT_NOTE":
                continue
            for note in sec.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID" and isinstance(note["n_desc"], str):
                    desc = note["n_desc"]
                    return desc if desc and all(c in "0123456789abcdef" for c in desc) else None
    except Exception:           # a malformed note: no build-id
        return None
    return None


def _debuglink(elf) -> tuple[str, int] | None:
    sec = elf.get_section_by_name(".gnu_debuglink")
    if sec is None:
        return None
    try:
        data = sec.data()
        end = data.index(b"\0")
        name = data[:end].decode()
        crc_at = (end + 4) & ~3
        crc = int.from_bytes(data[crc_at:crc_at + 4], "little")
    except (ValueError, UnicodeDecodeError):
        return None
    if not name or "/" in name:
        return None
    return name, crc


def _crc32(path: str) -> int | None:
    crc = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
    except OSError:
        return None
    return crc


def debug_dirs(roots: tuple[str, ...]) -> list[tuple[str, str]]:
    """(root, debug directory) pairs to search, in order."""
    env = os.environ.get("EMSAN_DEBUG_FILE_DIRECTORY")
    if env is not None:
        return [("/", d) for d in env.split(":") if d]
    return [(root, os.path.join(root, DEBUG_DIR)) for root in roots]


def elf_facts(path: str) -> dict | None:
    """What finding a file's debug file and DWARF needs of it: {"build_id", "debuglink" ([name,
    crc] or None), "debug_info" (has a .debug_info section)}; None when it is no ELF file with a
    usable section table. Cached on disk per file (emsan.cache.per_file): reading the notes with
    pyelftools costs its import and a few ms per module at every start-up."""
    from emsan.cache import per_file
    return per_file(path, "debuginfo", __file__, lambda: _elf_facts(path))


def _elf_facts(path: str) -> dict | None:
    from emsan.report.elfsections import open_sections
    try:
        with open(path, "rb") as f:
            elf = open_sections(f, path)
            if elf is None:
                return None
            link = _debuglink(elf)
            return {"build_id": build_id(elf), "debuglink": list(link) if link else None,
                    "debug_info": elf.get_section_by_name(".debug_info") is not None}
    except Exception:
        return None


def find_debug_file(path: str, facts: dict, roots: tuple[str, ...]) -> str | None:
    """The separate debug file of the ELF file at `path` (elf_facts() of it), if one is installed.
    `roots` are the file system roots to search ("/" and, for arm64 guests, the sysroot)."""
    bid = facts["build_id"]
    dirs = debug_dirs(roots)
    if bid and len(bid) > 2:
        for _root, d in dirs:
            cand = os.path.join(d, ".build-id", bid[:2], bid[2:] + ".debug")
            if os.path.isfile(cand) and os.path.realpath(cand) != os.path.realpath(path):
                return cand
    link = facts["debuglink"]
    if link is None:
        return None
    name, crc = link
    here = os.path.dirname(os.path.realpath(path))
    places = [os.path.join(here, name), os.path.join(here, ".debug", name)]
    for root, d in dirs:
        rel_dir = here
        if root != "/" and here.startswith(os.path.realpath(root) + os.sep):
            rel_dir = here[len(os.path.realpath(root)):]       # the guest's view of the directory
        places.append(os.path.join(d, rel_dir.lstrip("/"), name))
    for cand in places:
        if os.path.isfile(cand) and os.path.realpath(cand) != os.path.realpath(path) and _crc32(cand) == crc:
            return cand
    return None


@lru_cache(maxsize=256)
def debug_file(path: str, roots: tuple[str, ...] = ("/",)) -> str | None:
    """find_debug_file() for a path, or None when the file is no ELF emsan can read."""
    try:
        facts = elf_facts(path)
        return None if facts is None else find_debug_file(path, facts, roots)
    except Exception:
        return None
