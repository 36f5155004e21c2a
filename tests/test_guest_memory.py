"""Unit tests of the pieces behind hostile-input handling: the guest's memory map and page table,
the uaccess checks, segment protections, section-table validation, one-line messages."""
from __future__ import annotations

import errno
import struct

import pytest

from conftest import build
from emsan.cli.main import one_line
from emsan.machine import Machine
from emsan.os.linux.elf import ElfImage, Segment
from emsan.os.linux.loader import segment_pages
from emsan.os.linux.memory import EMSAN_BAND, MMAP_MIN_ADDR, PAGE, TASK_SIZE, MemoryMap
from emsan.os.linux.uaccess import MAX_RW_COUNT, UIO_MAXIOV, UserMemory
from emsan.report.elfsections import sections_usable

BASE = 0x0700_0000_0000


@pytest.fixture
def mem() -> MemoryMap:
    return MemoryMap(Machine("x86_64"))


def spans(mem: MemoryMap) -> list[tuple[int, int, int]]:
    return [(m.start - BASE, m.end - BASE, m.prot) for m in mem.mappings]


def test_unmap_protect_and_merge_keep_the_map_exact(mem):
    mem.guest_map(BASE, BASE + 8 * PAGE, 3)
    mem.guest_unmap(BASE + 2 * PAGE, BASE + 3 * PAGE)
    assert spans(mem) == [(0, 2 * PAGE, 3), (3 * PAGE, 8 * PAGE, 3)]
    assert mem.guest_protect(BASE + 4 * PAGE, BASE + 6 * PAGE, 1)
    assert spans(mem) == [(0, 2 * PAGE, 3), (3 * PAGE, 4 * PAGE, 3), (4 * PAGE, 6 * PAGE, 1), (6 * PAGE, 8 * PAGE, 3)]
    assert not mem.guest_protect(BASE, BASE + 4 * PAGE, 1)         # a hole: ENOMEM, nothing changed
    assert mem.guest_protect(BASE + 4 * PAGE, BASE + 6 * PAGE, 3)  # back: the kernel merges equal neighbours
    assert spans(mem) == [(0, 2 * PAGE, 3), (3 * PAGE, 8 * PAGE, 3)]
    assert mem.space.prot_at(BASE + 2 * PAGE) == 0 and mem.space.prot_at(BASE + 5 * PAGE) == 3 | 8


def test_pages_read_zero_after_unmap_and_move_keeps_contents(mem):
    m = mem.machine
    mem.guest_map(BASE, BASE + 4 * PAGE, 3)
    m.write(BASE + PAGE, b"moved")
    m.write(BASE, b"gone")
    mem.guest_move(BASE + PAGE, PAGE, BASE + 16 * PAGE, 2 * PAGE)
    assert m.read(BASE + 16 * PAGE, 5) == b"moved"
    assert mem.find(BASE + PAGE) is None and mem.find(BASE + 17 * PAGE).end == BASE + 18 * PAGE
    mem.guest_unmap(BASE, BASE + PAGE)
    mem.guest_map(BASE, BASE + PAGE, 3)
    assert m.read(BASE, 4) == bytes(4)


def test_the_guest_may_not_use_emsans_band_or_the_lowest_pages(mem):
    assert mem.usable(EMSAN_BAND[0], EMSAN_BAND[0] + PAGE) == errno.ENOMEM
    assert mem.usable(EMSAN_BAND[1] - PAGE, EMSAN_BAND[1] + PAGE) == errno.ENOMEM
    assert mem.usable(TASK_SIZE - PAGE, TASK_SIZE + PAGE) == errno.ENOMEM
    assert mem.usable(0, PAGE) == errno.EPERM and mem.usable(MMAP_MIN_ADDR, MMAP_MIN_ADDR + PAGE) == 0
    mem.map(EMSAN_BAND[0], EMSAN_BAND[0] + 4 * PAGE, 3, "[emsan-heap]")
    assert not mem.owned_by_guest(EMSAN_BAND[0], EMSAN_BAND[0] + PAGE)
    assert mem.protectable(EMSAN_BAND[0], EMSAN_BAND[0] + PAGE)      # objects live there


