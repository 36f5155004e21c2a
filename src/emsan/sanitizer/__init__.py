"""Arch- and OS-independent sanitizer: shadow, allocator, quarantine, modes, interceptors, reports.

Nothing here assumes emsan loaded the guest: a mode attaches to a Machine (or a user's own
Unicorn engine wrapped in one) given a heap range, a stack range and the addresses of the
functions it stands in for.
"""
