"""emsan's own libunicorn: where it is, what it is, and making the `unicorn` binding load it.

emsan runs on a libunicorn built at install time from the pinned Unicorn sdist with the patches of
the repository's engine/patches/ (engine/build.py, run by setup.py), installed beside this module
as _engine/libunicorn.so.2 with its manifest _engine/engine.json. The unicorn==2.1.3 Python
binding stays the API. It loads the library named by $LIBUNICORN_PATH before its own, so that
variable names ours while the binding is first imported (and is put back afterwards). Whatever the
binding ends up with is then checked: the wheel's own library (slow on every guest store, without
our fixes) or any other copy is refused with a message saying what to do, never used quietly.

This module must be imported before anything imports `unicorn`; emsan.machine does so first.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
from functools import cache
from pathlib import Path

from emsan.errors import EXIT_INTERNAL, EmsanError

ENGINE_DIR = Path(__file__).resolve().parent / "_engine"
LIBRARY = ENGINE_DIR / "libunicorn.so.2"
MANIFEST = ENGINE_DIR / "engine.json"

# QEMU internals emsan calls besides Unicorn's API (src/emsan/native/mmio.c recovers the exact PC
# of an access seen in an MMIO callback with them), and the engine's own additions (the runtime
# reads guest memory through uc_emsan_host_ptr); the engine build must export them.
INTERNALS = ("qemu_get_cpu_x86_64", "cpu_restore_state_x86_64",
             "qemu_get_cpu_aarch64", "cpu_restore_state_aarch64", "uc_emsan_host_ptr", "uc_emsan_shadow_check",
             "uc_emsan_block_filter", "uc_emsan_reg_ptr", "uc_emsan_tagged_tlb", "uc_emsan_tag_check",
             "uc_emsan_tlb_flush_page", "uc_emsan_hook_gate")


class EngineError(EmsanError):
    """emsan's engine is missing, broken, or another libunicorn was loaded first."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_INTERNAL)


@cache
def manifest() -> dict:
    """The engine's build manifest (unicorn version, sdist hash, patches, build options)."""
    try:
        return json.loads(MANIFEST.read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"emsan's engine manifest {MANIFEST} is unreadable ({e}); "
                          "reinstall emsan (`pip install .` in its source tree)") from None


def describe() -> str:
    """Several lines for `emsan --version`: which engine build runs, with which patches."""
    m = manifest()
    lines = [f"engine: {m['engine']} (Unicorn {m['unicorn']} from {m['sdist']}, sha256 {m['sdist_sha256'][:16]}..., "
             f"for {', '.join(m['arches'])})",
             f"library: {loaded_path()}"]
    lines += [f"patch {p['name']}: {p['summary']}" for p in m["patches"]]
    return "\n".join(lines)


def loaded_path() -> Path:
    """The file the unicorn binding actually loaded."""
    return Path(uclib._name).resolve()


def _why_not_loadable() -> str:
    try:
        ctypes.CDLL(str(LIBRARY))
    except OSError as e:
        return f": {e}"
    return ""


def _load() -> ctypes.CDLL:
    if not LIBRARY.exists():
        raise EngineError(f"emsan's Unicorn engine is not installed ({LIBRARY} is missing); install emsan with "
                          "`pip install .` (which builds it; `bash scripts/setup.sh` installs cmake and a compiler)")
    binding = sys.modules.get("unicorn.unicorn_py3.unicorn")
    if binding is None:
        before = os.environ.get("LIBUNICORN_PATH")
        os.environ["LIBUNICORN_PATH"] = str(ENGINE_DIR)
        try:
            import unicorn.unicorn_py3.unicorn as binding
        finally:
            if before is None:
                del os.environ["LIBUNICORN_PATH"]
            else:
                os.environ["LIBUNICORN_PATH"] = before
        first = True
    else:
        first = False
    lib = binding.uclib
    loaded = Path(lib._name).resolve()
    if loaded != LIBRARY.resolve():
        if first:
            raise EngineError(f"the unicorn binding could not load emsan's engine {LIBRARY}{_why_not_loadable()} "
                              f"(it loaded {loaded}); reinstall emsan (`pip install .`)")
        raise EngineError(f"unicorn was imported before emsan and loaded {loaded}, not emsan's engine; "
                          "import emsan.machine before unicorn (or start Python with "
                          f"LIBUNICORN_PATH={ENGINE_DIR})")
    missing = [name for name in INTERNALS if not hasattr(lib, name)]
    if missing:
        raise EngineError(f"emsan's engine {LIBRARY} does not export {', '.join(missing)}; reinstall emsan")
    return lib


uclib = _load()
