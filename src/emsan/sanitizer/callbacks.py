"""C-to-Python callbacks that run inside the engine's hooks."""
from __future__ import annotations

from typing import Callable


def guarded_callback(ffi, machine, owner, cb: Callable[[], object]):
    """A `void(void)` C callback running cb(); an exception never escapes into the engine (it
    would print a traceback): it is kept in owner.callback_error and the engine is stopped."""
    owner.callback_error = None

    def call() -> None:
        try:
            cb()
        except Exception as e:
            owner.callback_error = e
            machine.stop("internal-error")
    return ffi.callback("void(void)", call)
