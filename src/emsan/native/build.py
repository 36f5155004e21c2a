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
SOURCES = ["engine.c", "runtime.c", "calls.c", "depot.c", "scs.c", "unwind.c", "stackobj.c",
           "kasan.c", "heap.c", "quarantine.c", "checkpoint.c", "intercept.c", "fortify.c", "format.c", "libc.c",
           "shadow.c", "gshadow.c",
           "generic.c", "inline.c", "mmio.c", "tags.c", "mte.c", "compiler.c", "kfence.c", "vmem.c", "exhaust.c", "kmemleak.c",
           "afl.c", "sched.c"]
ffibuilder.set_source(
    "emsan.native._emsan_native",
    '#include <stdint.h>\n#include "emsan_native.h"\n',
    sources=[str((HERE / s).relative_to(Path.cwd())) if HERE.is_relative_to(Path.cwd()) else str(HERE / s)
             for s in SOURCES],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent.parent), verbose=True)
