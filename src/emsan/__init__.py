"""emsan: KASAN- and KFENCE-style memory error detection for code running under Unicorn."""

__version__ = "0.1.0"

# The attach API for Unicorn engines made elsewhere (emsan.session.attach), imported on first
# use so that `import emsan` stays cheap for the command line.
_ATTACH = ("attach", "Sanitizer", "Report", "ReportError", "EmsanError")


def __getattr__(name: str):
    if name in _ATTACH:
        from emsan.session import attach as _attach
        return getattr(_attach, name)
    raise AttributeError(f"module 'emsan' has no attribute {name!r}")

