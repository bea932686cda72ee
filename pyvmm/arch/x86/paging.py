"""Identity page tables for entering long mode (Intel SDM Vol. 3A §4.5, 4-level paging)."""

from __future__ import annotations

import struct

from pyvmm.arch.x86.layout import IDENTITY_MAP_END, PD_ADDRESS, PDPT_ADDRESS, PML4_ADDRESS, GiB, MiB
from pyvmm.memory import PAGE_SIZE, GuestMemory

PRESENT = 1 << 0
WRITABLE = 1 << 1
PAGE_SIZE_BIT = 1 << 7  # PS: this entry maps a large page

_ENTRIES = 512


def write_identity_map(memory: GuestMemory) -> int:
    """Map [0, IDENTITY_MAP_END) one to one with 2 MiB pages; returns the CR3 value."""
    directories = IDENTITY_MAP_END // GiB
    memory.write(PML4_ADDRESS, struct.pack("<Q", PDPT_ADDRESS | PRESENT | WRITABLE).ljust(PAGE_SIZE, b"\0"))
    pdpt = [PD_ADDRESS + i * PAGE_SIZE | PRESENT | WRITABLE for i in range(directories)]
    memory.write(PDPT_ADDRESS, struct.pack(f"<{_ENTRIES}Q", *pdpt, *[0] * (_ENTRIES - directories)))
    for directory in range(directories):
        base = directory * GiB
        entries = [base + i * 2 * MiB | PRESENT | WRITABLE | PAGE_SIZE_BIT for i in range(_ENTRIES)]
        memory.write(PD_ADDRESS + directory * PAGE_SIZE, struct.pack(f"<{_ENTRIES}Q", *entries))
    return PML4_ADDRESS
