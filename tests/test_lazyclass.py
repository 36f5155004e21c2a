"""emsan.lazyclass: a dataclass made at its first instance behaves as the standard library's
dataclass of the same definition (the oracle here), and is not made before."""
from __future__ import annotations

import copy
import dataclasses
import importlib
import pickle
import pkgutil

import pytest

import emsan
from emsan import lazyclass
from emsan.lazyclass import dataclass, made


def define(decorator):
    """The same three classes, decorated with `decorator`."""
    @decorator
    class Point:
        x: int
        y: int = 0
        tags: list = dataclasses.field(default_factory=list)

        def norm1(self) -> int:
            return abs(self.x) + abs(self.y)

    @decorator(frozen=True)
    class Key:
        name: str
        size: int = 8

    @decorator
    class Point3(Point):
        z: int = 0

    return Point, Key, Point3


def pending(cls) -> bool:
    return lazyclass._PENDING in vars(cls)


def test_not_made_before_first_instance():
    Point, Key, Point3 = define(dataclass)
    assert pending(Point) and pending(Point3) and pending(Key)
    Point3(1, 2, z=3)                      # a subclass's first instance makes its base too
    assert not pending(Point) and not pending(Point3) and pending(Key)
    assert dataclasses.is_dataclass(Point) and dataclasses.is_dataclass(Point3)
    assert "first_init" not in vars(Point)["__init__"].__qualname__ and "__setstate__" not in vars(Point)


def test_behaves_as_the_standard_dataclass():
    lazy, std = define(dataclass), define(dataclasses.dataclass)
    for (lp, lk, l3), (sp, sk, s3) in [(lazy, std)]:
        a, b = lp(1, 2), sp(1, 2)
        assert repr(a).split(".")[-1] == repr(b).split(".")[-1]
        assert a == lp(1, 2) and a != lp(1, 3) and a.norm1() == 3
        assert lp(5).tags is not lp(5).tags                       # default_factory: a new list each
        assert [(f.name, f.default) for f in dataclasses.fields(lp)] == \
               [(f.name, f.default) for f in dataclasses.fields(sp)]
        assert lp.__hash__ is None and sp.__hash__ is None        # eq without frozen: unhashable
        k = lk("kmalloc")
        assert hash(k) == hash(sk("kmalloc")) and k == lk("kmalloc", 8)
        with pytest.raises(dataclasses.FrozenInstanceError):
            k.size = 16
        assert l3(1, 2, [], 3) == l3(1, 2, z=3, tags=[]) and l3.__match_args__ == s3.__match_args__
        with pytest.raises(TypeError):
            lp()                                                   # x is required, as in the original
        assert dataclasses.replace(a, y=7) == lp(1, 7)


def test_instances_made_without_init():
    """copy and pickle (which skip __init__) make the class too."""
    Point, Key, _ = define(dataclass)
    p = Point(3, 4, ["a"])
    assert copy.copy(p) == p and copy.deepcopy(p) == p and copy.copy(p) is not p


def test_state_set_before_the_class_is_made():
    """An object whose class was not made yet gets its state through the stub, as an unpickled
    object in a fresh process does; the class is made, the state is the object's."""
    Point, Key, _ = define(dataclass)
    raw = object.__new__(Point)
    raw.__setstate__({"x": 1, "y": 2, "tags": []})
    assert dataclasses.is_dataclass(Point) and raw == Point(1, 2)
    frozen = object.__new__(Key)
    frozen.__setstate__({"name": "kmalloc-64", "size": 64})
    assert frozen == Key("kmalloc-64", 64) and hash(frozen) == hash(Key("kmalloc-64", 64))


def test_pickle_round_trip():
    from emsan.os.linux.memory import Mapping

    m = Mapping(0x1000, 0x2000, 5, "/bin/true", 0x1000)
    assert pickle.loads(pickle.dumps(m)) == m


def test_fields_read_before_any_instance():
    """dataclasses.fields(), is_dataclass() and __dataclass_fields__ on the class make it first."""
    for read in (dataclasses.fields, dataclasses.is_dataclass, lambda c: c.__dataclass_fields__, made):
        Point, _, Point3 = define(dataclass)
        read(Point3)
        assert not pending(Point) and not pending(Point3), read
        assert [f.name for f in dataclasses.fields(Point3)] == ["x", "y", "tags", "z"]
    assert made(Point) is Point


def test_every_emsan_dataclass_can_be_made():
    """Each of emsan's classes is made without error (options and field order valid), exactly as
    the standard decorator would have done at import."""
    pending = []
    for info in pkgutil.walk_packages(emsan.__path__, "emsan."):
        if info.name == "emsan.__main__" or info.name.startswith(("emsan.native.", "emsan.runtime.")):
            continue
        try:
            mod = importlib.import_module(info.name)
        except ImportError:
            continue
        pending += [c for c in vars(mod).values()
                    if isinstance(c, type) and c.__module__ == mod.__name__ and lazyclass._PENDING in vars(c)]
    assert pending, "no lazily made dataclass found in emsan"
    for c in pending:
        assert dataclasses.is_dataclass(made(c)), c
