"""Where a Linux initrd goes: as high as it fits under the kernel's limit, out of the
kernel's way (boot.rst, "initrd_addr_max": loaders put the ramdisk near the top of
the memory the kernel allows), page-aligned."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pyvmm.arch.x86.layout import HIGH_MEMORY_START, GiB, MiB
from pyvmm.boot.memory_map import Range, describe_ram, memory_map, place_high, subtract, usable_ram
from pyvmm.errors import ImageError
from pyvmm.memory import PAGE_SIZE, GuestMemory


def describe_address(address: int) -> str:
    for unit, text in ((GiB, "GiB"), (MiB, "MiB")):
        if address and address % unit == 0:
            return f"{address // unit} {text}"
    return f"{address:#x}"


def load_initrd(
    memory: GuestMemory, initrd: bytes, path: Path | None, taken: Iterable[Range], limit: int
) -> tuple[int, int]:
    """Write the initrd at the highest page in free RAM above 1 MiB that keeps it
    below `limit` and clear of `taken`; returns (address, size)."""
    free = subtract(usable_ram(memory_map(memory)), taken)
    address = place_high(free, len(initrd), above=HIGH_MEMORY_START, below=limit, align=PAGE_SIZE)
    if address is None:
        raise ImageError(
            f"{path}: no room for {len(initrd):#x} bytes of initrd between 1 MiB and "
            f"{describe_address(limit)} beside the kernel ({describe_ram(memory)})"
        )
    memory.write(address, initrd)
    return address, len(initrd)
