"""The sanitizer modes, one module each. A module defines its mode classes (emsan.sanitizer.mode.Mode)
and registers them with @register; the table maps `--mode` names to classes."""
from __future__ import annotations

import importlib

MODES: dict[str, type] = {}
# The modes whose module is not named after them (one module holds several).
HOMES = {"sw-tags": "tags", "hw-tags": "tags", "compiler-assisted": "compiler"}
_loaded = False


def register(cls: type) -> type:
    """Class decorator: the mode `cls.name` is `cls`."""
    if cls.name in MODES:
        raise ValueError(f"two modes named {cls.name}")
    MODES[cls.name] = cls
    return cls


def _load() -> None:
    """Import every mode module once (a module imported on its own registers only its modes)."""
    global _loaded
    if not _loaded:
        import pkgutil      # here: a run names its mode, whose module is imported without this (0.5 ms)

        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True


def mode_class(name: str) -> type:
    """The class of the mode called `name` (KeyError if there is none). A module named after its
    mode (generic.py for "generic"), or its HOMES entry, is found without importing the others."""
    if name not in MODES and "." not in name:
        try:
            importlib.import_module(f"{__name__}.{HOMES.get(name, name.replace('-', '_'))}")
        except ModuleNotFoundError:
            pass
    if name not in MODES:
        _load()
    return MODES[name]


def mode_names() -> list[str]:
    """The modes --mode offers."""
    _load()
    return list(MODES)
