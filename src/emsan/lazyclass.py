"""`dataclass`, made when the class is first used rather than when its module is imported.

The standard decorator compiles each class's __init__, __repr__ and __eq__ from generated source:
about 0.5 ms a class, 40% of the CPU time emsan's modules took to import for `emsan run`
(bench/startup.py). Half of those classes (reports, /proc nodes, threads, faults) are never
instantiated in a run that finds nothing. This decorator records the options and defers
`dataclasses.dataclass` to the class's first instance: its first __init__, or the __setstate__
of a copy or an unpickled object (which skip __init__), or to the first reading of its fields
(`dataclasses.fields(cls)`, `is_dataclass(cls)`, `cls.__dataclass_fields__`); `made(cls)` does it
at once. The class is the same object either way; its bases are made before it, as dataclasses
requires. (Not `__new__`: a __new__ set on a class and
deleted again leaves CPython's object.__new__ refusing the constructor's arguments.) A class that
defines __init__ or __setstate__ itself, or asks for slots=True (a new class), is made at once.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import dataclass_transform

_PENDING = "__emsan_dataclass_options__"
_STUBS = ("__init__", "__setstate__", "__dataclass_fields__")
# One thread makes a class; another that instantiates it at that very moment may find neither the
# stub nor the real __init__ (emsan makes its objects on its main thread; a harness's threads that
# first use the attach API at the same instant would have to use made() first).
_lock = threading.RLock()


@dataclass_transform()      # type checkers see these classes as the dataclasses they become
def dataclass(cls=None, /, **options):
    """`dataclasses.dataclass(cls, **options)`, deferred to the class's first instance."""
    def wrap(cls):
        if options.get("slots") or any(name in vars(cls) for name in _STUBS):
            return dataclasses.dataclass(cls, **options)

        def first_init(self, *args, **kwargs):
            made(cls)
            cls.__init__(self, *args, **kwargs)

        def first_setstate(self, state):
            made(type(self))
            _set_state(self, state)

        setattr(cls, _PENDING, options)
        cls.__init__, cls.__setstate__, cls.__dataclass_fields__ = first_init, first_setstate, _Fields()
        return cls
    return wrap if cls is None else wrap(cls)


class _Fields:
    """A class's __dataclass_fields__ until it is made: reading it makes the class."""

    def __get__(self, obj, owner: type) -> dict:
        return made(owner).__dataclass_fields__


def made(cls: type) -> type:
    """`cls` with its dataclass methods, made now if they were not yet (bases first)."""
    if any(_PENDING in vars(c) for c in cls.__mro__):
        with _lock:
            for c in reversed(cls.__mro__):
                options = vars(c).get(_PENDING)
                if options is not None:
                    for name in _STUBS:
                        delattr(c, name)
                    dataclasses.dataclass(c, **options)
                    delattr(c, _PENDING)
    return cls


def _set_state(obj, state) -> None:
    """What copy and pickle do with an object's state when its class has no __setstate__."""
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return
    state, slots = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
    if state:
        obj.__dict__.update(state)
    for name, value in (slots or {}).items():
        setattr(obj, name, value)
