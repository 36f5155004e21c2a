"""The Unicorn engine: the only layer that imports unicorn."""

from emsan.machine.engine import UC_PROT, UNICORN_VERSION, Machine, MachineFault

__all__ = ["Machine", "MachineFault", "UC_PROT", "UNICORN_VERSION"]
