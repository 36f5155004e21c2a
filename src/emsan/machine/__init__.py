"""The Unicorn engine: the only layer that imports unicorn."""

from emsan.machine.engine import Machine, MachineFault, UC_PROT

__all__ = ["Machine", "MachineFault", "UC_PROT"]
