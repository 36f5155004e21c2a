"""Loads the cffi-built C hot paths and hands them the Unicorn entry points they call."""
from __future__ import annotations

import ctypes
from functools import cache

from emsan.machine.unicorn_lib import uclib


def fnptr(name: str) -> int:
    """Address of a libunicorn function, from the very copy the binding loaded (emsan's engine)."""
    return ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value or 0


@cache
def load():
    """Return (ffi, lib) of the native module, initialised once per process."""
    from emsan.native import _emsan_native as mod

    ffi, lib = mod.ffi, mod.lib
    api = ffi.new("emsan_api *")
    for field in ("uc_reg_read", "uc_reg_write", "uc_mem_read", "uc_mem_write",
                  "uc_emu_stop", "uc_hook_add", "uc_ctl", "uc_emsan_host_ptr", "uc_emsan_shadow_check",
                  "uc_emsan_block_filter", "uc_emsan_reg_ptr", "uc_emsan_tag_check",
                  "uc_emsan_tlb_flush_page", "uc_emsan_hook_gate"):
        setattr(api, field, ffi.cast("void *", fnptr(field)))
    lib.emsan_set_api(api)
    return ffi, lib
