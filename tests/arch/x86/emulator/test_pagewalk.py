"""The page walker against hand-built page tables: every paging mode, the access
rights of SDM Vol. 3A §4.6, #PF error codes (§4.7) and accessed/dirty flags (§4.8)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from fakes import PS, RW, US, XD, P, PageTables

from pyvmm.arch.x86.emulator import (
    Access,
    AccessKind,
    InjectFault,
    PagingContext,
    PagingMode,
    translate,
    walk,
)
from pyvmm.memory import GuestMemory

READ, WRITE, FETCH = AccessKind.READ, AccessKind.WRITE, AccessKind.FETCH
CR0_PG_WP = 0x8001_0001
CR4_PAE, CR4_PSE, CR4_LA57, CR4_SMEP, CR4_SMAP = 0x20, 0x10, 0x1000, 1 << 20, 1 << 21
EFER_LONG_NX = 0xD00
AC = 1 << 18


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    guest = GuestMemory([(0, 16 << 20)])
    yield guest
    guest.close()


def long_context(
    cr3: int,
    *,
    cpl: int = 0,
    cr4: int = CR4_PAE,
    cr0: int = CR0_PG_WP,
    efer: int = EFER_LONG_NX,
    rflags: int = 2,
    maxphyaddr: int = 48,
) -> PagingContext:
    return PagingContext(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer, cpl=cpl, rflags=rflags, maxphyaddr=maxphyaddr)


def fault(context: PagingContext, memory: GuestMemory, linear: int, kind: AccessKind, user: bool) -> int:
    with pytest.raises(InjectFault) as caught:
        walk(context, memory, linear, Access(kind, user))
    assert caught.value.vector == 14 and caught.value.cr2 == linear
    assert caught.value.error_code is not None
    return caught.value.error_code


def test_paging_off_is_identity_truncated_to_32_bits(memory: GuestMemory) -> None:
    context = PagingContext(cr0=1, cr3=0, cr4=0, efer=0, cpl=0, rflags=2)
    assert context.mode is PagingMode.NONE
    assert translate(context, memory, 0x1_0000_1234, Access(WRITE, False)) == 0x1234


def test_four_level_4k_page_sets_accessed_then_dirty(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x7FFF_1234_5000, 0x345000)
    context = long_context(tables.root)
    assert context.mode is PagingMode.LEVEL4
    assert translate(context, memory, 0x7FFF_1234_5ABC, Access(READ, True)) == 0x345ABC
    assert tables.entry(0x7FFF_1234_5000) & 0x60 == 0x20
    pml4e = memory.read_u64(tables.root + ((0x7FFF_1234_5000 >> 39) & 0x1FF) * 8)
    assert pml4e & 0x60 == 0x20  # accessed, never dirty above the leaf
    translate(context, memory, 0x7FFF_1234_5ABC, Access(WRITE, True))
    assert tables.entry(0x7FFF_1234_5000) & 0x60 == 0x60


def test_large_pages(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x4000_0000, 0x20_0000, size=2 << 20)
    tables.map(0x80_0000_0000, 0x4000_0000, size=1 << 30)
    context = long_context(tables.root)
    assert translate(context, memory, 0x401F_FFFF, Access(READ, False)) == 0x3F_FFFF
    assert translate(context, memory, 0x80_1234_5678, Access(READ, False)) == 0x5234_5678


def test_five_level_paging(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000, levels=5)
    linear = 0x00AB_CDEF_1234_5000
    tables.map(linear, 0x777000)
    context = long_context(tables.root, cr4=CR4_PAE | CR4_LA57)
    assert context.mode is PagingMode.LEVEL5
    assert translate(context, memory, linear + 0x10, Access(READ, False)) == 0x777010


@pytest.mark.parametrize(
    ("kind", "user", "expected"),
    [(READ, False, 0), (READ, True, 4), (WRITE, True, 6), (FETCH, True, 0x14), (FETCH, False, 0x10)],
)
def test_not_present_error_codes(memory: GuestMemory, kind: AccessKind, user: bool, expected: int) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x10000, 0x10000)
    assert fault(long_context(tables.root), memory, 0x11000, kind, user) == expected


def test_user_access_to_supervisor_and_read_only_pages(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x10000, 0x10000, P | RW)  # supervisor
    tables.map(0x11000, 0x11000, P | US)  # read-only
    context = long_context(tables.root)
    assert fault(context, memory, 0x10008, READ, True) == 0x5
    assert fault(context, memory, 0x11008, WRITE, True) == 0x7
    assert translate(context, memory, 0x11008, Access(READ, True)) == 0x11008
    assert tables.entry(0x10000) & 0x20 == 0  # a fault sets no accessed flag


def test_user_bit_must_be_set_at_every_level(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x10000, 0x10000, table_flags=P | RW)
    assert fault(long_context(tables.root), memory, 0x10000, READ, True) == 0x5


def test_cr0_wp_governs_supervisor_writes_to_read_only_pages(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x11000, 0x11000, P)
    assert fault(long_context(tables.root), memory, 0x11000, WRITE, False) == 0x3
    no_wp = long_context(tables.root, cr0=0x8000_0001)
    assert translate(no_wp, memory, 0x11000, Access(WRITE, False)) == 0x11000
    assert tables.entry(0x11000) & 0x40  # dirty although read-only


def test_nx_and_reserved_bits(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x10000, 0x10000, P | RW | US | XD)
    tables.map(0x11000, 0x11000 | (1 << 50), P | RW | US)  # beyond MAXPHYADDR 48
    context = long_context(tables.root)
    assert fault(context, memory, 0x10000, FETCH, True) == 0x15
    assert translate(context, memory, 0x10000, Access(READ, True)) == 0x10000
    assert fault(context, memory, 0x11000, READ, True) == 0xD  # P | U | RSVD
    without_nxe = long_context(tables.root, efer=0x500)
    assert fault(without_nxe, memory, 0x10000, READ, False) == 0x9  # XD is reserved: P | RSVD
    assert fault(without_nxe, memory, 0x10000, FETCH, False) == 0x9  # and no I/D without NXE/SMEP


def test_reserved_bits_in_large_page_entries(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x4000_0000, 0x20_0000 | (1 << 13), size=2 << 20)
    assert fault(long_context(tables.root), memory, 0x4000_0000, READ, False) == 0x9


def test_smep_and_smap(memory: GuestMemory) -> None:
    tables = PageTables(memory, 0x100000)
    tables.map(0x10000, 0x10000)  # a user page
    smep = long_context(tables.root, cr4=CR4_PAE | CR4_SMEP)
    assert fault(smep, memory, 0x10000, FETCH, False) == 0x11
    smap = long_context(tables.root, cr4=CR4_PAE | CR4_SMAP)
    assert fault(smap, memory, 0x10000, READ, False) == 0x1
    assert fault(smap, memory, 0x10000, WRITE, False) == 0x3
    with_ac = long_context(tables.root, cr4=CR4_PAE | CR4_SMAP, rflags=2 | AC)
    assert translate(with_ac, memory, 0x10000, Access(WRITE, False)) == 0x10000
    implicit_at_cpl3 = long_context(tables.root, cr4=CR4_PAE | CR4_SMAP, rflags=2 | AC, cpl=3)
    assert fault(implicit_at_cpl3, memory, 0x10000, READ, False) == 0x1


def test_pae_paging(memory: GuestMemory) -> None:
    pdpt, directory, table = 0x100000, 0x101000, 0x102000
    memory.write(pdpt, struct.pack("<4Q", 0, directory | P, 0, 0))
    memory.write(
        directory, struct.pack("<Q", table | P | RW | US) + struct.pack("<Q", 0x60_0000 | P | RW | PS)
    )
    memory.write(table + 8 * 5, struct.pack("<Q", 0xABC000 | P | RW | US | XD))
    context = PagingContext(cr0=CR0_PG_WP, cr3=pdpt, cr4=CR4_PAE, efer=0x800, cpl=3, rflags=2)
    assert context.mode is PagingMode.PAE
    assert translate(context, memory, 0x4000_5123, Access(READ, True)) == 0xABC123
    assert fault(context, memory, 0x4000_5123, FETCH, True) == 0x15
    assert translate(context, memory, 0x4020_0010, Access(READ, False)) == 0x60_0010
    assert fault(context, memory, 0x8000_0000, READ, False) == 0  # PDPTE not present
    assert memory.read_u64(table + 8 * 5) & 0x20


def test_32bit_paging_with_4m_pages(memory: GuestMemory) -> None:
    directory, table = 0x100000, 0x101000
    memory.write_u32(directory + 4 * 1, table | P | RW | US)
    memory.write_u32(table + 4 * 2, 0x55000 | P | US)
    memory.write_u32(directory + 4 * 3, 0x0040_0000 | (0x3 << 13) | P | RW | PS)  # PSE-36: bits 33:32 = 3
    context = PagingContext(cr0=CR0_PG_WP, cr3=directory, cr4=CR4_PSE, efer=0, cpl=3, rflags=2, maxphyaddr=36)
    assert context.mode is PagingMode.BIT32
    assert translate(context, memory, 0x0040_2ABC, Access(READ, True)) == 0x55ABC
    assert fault(context, memory, 0x0040_2ABC, WRITE, True) == 0x7
    assert translate(context, memory, 0x0040_2ABC, Access(FETCH, True)) == 0x55ABC  # no NX here
    assert fault(context, memory, 0x0080_0000, FETCH, True) == 0x4  # not present; no I/D without SMEP
    narrow = PagingContext(cr0=CR0_PG_WP, cr3=directory, cr4=CR4_PSE, efer=0, cpl=0, rflags=2, maxphyaddr=32)
    assert fault(narrow, memory, 0x00C0_0000, READ, False) == 0x9  # PSE-36 bits beyond MAXPHYADDR
    wide = PagingContext(cr0=CR0_PG_WP, cr3=directory, cr4=CR4_PSE, efer=0, cpl=0, rflags=2, maxphyaddr=40)
    assert walk(wide, memory, 0x00C1_2345, Access(READ, False)).physical == 0x3_0041_2345
