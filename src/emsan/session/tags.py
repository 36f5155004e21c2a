"""Wires the tag-based modes (sw-tags, hw-tags) to a Linux arm64 guest.

The heap region, entry points, interceptors, reporting each distinct bug once, --continue,
JSON and exit decisions are the generic wiring's (emsan.session.sanitize.LinuxSanitizer)."""
from __future__ import annotations

import hashlib
import os

from emsan.errors import EmsanError
from emsan.os.linux.memory import SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE
from emsan.sanitizer.tags import TagMode
from emsan.session.sanitize import LinuxSanitizer


class TagSanitizer(LinuxSanitizer):
    def __init__(self, session):
        if session.arch.name != "arm64":
            raise EmsanError(f"--mode {session.opts.mode} needs an arm64 guest (pointer tags live in the "
                             f"top byte that arm64's Top-Byte-Ignore leaves to software); "
                             f"{session.opts.program} is {session.arch.name}")
        super().__init__(session)

    def create_mode(self) -> TagMode:
        opts, mem = self.s.opts, self.s.mem
        mem.map(SANITIZER_HEAP_BASE, SANITIZER_HEAP_BASE + SANITIZER_HEAP_SIZE, 3, "[emsan-heap]")
        seed = opts.seed if opts.seed is not None else int.from_bytes(os.urandom(8), "little")
        # Tags get their own stream, hashed so that consecutive seeds give unrelated tags.
        seed = int.from_bytes(hashlib.blake2b(b"tags:%d" % seed, digest_size=8).digest(), "little")
        return TagMode(self.s.machine, self.s.arch, SANITIZER_HEAP_BASE, SANITIZER_HEAP_SIZE, opts.mode, seed,
                       self.is_call_return)

    def report_key(self, rep) -> tuple:
        # The same instruction meeting another memory tag is another finding (match_all_mem_tag).
        return (rep.bug_type, rep.pc, rep.memory_tag)
