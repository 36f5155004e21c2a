"""Report rendering: symbolization, kernel-style text, JSON."""
