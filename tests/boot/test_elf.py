"""The ELF reader (pyvmm.boot.elf): validation, segment loading, notes."""

from __future__ import annotations

import ctypes

import pytest
from boot.boot_images import ELF32_EHDR, PT_NOTE, Elf, Seg, code, note

from pyvmm.boot.elf import (
    Elf32Ehdr,
    Elf32Phdr,
    Elf64Ehdr,
    Elf64Phdr,
    ElfClass,
    ElfNote,
    Machine,
    elf_notes,
    load_segments,
    parse_elf,
)
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory


def test_structure_sizes_match_the_abi() -> None:
    assert [ctypes.sizeof(t) for t in (Elf32Ehdr, Elf64Ehdr, Elf32Phdr, Elf64Phdr)] == [52, 64, 32, 56]
    assert Elf64Phdr.p_offset.offset == 8
    assert Elf32Phdr.p_paddr.offset == 12


@pytest.mark.parametrize("bits", [32, 64])
def test_parse(bits: int) -> None:
    image = Elf([Seg(0x100000, b"abc", memsz=0x10), Seg(0x200000, b"de")], entry=0x100004, bits=bits)
    data = image.build()
    elf = parse_elf(data, "k")
    assert elf.elf_class is (ElfClass.ELF32 if bits == 32 else ElfClass.ELF64)
    assert elf.machine is (Machine.I386 if bits == 32 else Machine.X86_64)
    assert elf.entry == 0x100004
    assert [(s.paddr, s.offset, s.filesz, s.memsz) for s in elf.loadable()] == [
        (0x100000, image.offsets[0], 3, 0x10),
        (0x200000, image.offsets[1], 2, 2),
    ]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (Elf([], 0, ident=b"\x7fELG\x01\x01\x01"), "not an ELF file"),
        (Elf([], 0, ident=b"\x7fELF\x03\x01\x01"), "unknown ELF class 3"),
        (Elf([], 0, ident=b"\x7fELF\x01\x02\x01"), "not little-endian"),
        (Elf([], 0, ident=b"\x7fELF\x01\x01\x02"), "ELF version 2"),
        (Elf([], 0, bits=32, machine=62), "ELF machine 62 is not I386"),
        (Elf([], 0, bits=64, machine=3), "ELF machine 3 is not X86_64"),
        (Elf([], 0, bits=64, machine=183), "ELF machine 183"),
    ],
)
def test_bad_identification(image: Elf, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        parse_elf(image.build(), "kernel.elf")


def test_truncated_header() -> None:
    data = Elf([Seg(0x100000, b"x")], 0).build()
    with pytest.raises(ImageError, match=r"kernel\.elf: truncated ELF header"):
        parse_elf(data[:40], "kernel.elf")


def test_program_headers_past_the_end() -> None:
    data = Elf([Seg(0x100000, b"x"), Seg(0x200000, b"y")], 0).build()
    with pytest.raises(ImageError, match="truncated: 2 program headers"):
        parse_elf(data[: ELF32_EHDR.size + 40], "k")


def test_segment_past_the_end() -> None:
    data = Elf([Seg(0x100000, code(0x100))], 0).build()
    with pytest.raises(ImageError, match=r"truncated: segment 0 needs file bytes"):
        parse_elf(data[:-1], "k")


def test_filesz_above_memsz() -> None:
    data = Elf([Seg(0x100000, code(0x100), memsz=0x80)], 0).build()
    with pytest.raises(ImageError, match="segment 0 has more file bytes"):
        parse_elf(data, "k")


def test_load_copies_and_zeroes_bss(memory: GuestMemory) -> None:
    text = code(0x123)
    image = Elf([Seg(0x100000, text, memsz=0x2000), Seg(0x300000, b"\x01\x02")], 0, bits=64)
    data = image.build()
    memory.fill(0x100000, 0x3000, 0xAA)  # bss must be zeroed, not left as found
    loaded = load_segments(memory, data, parse_elf(data, "k").loadable(), "k", ())
    assert memory.read(0x100000, len(text)) == text
    assert memory.read(0x100000 + len(text), 0x2000 - len(text)) == bytes(0x2000 - len(text))
    assert memory.read(0x100000 + 0x2000, 1) == b"\xaa"  # and nothing past it
    assert memory.read(0x300000, 2) == b"\x01\x02"
    assert [(start, end) for start, end, _ in loaded] == [(0x100000, 0x102000), (0x300000, 0x300002)]


def test_segment_outside_ram(memory: GuestMemory) -> None:
    data = Elf([Seg(0x100000, b"ok"), Seg(0x3FFF000, b"x", memsz=0x2000)], 0).build()
    with pytest.raises(
        ImageError, match=r"k: segment 1 \[0x3fff000, 0x4001000\) is outside guest RAM \(64 MiB"
    ):
        load_segments(memory, data, parse_elf(data, "k").loadable(), "k", ())
    assert memory.read(0x100000, 2) == b"\0\0"  # nothing written when one segment is bad


def test_segment_in_the_bios_hole(memory: GuestMemory) -> None:
    data = Elf([Seg(0xA0000, b"vga")], 0).build()
    with pytest.raises(ImageError, match="outside guest RAM"):
        load_segments(memory, data, parse_elf(data, "k").loadable(), "k", ())


def test_segment_over_a_reservation(memory: GuestMemory) -> None:
    data = Elf([Seg(0x7800, code(0x1000))], 0).build()
    with pytest.raises(ImageError, match=r"segment 0 \[0x7800, 0x8800\) overlaps \[0x7000, 0x8000\), zp"):
        load_segments(memory, data, parse_elf(data, "k").loadable(), "k", [(0x7000, 0x8000, "zp")])


def test_no_loadable_segments(memory: GuestMemory) -> None:
    data = Elf([Seg(0, note(b"X", 1, b""), type=PT_NOTE)], 0).build()
    with pytest.raises(ImageError, match="no loadable segments"):
        load_segments(memory, data, parse_elf(data, "k").loadable(), "k", ())


def test_notes() -> None:
    pvh = (0x1000000).to_bytes(4, "little")
    notes = note(b"Xen", 18, pvh) + note(b"GNU", 3, b"\x12\x34\x56")
    gnu_property = note(b"GNU", 5, bytes(16), align=8)
    image = Elf(
        [Seg(0x100000, b"code"), Seg(0, notes, type=PT_NOTE), Seg(0, gnu_property, type=PT_NOTE, align=8)],
        0,
        bits=64,
    )
    data = image.build()
    assert elf_notes(data, parse_elf(data, "k"), "k") == [
        ElfNote("Xen", 18, pvh),
        ElfNote("GNU", 3, b"\x12\x34\x56"),
        ElfNote("GNU", 5, bytes(16)),
    ]


def test_truncated_note() -> None:
    bad = note(b"Xen", 18, bytes(8))[:-4]
    data = Elf([Seg(0x100000, b"code"), Seg(0, bad, type=PT_NOTE)], 0, bits=64).build()
    with pytest.raises(ImageError, match="truncated: note at offset"):
        elf_notes(data, parse_elf(data, "k"), "k")


def test_program_header_entry_too_small() -> None:
    data = bytearray(Elf([Seg(0x100000, b"x")], 0).build())
    data[42:44] = (16).to_bytes(2, "little")  # e_phentsize
    with pytest.raises(ImageError, match="program header size 16 is smaller than 32"):
        parse_elf(bytes(data), "k")


def test_garbage_after_the_last_note() -> None:
    data = Elf([Seg(0x100000, b"code"), Seg(0, note(b"X", 1, b"") + b"\1\2", type=PT_NOTE)], 0).build()
    with pytest.raises(ImageError, match="truncated note at offset"):
        elf_notes(data, parse_elf(data, "k"), "k")
