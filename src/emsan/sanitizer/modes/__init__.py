"""The sanitizer modes, one module each. A module defines its mode classes (emsan.sanitizer.mode.Mode)
and registers them with @register; the table maps `--mode` names to classes."""
from __future__ import annotations

import importlib
import pkgutil

MODES: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: the mode `cls.name` is `cls`."""
    if cls.name in MODES:
        raise ValueError(f"two modes named {cls.name}")
    MODES[cls.name] = cls
    return cls


def _load() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")


def mode_class(name: str) -> type:
    """The class of the mode called `name` (KeyError if there is none)."""
    if not MODES:
        _load()
    return MODES[name]


def mode_names() -> list[str]:
    """The modes --mode offers."""
    if not MODES:
        _load()
    return [name for name, cls in MODES.items() if cls.caps.selectable]
