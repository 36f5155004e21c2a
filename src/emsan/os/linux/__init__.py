"""Linux user-mode personality: ELF loading, initial stack, syscalls, memory map, signals."""
