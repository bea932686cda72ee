"""`kernel_decompress="guest"`: the bzImage's protected-mode part loaded whole and
entered at its 64-bit entry with a zero page copied from its setup header
(boot.rst, "64-bit Boot Protocol", "Sample Boot Configuration")."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from boot.linux_images import KERNEL_PADDR, bzimage, header_bytes

from pyvmm.arch.x86.layout import CMDLINE_ADDRESS, ZERO_PAGE_ADDRESS, MiB
from pyvmm.boot import BootImages, CpuMode, load
from pyvmm.boot.memory_map import memory_map
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

ZP = ZERO_PAGE_ADDRESS
SETUP = 5 * 512  # setup_sects 4 plus the boot sector

# Fields a boot loader writes (boot.rst "write"/"modify"): offset -> size.
LOADER_FIELDS = {
    0x210: 1,  # type_of_loader
    0x211: 1,  # loadflags
    0x214: 4,  # code32_start
    0x218: 4,  # ramdisk_image
    0x21C: 4,  # ramdisk_size
    0x224: 2,  # heap_end_ptr
    0x228: 4,  # cmd_line_ptr
}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def guest(tmp_path: Path, raw: bytes, initrd: bytes | None = None, **kwargs: object) -> BootImages:
    rd = write(tmp_path, "rd", initrd) if initrd is not None else None
    return BootImages(write(tmp_path, "bzImage", raw), rd, kernel_decompress="guest", **kwargs)  # type: ignore[arg-type]


def test_loaded_at_pref_address(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage()
    ramdisk = b"cpio" * 1000
    entry = load(memory, guest(tmp_path, raw, ramdisk, cmdline="console=ttyS0", rsdp_address=0xF0000))
    assert entry.mode is CpuMode.LONG64
    assert entry.rip == KERNEL_PADDR + 0x200
    assert entry.registers == {"rsi": ZP}
    assert memory.read(KERNEL_PADDR, len(raw) - SETUP) == raw[SETUP:]
    assert "unpacked by the guest" in entry.description

    page = memory.read(ZP, 4096)
    copied = header_bytes(raw)
    loader_bytes = {offset + i for offset, size in LOADER_FIELDS.items() for i in range(size)}
    for offset in range(0x1F1, 0x1F1 + len(copied)):
        if offset not in loader_bytes:
            assert page[offset] == copied[offset - 0x1F1], f"setup header byte {offset:#x}"
    assert page[0x210] == 0xFF
    assert page[0x211] == 0x81  # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack_from("<H", page, 0x224)[0] == 0xE000 - 0x200
    assert struct.unpack_from("<I", page, 0x214)[0] == KERNEL_PADDR  # code32_start
    assert struct.unpack_from("<I", page, 0x228)[0] == CMDLINE_ADDRESS
    assert memory.read(CMDLINE_ADDRESS, 14) == b"console=ttyS0\0"
    assert struct.unpack_from("<Q", page, 0x070)[0] == 0xF0000
    e820 = [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(page[0x1E8])]
    assert e820 == [(e.addr, e.size, int(e.kind)) for e in memory_map(memory)]

    image, size = struct.unpack_from("<II", page, 0x218)
    assert memory.read(image, size) == ramdisk
    assert image % 4096 == 0
    assert image >= KERNEL_PADDR + 0x400000  # above [load, load + init_size)
    assert image + size <= 64 * MiB


def test_not_relocatable_loads_at_1_mib(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(relocatable_kernel=0)
    entry = load(memory, guest(tmp_path, raw))
    assert entry.rip == 0x100000 + 0x200
    assert memory.read(0x100000, 0x100) == raw[SETUP : SETUP + 0x100]
    assert memory.read_u32(ZP + 0x214) == 0x100000


def test_no_pref_address_loads_at_1_mib(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(pref_address=0, init_size=0x800000)
    entry = load(memory, guest(tmp_path, raw, bytes(0x1000)))
    assert entry.rip == 0x100200
    image = memory.read_u32(ZP + 0x218)
    assert image >= 0x200000 + 0x800000  # clear of align_up(load, kernel_alignment) + init_size


def test_initrd_respects_initrd_addr_max(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(initrd_addr_max=0x27FFFFF, init_size=0x100000)
    load(memory, guest(tmp_path, raw, bytes(0x3000)))
    assert memory.read_u32(ZP + 0x218) == 0x2800000 - 0x3000


def test_no_64_bit_entry(memory: GuestMemory, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"bzImage: no 64-bit entry point \(xloadflags XLF_KERNEL_64 clear"):
        load(memory, guest(tmp_path, bzimage(xloadflags=0)))
    with pytest.raises(ImageError, match=r"XLF_KERNEL_64 clear, protocol 2\.11"):
        load(memory, guest(tmp_path, bzimage(version=0x020B)))


def test_init_size_too_big_for_ram(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(init_size=0x3800000)  # 16 MiB + 56 MiB > 64 MiB
    with pytest.raises(
        ImageError, match=r"bzImage: kernel too big for RAM: init_size needs \[0x1000000, 0x4800000\)"
    ):
        load(memory, guest(tmp_path, raw))


def test_no_room_for_initrd(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(initrd_addr_max=0x10FFFFF, init_size=0x100000)  # only [1 MiB, 17 MiB), kernel at 16 MiB
    with pytest.raises(
        ImageError, match=r"rd: no room for 0xf01000 bytes of initrd between 1 MiB and 17 MiB"
    ):
        load(memory, guest(tmp_path, raw, bytes(0xF01000)))


def test_cmdline_longer_than_cmdline_size(memory: GuestMemory, tmp_path: Path) -> None:
    with pytest.raises(
        ImageError, match=r"bzImage: kernel command line is 300 bytes; .* at most 255 \(cmdline_size\)"
    ):
        load(memory, guest(tmp_path, bzimage(cmdline_size=255), cmdline="y" * 300))


def test_compressed_payload_is_not_inspected(memory: GuestMemory, tmp_path: Path) -> None:
    # The guest decompresses: an unknown format is the kernel's business, not pyvmm's.
    from boot.linux_images import BzImage

    raw = BzImage(b"\x42\x42 whatever the kernel knows" * 4).build()
    assert load(memory, guest(tmp_path, raw)).rip == KERNEL_PADDR + 0x200
