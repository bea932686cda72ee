"""Format detection and file handling of `pyvmm.boot.load`, flat binaries, the
never-anything-but-ImageError property, and the real test guests."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from boot.boot_images import ELF32_PHDR, ELF64_PHDR, Elf, Seg, aout_kernel, code, multiboot_elf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.arch.x86.layout import MiB
from pyvmm.boot import BootImages, CpuMode, load
from pyvmm.boot.elf import elf_notes, parse_elf
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

# A boot sector as a PC BIOS takes one: 512 bytes ending in 55 AA (code: hlt).
BOOT_SECTOR = b"\xf4" + bytes(509) + b"\x55\xaa"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_flat_binary(memory: GuestMemory, tmp_path: Path) -> None:
    data = code(0x200)
    entry = load(memory, BootImages(write(tmp_path, "boot.bin", data), kernel_format="flat"))
    assert entry.mode is CpuMode.REAL16
    assert entry.rip == 0x7C00
    assert entry.registers == {"rdx": 0x80, "rsp": 0x7C00}
    assert memory.read(0x7C00, len(data)) == data


def test_largest_flat_binary(memory: GuestMemory, tmp_path: Path) -> None:
    data = code(0x98400)
    load(memory, BootImages(write(tmp_path, "big.bin", data), kernel_format="flat"))
    assert memory.read(0x9FFFF, 1) == data[-1:]


def test_flat_binary_too_big(memory: GuestMemory, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"big.bin: flat binary is 0x98401 bytes; at most 0x98400 fit"):
        load(memory, BootImages(write(tmp_path, "big.bin", bytes(0x98401)), kernel_format="flat"))


def test_flat_binary_beyond_small_ram(tmp_path: Path) -> None:
    memory = GuestMemory([(0, 0x8000)])
    try:
        with pytest.raises(ImageError, match=r"flat binary needs RAM up to 0x8c00"):
            load(memory, BootImages(write(tmp_path, "b.bin", bytes(0x1000)), kernel_format="flat"))
    finally:
        memory.close()


def test_flat_binary_with_initrd(memory: GuestMemory, tmp_path: Path) -> None:
    images = BootImages(write(tmp_path, "b.bin", b"\xf4"), write(tmp_path, "rd", b"x"), kernel_format="flat")
    with pytest.raises(ImageError, match=r"b.bin: a flat binary takes no initrd"):
        load(memory, images)


def test_detection(memory: GuestMemory, tmp_path: Path) -> None:
    elf64 = Elf([Seg(0x200000, b"\x90")], entry=0x200000, bits=64).build()
    assert (
        load(memory, BootImages(write(tmp_path, "mb", multiboot_elf().build()))).mode is CpuMode.PROTECTED32
    )
    assert load(memory, BootImages(write(tmp_path, "aout", aout_kernel()))).mode is CpuMode.PROTECTED32
    assert load(memory, BootImages(write(tmp_path, "k64", elf64))).mode is CpuMode.LONG64
    assert load(memory, BootImages(write(tmp_path, "mbr", BOOT_SECTOR))).mode is CpuMode.REAL16
    assert (
        load(memory, BootImages(write(tmp_path, "flat", b"\xf4"), kernel_format="flat")).mode
        is CpuMode.REAL16
    )


def test_boot_sector_boots_without_a_format(memory: GuestMemory, tmp_path: Path) -> None:
    entry = load(memory, BootImages(write(tmp_path, "mbr.img", BOOT_SECTOR)))
    assert entry.mode is CpuMode.REAL16 and entry.rip == 0x7C00
    assert memory.read(0x7C00, 512) == BOOT_SECTOR


@pytest.mark.parametrize(
    "data",
    [
        b"pyvmm\n",  # a text file, as /etc/hostname
        BOOT_SECTOR[:-1] + b"\x00",  # 512 bytes without the signature
        BOOT_SECTOR + b"\x90",  # the signature at 510, but not a 512-byte image
        BOOT_SECTOR[:-2] + b"\xaa\x55",  # the signature byte-swapped
        code(0x1000),
    ],
)
def test_unrecognised_file_is_refused(memory: GuestMemory, tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "hostname", data)
    expected = (
        f"^{path}: not a kernel pyvmm recognises \\({len(data)} bytes, starting {data[:8].hex(' ')}\\): "
        "expected a Linux bzImage, a Multiboot kernel, an x86-64 ELF kernel or a 512-byte boot sector "
        "ending in 55 AA; to boot a raw real-mode binary say --kernel-format flat$"
    )
    with pytest.raises(ImageError, match=expected):
        load(memory, BootImages(path))
    assert not any(memory.read(0x7C00, len(data)))  # nothing was loaded
    assert load(memory, BootImages(path, kernel_format="flat")).mode is CpuMode.REAL16


def test_flat_format_skips_detection(memory: GuestMemory, tmp_path: Path) -> None:
    """A raw binary may hold any bytes, a Multiboot header's or ELF's included."""
    for data in (multiboot_elf().build(), Elf([Seg(0x200000, b"\x90")], 0x200000, bits=64).build()):
        entry = load(memory, BootImages(write(tmp_path, "raw.bin", data), kernel_format="flat"))
        assert entry.mode is CpuMode.REAL16
        assert memory.read(0x7C00, len(data)) == data


def test_boot_sector_takes_no_initrd(memory: GuestMemory, tmp_path: Path) -> None:
    images = BootImages(write(tmp_path, "mbr.img", BOOT_SECTOR), write(tmp_path, "rd", b"x"))
    with pytest.raises(ImageError, match=r"mbr.img: a flat binary takes no initrd"):
        load(memory, images)


def test_elf32_without_multiboot_header(memory: GuestMemory, tmp_path: Path) -> None:
    path = write(tmp_path, "k32.elf", Elf([Seg(0x100000, b"\x90")], entry=0x100000).build())
    with pytest.raises(ImageError, match=r"k32.elf: 32-bit ELF without a Multiboot header is not bootable"):
        load(memory, BootImages(path))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (Elf([], 0, ident=b"\x7fELF\x07\x01\x01"), "unknown ELF class 7"),
        (Elf([Seg(0x200000, b"x")], 0x200000, bits=64, machine=183), "ELF machine 183 is not X86_64"),
        (Elf([Seg(0x200000, b"x")], 0x200000, bits=64, ident=b"\x7fELF\x02\x02\x01"), "not little-endian"),
    ],
)
def test_bad_elf_files(memory: GuestMemory, tmp_path: Path, image: Elf, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load(memory, BootImages(write(tmp_path, "bad.elf", image.build())))


def test_missing_kernel(memory: GuestMemory, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=f"^{tmp_path}/nope: no such kernel file$"):
        load(memory, BootImages(tmp_path / "nope"))


def test_kernel_is_a_directory(memory: GuestMemory, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=f"^{tmp_path}: kernel is a directory"):
        load(memory, BootImages(tmp_path))


def test_empty_kernel(memory: GuestMemory, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"empty.bin: kernel file is empty"):
        load(memory, BootImages(write(tmp_path, "empty.bin", b"")))


def test_missing_initrd(memory: GuestMemory, tmp_path: Path) -> None:
    images = BootImages(write(tmp_path, "mb", multiboot_elf().build()), tmp_path / "gone.img")
    with pytest.raises(ImageError, match=r"gone.img: no such initrd file"):
        load(memory, images)


# The property: whatever the kernel file holds, loading it either works or raises
# ImageError. Seeds are valid images of each format, then mutated and truncated,
# so that the parsers see plausible headers with wrong fields, not only noise.
def _seeds() -> list[bytes]:
    notes = Elf(
        [Seg(0x200000, b"\x90"), Seg(0, b"\4\0\0\0\4\0\0\0\x12\0\0\0Xen\0abcd", type=4)], 0x200000, 64
    )
    return [multiboot_elf().build(), aout_kernel(), notes.build(), code(64)]


_HEADER_BYTES = 64 + 3 * max(ELF32_PHDR.size, ELF64_PHDR.size) + 64


@st.composite
def kernel_files(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=4096))
    data = bytearray(draw(st.sampled_from(_seeds())))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, min(len(data), _HEADER_BYTES) - 1))
        width = draw(st.sampled_from([1, 2, 4, 8]))
        value = (
            draw(st.sampled_from([0, 1, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**64 - 1]))
            if draw(st.booleans())
            else None
        )
        chunk = (
            (value & (2 ** (8 * width) - 1)).to_bytes(width, "little")
            if value is not None
            else draw(st.binary(min_size=width, max_size=width))
        )
        data[at : at + width] = chunk
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=kernel_files())
def test_any_kernel_file_loads_or_raises_image_error(
    data: bytes, memory: GuestMemory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzzed-kernel"
    path.write_bytes(data)
    try:
        load(memory, BootImages(path, cmdline="console=ttyS0"))
    except ImageError as exc:
        assert str(exc) and "\n" not in str(exc)
    try:
        elf_notes(data, parse_elf(data, "k"), "k")
    except ImageError:
        pass


def test_real_guests(memory: GuestMemory, guests: Path) -> None:
    hello = (guests / "hello.elf").read_bytes()
    entry = load(memory, BootImages(guests / "hello.elf", cmdline="x"))
    assert entry.mode is CpuMode.PROTECTED32
    assert entry.rip == struct.unpack_from("<I", hello, 24)[0]
    assert entry.registers["rax"] == 0x2BADB002
    _, offset, _, paddr, filesz, _, _, _ = ELF32_PHDR.unpack_from(
        hello, struct.unpack_from("<I", hello, 28)[0]
    )
    assert memory.read(paddr, filesz) == hello[offset : offset + filesz]
    assert entry.registers["rbx"] >= max(end for start, end, what in entry.loaded if "segment" in what)

    long64 = (guests / "long64.elf").read_bytes()
    fresh = GuestMemory([(0, 64 * MiB)])
    try:
        entry = load(fresh, BootImages(guests / "long64.elf"))
        assert entry.mode is CpuMode.LONG64
        assert entry.rip == struct.unpack_from("<Q", long64, 24)[0]
        assert entry.registers["rsi"] == 0x7000
        phoff = struct.unpack_from("<Q", long64, 32)[0]
        _, _, offset, _, paddr, filesz, _, _ = ELF64_PHDR.unpack_from(long64, phoff)
        assert fresh.read(paddr, filesz) == long64[offset : offset + filesz]
        assert fresh.read_u16(0x7000 + 0x1FE) == 0xAA55
    finally:
        fresh.close()


def test_flat_loader_refuses_empty_data(memory: GuestMemory) -> None:
    from pyvmm.boot.flat import load_flat

    with pytest.raises(ImageError, match=r"b\.bin: flat binary is empty"):
        load_flat(memory, b"", "b.bin")
