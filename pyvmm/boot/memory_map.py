"""The guest's physical memory map, as a PC BIOS reports it (ACPI 6.5 §15, "System
Address Map Interfaces", INT 15h E820h), and where loaders may put things in it.

Below 1 MiB the map follows the PC: conventional RAM up to the EBDA at `LOW_RAM_END`,
the EBDA reserved, the VGA window and option ROMs [0xA0000, 0xE0000) left out, the
BIOS area [0xE0000, 1 MiB) reserved. Every RAM range above 1 MiB is usable RAM.
Both the Multiboot memory map and the Linux e820 table are built from this one list.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from pyvmm.arch.x86.layout import BIOS_AREA_START, HIGH_MEMORY_START, LOW_RAM_END
from pyvmm.memory import GuestMemory

# The system BIOS area of a PC: the upper 128 KiB below 1 MiB (ROM, reported reserved).
BIOS_ROM_START = 0xE0000

Range = tuple[int, int]  # [start, end)


class E820Type(enum.IntEnum):
    """Address range types (ACPI 6.5 §15, Table 15.1)."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4


@dataclass(frozen=True)
class MemoryMapEntry:
    addr: int
    size: int
    kind: E820Type

    @property
    def end(self) -> int:
        return self.addr + self.size


_LOW_RESERVED = (
    MemoryMapEntry(LOW_RAM_END, BIOS_AREA_START - LOW_RAM_END, E820Type.RESERVED),  # EBDA
    MemoryMapEntry(BIOS_ROM_START, HIGH_MEMORY_START - BIOS_ROM_START, E820Type.RESERVED),
)


def memory_map(memory: GuestMemory, reserved: Iterable[Range] = ()) -> list[MemoryMapEntry]:
    """The map every loader hands to the guest: sorted, non-overlapping entries.

    RAM between `LOW_RAM_END` and 1 MiB is left out: that is where a PC has its
    EBDA, video memory and ROMs, which the reserved entries describe. `reserved`
    adds [start, end) ranges outside RAM the guest must leave alone, as type 2 (the
    PCI ECAM window: PCI Firmware Specification 3.2 §4.1.2 asks for it to be
    reserved, and Linux checks the E820 map for it).
    """
    entries = list(_LOW_RESERVED)
    for start, end in reserved:
        entries.append(MemoryMapEntry(start, end - start, E820Type.RESERVED))
    for start, end in memory.ram_ranges():
        for lo, hi in ((start, min(end, LOW_RAM_END)), (max(start, HIGH_MEMORY_START), end)):
            if lo < hi:
                entries.append(MemoryMapEntry(lo, hi - lo, E820Type.RAM))
    return sorted(entries, key=lambda entry: entry.addr)


def describe_ram(memory: GuestMemory) -> str:
    """Guest RAM for error messages: its size and the usable ranges."""
    ranges = ", ".join(f"[{lo:#x}, {hi:#x})" for lo, hi in usable_ram(memory_map(memory)))
    return f"{memory.size >> 20} MiB of RAM, usable {ranges}"


def usable_ram(entries: Iterable[MemoryMapEntry]) -> list[Range]:
    """The RAM entries of a memory map as [start, end) ranges."""
    return [(entry.addr, entry.end) for entry in entries if entry.kind is E820Type.RAM]


def inside(ranges: Iterable[Range], start: int, size: int) -> bool:
    """True when [start, start + size) lies inside one of `ranges`."""
    return any(lo <= start and start + size <= hi for lo, hi in ranges)


def overlaps(a: Range, b: Range) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def subtract(ranges: Iterable[Range], taken: Iterable[Range]) -> list[Range]:
    """`ranges` without any address in `taken`."""
    free = sorted(ranges)
    for t_lo, t_hi in taken:
        pieces: list[Range] = []
        for lo, hi in free:
            if not overlaps((lo, hi), (t_lo, t_hi)):
                pieces.append((lo, hi))
                continue
            if lo < t_lo:
                pieces.append((lo, t_lo))
            if t_hi < hi:
                pieces.append((t_hi, hi))
        free = pieces
    return free


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def align_down(value: int, alignment: int) -> int:
    return value // alignment * alignment


def place_low(free: Iterable[Range], size: int, *, above: int, below: int, align: int) -> int | None:
    """The lowest `align`-ed address >= `above` where `size` bytes fit in one free
    range and end at or below `below`; None when there is none."""
    for lo, hi in sorted(free):
        start = align_up(max(lo, above), align)
        if start + size <= min(hi, below):
            return start
    return None


def place_high(free: Iterable[Range], size: int, *, above: int, below: int, align: int) -> int | None:
    """The highest `align`-ed address >= `above` where `size` bytes fit in one free
    range and end at or below `below`; None when there is none."""
    for lo, hi in sorted(free, reverse=True):
        start = align_down(min(hi, below) - size, align)
        if start >= max(lo, above):
            return start
    return None
