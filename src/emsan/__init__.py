"""emsan: KASAN- and KFENCE-style memory error detection for code running under Unicorn."""

__version__ = "0.1.0"
