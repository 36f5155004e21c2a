"""Operating-system personalities (for now: Linux user mode)."""