def test_a_huge_reservation_costs_slots_not_pages(mem):
    """1 TiB of PROT_NONE: a few table slots (one per GiB), no page-sized tables."""
    mem.guest_map(BASE, BASE + (1 << 40), 0)
    tables = mem.space.lib.emsan_vm_tables(mem.space.vm)
    assert tables == 0
    mem.guest_protect(BASE + (1 << 30) + PAGE, BASE + (1 << 30) + 2 * PAGE, 3)
    assert mem.space.lib.emsan_vm_tables(mem.space.vm) == 2               # one middle table, one leaf


def test_uaccess_checks_before_it_copies(mem):
    user = UserMemory(mem.machine, mem)
    mem.guest_map(BASE, BASE + 2 * PAGE, 3)
    mem.guest_map(BASE + 2 * PAGE, BASE + 3 * PAGE, 1)
    assert user.access_ok(BASE, 10) and not user.access_ok((1 << 64) - 4096, 8192)
    assert not user.access_ok(BASE, TASK_SIZE)
    assert user.writable(BASE, 4 * PAGE) == 2 * PAGE and user.readable(BASE, 4 * PAGE) == 3 * PAGE
    with pytest.raises(OSError) as e:
        user.write(BASE + 2 * PAGE - 4, b"12345678")
    assert e.value.errno == errno.EFAULT
    mem.machine.write(BASE + 100, b"path\0")
    assert user.path(BASE + 100) == "path"
    mem.machine.write(BASE, b"a" * 2 * PAGE)
    with pytest.raises(OSError) as e:
        user.cstr(BASE, 4096)
    assert e.value.errno == errno.ENAMETOOLONG
    raw = struct.pack("<QQQQ", BASE, 1 << 62, BASE, 1 << 62)
    mem.machine.write(BASE + PAGE, raw)
    assert [n for _b, n in user.iovecs(BASE + PAGE, 2)] == [MAX_RW_COUNT, 0]     # capped like the kernel
    with pytest.raises(OSError) as e:
        user.iovecs(BASE, UIO_MAXIOV + 1)
    assert e.value.errno == errno.EINVAL


def test_segment_pages_sweep():
    def image(*segs):
        return ElfImage("x", 62, 2, 0, 64, 56, len(segs), [Segment(*s) for s in segs], None, b"")
    # r-x text, rw- data sharing its first page, a PROT_NONE segment, a 2**40-byte bss
    img = image((0x400000, 0x1800, 0, 0x1800, 5), (0x401800, 0x1000, 0x1800, 0x800, 6), (0x500000, 0x1000, 0, 0, 0),
                (0x600000, 1 << 40, 0, 0, 6))
    assert segment_pages(img, 0) == [(0x400000, 0x401000, 5), (0x401000, 0x402000, 7), (0x402000, 0x403000, 3),
                                     (0x500000, 0x501000, 0), (0x600000, 0x600000 + (1 << 40), 3)]


def test_sections_usable_only_when_the_whole_table_is(tmp_path):
    exe = build("hello", "x86_64", "static")
    assert sections_usable(exe)
    data = bytearray(open(exe, "rb").read())
    struct.pack_into("<H", data, 0x3E, 0x7777)          # e_shstrndx past the table
    bad = tmp_path / "bad"
    bad.write_bytes(data)
    assert not sections_usable(str(bad))


def test_messages_stay_on_one_line():
    assert one_line("interpreter /lib/ld\n.so\x18 not found") == "interpreter /lib/ld\\n.so\\x18 not found"
    assert one_line("caf\u00e9 \udcf2") == "caf\u00e9 \\udcf2"
