"""One run of one guest: wires machine, OS personality, sanitizer mode and report sink."""
