"""cffi builder for emsan's C hot paths (run by setup.py at install time).

The C code does not link against libunicorn: the few Unicorn entry points it calls are
handed over as function pointers at start-up (see emsan.machine.native), so the build needs
neither Unicorn's headers nor its library, and always uses the copy the binding loaded.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CDEF = (HERE / "emsan_native.h").read_text()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "emsan.native._emsan_native",
    '#include "emsan_native.h"\n' + (HERE / "emsan_native.c").read_text(),
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent.parent), verbose=True)
