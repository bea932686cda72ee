"""The guest memory map (pyvmm.boot.memory_map) and its placement helpers."""

from __future__ import annotations

import itertools

from pyvmm.arch.x86.layout import GiB, MiB
from pyvmm.boot.memory_map import E820Type, MemoryMapEntry, memory_map, place_high, place_low, subtract
from pyvmm.memory import GuestMemory

RAM, RESERVED = E820Type.RAM, E820Type.RESERVED
LOW_RESERVED = [MemoryMapEntry(0x9FC00, 0x400, RESERVED), MemoryMapEntry(0xE0000, 0x20000, RESERVED)]


def assert_sorted_disjoint(entries: list[MemoryMapEntry]) -> None:
    for before, after in itertools.pairwise(entries):
        assert before.end <= after.addr


def test_64_mib_guest(memory: GuestMemory) -> None:
    assert memory_map(memory) == [
        MemoryMapEntry(0, 0x9FC00, RAM),
        *LOW_RESERVED,
        MemoryMapEntry(0x100000, 63 * MiB, RAM),
    ]


def test_ram_above_the_mmio_hole_is_listed() -> None:
    memory = GuestMemory([(0, 16 * MiB), (4 * GiB, 16 * MiB)])
    try:
        entries = memory_map(memory)
    finally:
        memory.close()
    assert entries[-2:] == [MemoryMapEntry(1 * MiB, 15 * MiB, RAM), MemoryMapEntry(4 * GiB, 16 * MiB, RAM)]
    assert_sorted_disjoint(entries)


def test_guest_below_1_mib_gets_what_it_has() -> None:
    memory = GuestMemory([(0, 512 * 1024)])
    try:
        entries = memory_map(memory)
    finally:
        memory.close()
    assert entries == [MemoryMapEntry(0, 512 * 1024, RAM), *LOW_RESERVED]


def test_placement_helpers() -> None:
    free = subtract([(0, 0x10000), (0x100000, 0x400000)], [(0x200000, 0x280000)])
    assert free == [(0, 0x10000), (0x100000, 0x200000), (0x280000, 0x400000)]
    assert place_low(free, 0x1000, above=0x10000, below=1 << 32, align=0x1000) == 0x100000
    assert place_low(free, 0x100001, above=0, below=1 << 32, align=0x1000) == 0x280000
    assert place_high(free, 0x1800, above=0, below=0x300000, align=0x1000) == 0x2FE000
    assert place_high(free, 0x200000, above=0, below=1 << 32, align=0x1000) is None


def test_reserved_ranges_are_listed_as_type_2(memory: GuestMemory) -> None:
    ecam = (0xE000_0000, 0xE010_0000)
    entries = memory_map(memory, [ecam])
    assert MemoryMapEntry(0xE000_0000, 0x10_0000, RESERVED) in entries
    assert entries[:-1] == memory_map(memory)
    assert_sorted_disjoint(entries)
