"""emsan: KASAN- and KFENCE-style memory error detection for code running under Unicorn."""
import sys

from emsan.errors import EmsanError

__version__ = "0.1.0"

# A harness imports emsan before unicorn: the unicorn binding must load emsan's own engine
# (emsan.machine.unicorn_lib), and the Uc the harness then makes runs on it. Importing unicorn
# first is refused with one clear error when emsan attaches. An engine that cannot load is
# reported where emsan uses it (the command line: one line, status 70).
if "unicorn" not in sys.modules:
    try:
        from emsan.machine import unicorn_lib as _engine  # noqa: F401
    except EmsanError:
        pass

# The attach API for Unicorn engines made elsewhere (emsan.session.attach), imported on first use;
# EmsanError is here from the start, so that a harness can catch the error of that import.
_ATTACH = ("attach", "Sanitizer", "Report", "ReportError")


def __getattr__(name: str):
    if name in _ATTACH:
        from emsan.session import attach as _attach
        return getattr(_attach, name)
    raise AttributeError(f"module 'emsan' has no attribute {name!r}")
