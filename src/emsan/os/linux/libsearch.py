"""Before starting a dynamic program, check that ld.so will find every shared library it needs.

A missing library would otherwise surface as ld.so's own message from inside the guest,
after emsan has done all its set-up. This follows glibc's search order (DT_RPATH of the
object and its loaders, LD_LIBRARY_PATH, DT_RUNPATH, ld.so.cache, the default directories)
and errs towards accepting: a directory emsan cannot reason about ($PLATFORM-like tokens it
does not know, unreadable files) makes it give up the check rather than refuse a program
that might run.
"""
from __future__ import annotations

import glob
import os
import re
import struct
from collections import deque
from dataclasses import field
from typing import Callable

from emsan.errors import EmsanError
from emsan.lazyclass import dataclass
from emsan.os.linux.elf import EHDR, PHDR, PT_DYNAMIC, PT_LOAD, ElfImage

DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
TRIPLET = {"x86_64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
MACHINE = {"x86_64": 62, "arm64": 183}
DEFAULT_DIRS = {
    "x86_64": ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"],
    "arm64": ["/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"],
}


DST = re.compile(r"\$(?:\{(\w+)\}|(\w+))")    # a dynamic string token: $NAME or ${NAME}


class _Unsure(Exception):
    """The search depends on something emsan does not model: accept the program."""


@dataclass
class DynInfo:
    """An object's DT_NEEDED, DT_SONAME, DT_RPATH and DT_RUNPATH."""

    needed: list[str] = field(default_factory=list)
    soname: str | None = None
    rpath: str | None = None
    runpath: str | None = None


@dataclass
class _Obj:
    """An object in the search for DT_NEEDED libraries, and which one needed it."""

    path: str              # host path of the file
    dyn: DynInfo
    loader: _Obj | None    # the object whose DT_NEEDED brought it in (None: the program)


def dynamic_info(read, segments: list[tuple[int, int, int]], dyn: tuple[int, int]) -> DynInfo:
    """Parse PT_DYNAMIC. `read(offset, size)` reads the file; segments are (vaddr, offset, filesz)."""
    raw = read(dyn[0], dyn[1])
    tags: list[tuple[int, int]] = []
    for i in range(len(raw) // 16):
        tag, val = struct.unpack_from("<qQ", raw, 16 * i)
        if tag == DT_NULL:
            break
        tags.append((tag, val))
    values = dict(tags)
    if DT_STRTAB not in values:
        return DynInfo()
    strtab = next((off + values[DT_STRTAB] - va for va, off, sz in segments
                   if va <= values[DT_STRTAB] < va + sz), None)
    if strtab is None:
        raise _Unsure("string table outside the file")
    strings = read(strtab, values.get(DT_STRSZ, 1 << 16))

    def string(off: int) -> str:
        return strings[off:strings.index(b"\0", off)].decode(errors="surrogateescape")

    try:
        info = DynInfo([string(v) for t, v in tags if t == DT_NEEDED])
        info.soname = string(values[DT_SONAME]) if DT_SONAME in values else None
        info.rpath = string(values[DT_RPATH]) if DT_RPATH in values else None
        info.runpath = string(values[DT_RUNPATH]) if DT_RUNPATH in values else None
    except ValueError:
        raise _Unsure("unterminated string") from None
    return info


def image_dynamic_info(image: ElfImage) -> DynInfo:
    if image.dynamic is None:
        return DynInfo()
    segs = [(s.vaddr, s.offset, s.filesz) for s in image.segments]
    return dynamic_info(lambda off, n: image.data[off:off + n], segs, image.dynamic)


def library_info(path: str, machine: int) -> DynInfo | None:
    """DynInfo of a candidate library, or None when ld.so would skip it (not ELF64 for this machine)."""
    try:
        with open(path, "rb") as f:
            def read(off: int, n: int) -> bytes:
                f.seek(off)
                return f.read(n)
            head = read(0, EHDR.size)
            if len(head) < EHDR.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            fields = EHDR.unpack(head)
            if fields[2] != machine:
                return None
            phoff, phentsize, phnum = fields[5], fields[9], fields[10]
            if phentsize != PHDR.size:
                return None
            ph = read(phoff, phnum * phentsize)
            segs, dyn = [], None
            for i in range(len(ph) // PHDR.size):
                ptype, _fl, off, vaddr, _pa, filesz, _msz, _al = PHDR.unpack_from(ph, i * PHDR.size)
                if ptype == PT_LOAD:
                    segs.append((vaddr, off, filesz))
                elif ptype == PT_DYNAMIC:
                    dyn = (off, filesz)
            return dynamic_info(read, segs, dyn) if dyn else DynInfo()
    except IsADirectoryError:
        return None
    except OSError as e:
        raise _Unsure(str(e)) from None


class LibrarySearch:
    """glibc's search, over the guest's file system view (sysroot first, then the host)."""

    def __init__(self, arch: str, program: str, env: list[str], resolve: Callable[[str], str]):
        self.arch, self.resolve = arch, resolve
        self.machine = MACHINE[arch]
        envd = dict(e.split("=", 1) for e in env if "=" in e)
        ld_path = envd.get("LD_LIBRARY_PATH")
        # $ORIGIN in LD_LIBRARY_PATH is the program's directory
        self.env_dirs = self.expand(ld_path, os.path.dirname(os.path.abspath(program))) if ld_path else []
        self._cache: dict[str, list[str]] | None = None
        self._conf: list[str] | None = None

    # --- path lists ---------------------------------------------------------------------------
    def expand(self, paths: str, origin: str) -> list[str]:
        """Split a colon list and expand $ORIGIN, $LIB and $PLATFORM as ld.so does."""
        subst = {"ORIGIN": [origin], "LIB": ["lib", "lib64", f"lib/{TRIPLET[self.arch]}"],
                 "PLATFORM": [{"x86_64": "x86_64", "arm64": "aarch64"}[self.arch], "haswell", "xeon_phi"]}
        out: list[str] = []
        for entry in paths.replace(";", ":").split(":"):
            variants = [entry or "."]            # an empty entry is the working directory
            while any(DST.search(v) for v in variants):
                expanded = []
                for v in variants:
                    m = DST.search(v)
                    if m is None:
                        expanded.append(v)
                        continue
                    token = m.group(1) or m.group(2)
                    if token not in subst:
                        raise _Unsure(f"search path {entry}")
                    expanded += [v[:m.start()] + value + v[m.end():] for value in subst[token]]
                variants = expanded
            out += variants
        return out

    def conf_dirs(self) -> list[str]:
        """Directories named by /etc/ld.so.conf (and what it includes): what ldconfig put in the cache."""
        if self._conf is None:
            self._conf = self._read_conf()
        return self._conf

    def _read_conf(self) -> list[str]:
        dirs: list[str] = []
        seen: set[str] = set()

        def read(conf: str) -> None:
            host = self.resolve(conf)
            if host in seen:
                return
            seen.add(host)
            try:
                with open(host, errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError:
                return
            for line in lines:
                words = line.split("#", 1)[0].replace(",", " ").replace(":", " ").split()
                if not words or words[0] == "hwcap":
                    continue
                if words[0] == "include":
                    for pattern in words[1:]:
                        pattern = pattern if pattern.startswith("/") else os.path.join(os.path.dirname(conf), pattern)
                        host_pat = self.resolve(os.path.dirname(pattern))
                        for found in sorted(glob.glob(os.path.join(host_pat, os.path.basename(pattern)))):
                            read(os.path.join(os.path.dirname(pattern), os.path.basename(found)))
                    continue
                dirs.extend(w for w in words if w.startswith("/"))

        read("/etc/ld.so.conf")
        return dirs

    def cache(self) -> dict[str, list[str]]:
        """Library name -> paths listed in /etc/ld.so.cache (glibc's 1.1 format)."""
        if self._cache is None:
            self._cache = {}
            try:
                with open(self.resolve("/etc/ld.so.cache"), "rb") as f:
                    data = f.read()
            except OSError:
                return self._cache
            base = data.find(b"glibc-ld.so.cache1.1")
            if base >= 0 and len(data) >= base + 48:
                nlibs = struct.unpack_from("<I", data, base + 20)[0]
                for i in range(nlibs):
                    at = base + 48 + 24 * i
                    if at + 24 > len(data):
                        break
                    _flags, key, value = struct.unpack_from("<iII", data, at)
                    name = data[base + key:data.find(b"\0", base + key)].decode(errors="surrogateescape")
                    path = data[base + value:data.find(b"\0", base + value)].decode(errors="surrogateescape")
                    self._cache.setdefault(name, []).append(path)
        return self._cache

    # --- finding one library ------------------------------------------------------------------
    def candidates_in(self, d: str, name: str) -> list[str]:
        host = self.resolve(os.path.join(d, name)) if d.startswith("/") else os.path.join(d, name)
        hwcaps = glob.glob(os.path.join(os.path.dirname(host), "glibc-hwcaps", "*", name))
        return [*hwcaps, host]

    def find(self, name: str, needer: _Obj) -> tuple[str, DynInfo] | None:
        dirs: list[str] = []
        if needer.dyn.runpath is None:
            obj: _Obj | None = needer
            while obj is not None:              # DT_RPATH of the object and of each loader above it
                if obj.dyn.rpath is not None and obj.dyn.runpath is None:
                    dirs += self.origin_expand(obj.dyn.rpath, obj.path)
                obj = obj.loader
        dirs += self.env_dirs
        if needer.dyn.runpath is not None:
            dirs += self.origin_expand(needer.dyn.runpath, needer.path)
        def cands():        # in ld.so's order, each group looked at only when the ones before found nothing
            yield from (c for d in dirs for c in self.candidates_in(d, name))
            yield from (self.resolve(p) for p in self.cache().get(name, []))
            yield from (c for d in [*self.conf_dirs(), *DEFAULT_DIRS[self.arch]] for c in self.candidates_in(d, name))
        for cand in cands():
            if os.path.isfile(cand):
                info = library_info(cand, self.machine)
                if info is not None:
                    return cand, info
        return None

    def origin_expand(self, paths: str, obj_path: str) -> list[str]:
        # ld.so's $ORIGIN is the directory it opened the object from; emsan also tries the
        # symlink-resolved one, so that either spelling finds the library.
        real = os.path.dirname(os.path.realpath(obj_path))
        plain = os.path.dirname(os.path.abspath(obj_path))
        out = self.expand(paths, plain)
        return out + [d for d in self.expand(paths, real) if d not in out] if real != plain else out


def check_libraries(image: ElfImage, program: str, arch: str, env: list[str], interp: ElfImage,
                    resolve: Callable[[str], str]) -> None:
    """Raise EmsanError when a DT_NEEDED library (direct or indirect) cannot be found."""
    if not os.path.basename(image.interp or "").startswith("ld-linux"):
        return          # another C library's loader (musl...) searches differently
    try:
        search = LibrarySearch(arch, program, env, resolve)
        root = _Obj(program, image_dynamic_info(image), None)
        loaded: set[str] = {os.path.basename(image.interp or "")}
        isoname = image_dynamic_info(interp).soname
        if isoname:
            loaded.add(isoname)
        if root.dyn.soname:
            loaded.add(root.dyn.soname)
        queue: deque[_Obj] = deque([root])
        while queue:
            obj = queue.popleft()
            for name in obj.dyn.needed:
                if name in loaded:
                    continue
                if "/" in name:
                    found = resolve(name) if name.startswith("/") else name
                    info = library_info(found, search.machine) if os.path.isfile(found) else None
                    hit = (found, info) if info is not None else None
                else:
                    hit = search.find(name, obj)
                if hit is None:
                    raise EmsanError(f"{program}: shared library {name} not found (needed by {obj.path})")
                loaded.add(name)
                if hit[1].soname:
                    loaded.add(hit[1].soname)
                queue.append(_Obj(hit[0], hit[1], obj))
    except _Unsure:
        return
