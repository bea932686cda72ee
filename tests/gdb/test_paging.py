"""Guest-virtual memory for the debugger, through page tables the test writes into a
GuestMemory: every paging mode (Intel SDM Vol. 3A chapter 4), ranges across pages
that are not contiguous in RAM, protections a debugger ignores, and refusals."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from pyvmm.gdb.paging import AddressSpace, TranslationError
from pyvmm.kvm.x86 import kvm_sregs
from pyvmm.memory import GuestMemory

P, RW, US, ACCESSED_DIRTY, PS = 1, 2, 4, 0x60, 0x80
CR0_PE_PG_WP = 0x8001_0001
CR4_PSE, CR4_PAE, CR4_LA57, CR4_SMEP, CR4_SMAP = 0x10, 0x20, 0x1000, 1 << 20, 1 << 21
EFER_LME_LMA_NXE = 0xD00
KERNEL = 0xFFFF_8000_0000_0000


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    guest = GuestMemory([(0, 8 << 20)])
    yield guest
    guest.close()


class Tables:
    """Page tables built from `base` up: `levels` = (shift, entry width) from the root."""

    def __init__(self, memory: GuestMemory, levels: list[tuple[int, int]], base: int = 0x10000) -> None:
        self.memory, self.levels, self.next = memory, levels, base
        self.root = self._page()

    def _page(self) -> int:
        page, self.next = self.next, self.next + 0x1000
        self.memory.fill(page, 0x1000)
        return page

    def map(self, linear: int, physical: int, flags: int = P | RW, *, top_flags: int = P | RW | US) -> None:
        table = self.root
        for depth, (shift, width) in enumerate(self.levels):
            index_bits = 9 if width == 8 else 10
            entry_address = table + ((linear >> shift) & ((1 << index_bits) - 1)) * width
            if depth == 0 and self.levels[0][0] == 30 and width == 8:
                entry_address = table + ((linear >> 30) & 3) * 8  # PAE: four PDPTEs at CR3
            fmt = "<Q" if width == 8 else "<I"
            if shift == 12:
                self.memory.write(entry_address, struct.pack(fmt, physical | flags))
                return
            (entry,) = struct.unpack(fmt, self.memory.read(entry_address, width))
            if not entry & P:
                entry = self._page() | top_flags
                self.memory.write(entry_address, struct.pack(fmt, entry))
            table = entry & ~0xFFF


def sregs(cr3: int, cr4: int, *, efer: int = 0, cr0: int = CR0_PE_PG_WP) -> kvm_sregs:
    return kvm_sregs(cr0=cr0, cr3=cr3, cr4=cr4 | CR4_SMEP | CR4_SMAP, efer=efer)


Levels = list[tuple[int, int]]
LEVEL4: Levels = [(39, 8), (30, 8), (21, 8), (12, 8)]
LEVEL5 = [(48, 8), *LEVEL4]


@pytest.mark.parametrize(("levels", "cr4"), [(LEVEL4, CR4_PAE), (LEVEL5, CR4_PAE | CR4_LA57)])
def test_long_mode_ranges_across_scattered_pages(memory: GuestMemory, levels: Levels, cr4: int) -> None:
    tables = Tables(memory, levels)
    tables.map(KERNEL, 0x300000, P)  # supervisor, read-only: the debugger reads and writes it
    tables.map(KERNEL + 0x1000, 0x200000, P | RW | US)
    memory.write(0x300FF8, b"ABCDEFGH")
    memory.write(0x200000, b"IJKLMNOP")
    space = AddressSpace.of(sregs(tables.root, cr4, efer=EFER_LME_LMA_NXE), memory)
    assert space.read(KERNEL + 0xFF8, 16) == b"ABCDEFGHIJKLMNOP"
    space.write(KERNEL + 0xFFC, b"wxyz1234")
    assert memory.read(0x300FFC, 4) == b"wxyz" and memory.read(0x200000, 4) == b"1234"
    assert space.translate(KERNEL + 0x1ABC) == 0x200ABC
    leaf = memory.read_u64(tables.next - 0x1000)  # the last page table
    assert not leaf & ACCESSED_DIRTY  # a debugger's look leaves no trace in the tables


def test_pae_paging(memory: GuestMemory) -> None:
    tables = Tables(memory, [(30, 8), (21, 8), (12, 8)])
    # PDPTEs have no R/W or U/S bits (reserved in PAE mode): the root entries get P only
    tables.map(0xC000_0000, 0x400000, P | RW, top_flags=P)
    memory.write(0x400010, b"pae!")
    space = AddressSpace.of(sregs(tables.root, CR4_PAE), memory)
    assert space.read(0xC000_0010, 4) == b"pae!"


def test_32bit_paging_with_a_4mib_page(memory: GuestMemory) -> None:
    tables = Tables(memory, [(22, 4), (12, 4)])
    tables.map(0x8000_1000, 0x500000)
    memory.write_u32(tables.root + (0x4000_0000 >> 22) * 4, 0x400000 | P | PS)  # 4 MiB at 1 GiB
    memory.write(0x400123, b"big")
    memory.write(0x500004, b"small")
    space = AddressSpace.of(sregs(tables.root, CR4_PSE), memory)
    assert space.read(0x4000_0123, 3) == b"big"
    assert space.read(0x8000_1004, 5) == b"small"


def test_paging_off_is_physical(memory: GuestMemory) -> None:
    memory.write(0x7C00, b"\xeb\xfe")
    space = AddressSpace.of(kvm_sregs(cr0=0), memory)
    assert space.read(0x7C00, 2) == b"\xeb\xfe"


def test_refusals_touch_nothing(memory: GuestMemory) -> None:
    tables = Tables(memory, LEVEL4)
    tables.map(KERNEL, 0x300000)
    tables.map(KERNEL + 0x2000, 0x7FF000 + 0x10000)  # a page past the end of RAM
    space = AddressSpace.of(sregs(tables.root, CR4_PAE, efer=EFER_LME_LMA_NXE), memory)
    memory.write(0x300FFE, b"..")
    with pytest.raises(TranslationError, match="not mapped"):
        space.write(KERNEL + 0xFFE, b"abcd")  # the second page is not mapped
    assert memory.read(0x300FFE, 2) == b".."
    with pytest.raises(TranslationError, match="outside guest RAM"):
        space.read(KERNEL + 0x2000, 1)
    with pytest.raises(TranslationError):
        space.read(0xFFFF_FFFF_FFFF_FFF0, 0x20)  # wraps past 2^64
    broken = AddressSpace.of(sregs(0x7FF_F000_0000, CR4_PAE, efer=EFER_LME_LMA_NXE), memory)
    with pytest.raises(TranslationError):
        broken.read(KERNEL, 1)  # the tables themselves are outside RAM
