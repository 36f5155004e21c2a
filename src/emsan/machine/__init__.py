"""The Unicorn engine: the only layer that imports unicorn."""

# First: the unicorn binding must load emsan's own libunicorn, not the wheel's (unicorn_lib.py).
from emsan.machine import unicorn_lib  # noqa: F401  (isort: skip)
from emsan.machine.engine import UC_PROT, UNICORN_VERSION, Machine, MachineFault, engine_ok

__all__ = ["Machine", "MachineFault", "UC_PROT", "UNICORN_VERSION", "engine_ok"]
