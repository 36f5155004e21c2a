"""Errors that end a run with one line on stderr and a documented exit status."""
from __future__ import annotations

EXIT_BAD_INPUT = 2        # usage errors and programs emsan cannot load
EXIT_INTERNAL = 70        # a bug in emsan itself (EX_SOFTWARE)
EXIT_RESOURCES = 71       # emsan ran out of a resource of its own (shadow, stack depot, host memory)
EXIT_DEADLOCK = 72        # every guest thread waits and nothing could ever wake one
EXIT_REPORT = 99          # a sanitizer report stopped the run (--error-exitcode changes it)
EXIT_TIMEOUT = 124        # --timeout reached (as timeout(1))
EXIT_MAX_INSNS = 125      # --max-instructions reached
EXIT_SIGNAL_BASE = 128    # guest killed by signal N: 128 + N, as a shell shows it


class EmsanError(Exception):
    """A condition the user must fix; printed as `emsan: <message>`, never as a traceback."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status
