"""Reading a bzImage's setup header and unpacking its payload, on synthetic images
laid out as Documentation/arch/x86/boot.rst describes."""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct

import pytest

from pyvmm.images import kernel_image as ki

PVH_ENTRY = 0x1000850


def elf_with_pvh_note(entry: int | None = PVH_ENTRY) -> bytes:
    """A minimal ELF64: header, a PT_NOTE and a PT_LOAD program header, the notes, code."""
    note = b""
    if entry is not None:
        note = struct.pack("<III", 4, 4, ki.XEN_ELFNOTE_PHYS32_ENTRY) + b"Xen\0" + struct.pack("<I", entry)
    other_note = struct.pack("<III", 4, 4, 1) + b"GNU\0" + b"\0" * 4  # skipped over
    notes = other_note + note
    code = b"\x90" * 100
    phoff, note_offset = 64, 64 + 2 * 56
    code_offset = note_offset + len(notes)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, phoff, 0, 0, 64, 56, 2, 64, 0, 0
    )
    note_phdr = struct.pack("<IIQQQQQQ", 4, 4, note_offset, 0, 0, len(notes), len(notes), 4)
    load_phdr = struct.pack("<IIQQQQQQ", 1, 5, code_offset, 0x1000000, 0x1000000, len(code), len(code), 16)
    return header + note_phdr + load_phdr + notes + code


def bzimage(payload: bytes, version: int = 0x020F, setup_sects: int = 3) -> bytes:
    setup = bytearray((setup_sects + 1) * ki.SECTOR)
    setup[ki.SETUP_SECTS] = setup_sects
    struct.pack_into("<H", setup, ki.BOOT_FLAG, ki.BOOT_FLAG_VALUE)
    setup[ki.HEADER_MAGIC:ki.HEADER_MAGIC + 4] = ki.HDRS
    struct.pack_into("<H", setup, ki.VERSION, version)
    version_string = b"6.1.0-test (pyvmm) #1\0"
    string_at = 0x400
    setup[string_at:string_at + len(version_string)] = version_string
    struct.pack_into("<H", setup, ki.KERNEL_VERSION, string_at - ki.SECTOR)
    setup[ki.LOADFLAGS] = 1
    payload_offset = 0x40  # the decompressor's own code comes first
    struct.pack_into("<II", setup, ki.PAYLOAD_OFFSET, payload_offset, len(payload))
    return bytes(setup) + b"\xcc" * payload_offset + payload + b"\xcc" * 32


def with_size(compressed: bytes, size: int) -> bytes:
    return compressed + struct.pack("<I", size)  # what the kernel build appends


def test_the_setup_header_is_read() -> None:
    elf = elf_with_pvh_note()
    image = bzimage(gzip.compress(elf))
    header = ki.read_setup_header(image)
    assert header.protocol_text == "2.15" and header.setup_sects == 3
    assert header.kernel_version == "6.1.0-test (pyvmm) #1"
    assert ki.describe(image)["compression"] == "gzip"


@pytest.mark.parametrize("pack", ["gzip", "xz"])
def test_the_payload_unpacks_to_the_elf(pack: str) -> None:
    elf = elf_with_pvh_note()
    payload = gzip.compress(elf) if pack == "gzip" else with_size(lzma.compress(elf), len(elf))
    image = bzimage(payload)
    assert ki.compression_of(ki.payload_of(image)) == pack
    assert ki.decompress_payload(ki.payload_of(image)) == elf


def test_lz4_payloads_lose_their_size_trailer_before_unpacking() -> None:
    if shutil.which("lz4") is None:
        pytest.skip("lz4 is not installed (Debian package lz4)")
    import subprocess

    elf = elf_with_pvh_note()
    legacy = subprocess.run(["lz4", "-l", "-c"], input=elf, capture_output=True, check=True).stdout
    image = bzimage(with_size(legacy, len(elf)))
    assert ki.compression_of(ki.payload_of(image)) == "lz4"
    assert ki.decompress_payload(ki.payload_of(image)) == elf


def test_a_wrong_size_trailer_is_an_error() -> None:
    elf = elf_with_pvh_note()
    with pytest.raises(ValueError, match="unpacked to"):
        ki.decompress_payload(with_size(lzma.compress(elf), len(elf) + 1))


def test_the_pvh_note_and_the_elf_extent() -> None:
    elf = elf_with_pvh_note()
    assert ki.pvh_entry(elf) == PVH_ENTRY
    assert ki.pvh_entry(elf_with_pvh_note(None)) is None
    assert ki.elf_extent(elf + b"relocations") == len(elf)


def test_what_is_not_a_bzimage_is_refused() -> None:
    with pytest.raises(ValueError, match="HdrS"):
        ki.read_setup_header(b"\x7fELF" + bytes(4096))
    with pytest.raises(ValueError, match=r"older than 2\.08"):
        ki.read_setup_header(bzimage(b"x", version=0x0204))
