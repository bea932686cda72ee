"""bzImages unpacked on the host and booted like a vmlinux: PVH with hvm_start_info
(read back at the offsets of Xen's start_info.h), or the 64-bit entry with a zero
page seeded from the bzImage's setup header."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from boot.linux_images import (
    FORMATS,
    KERNEL_PADDR,
    PVH_ENTRY,
    BzImage,
    bzimage,
    header_bytes,
    payload,
    vmlinux,
)

from pyvmm.arch.x86.layout import CMDLINE_ADDRESS, ZERO_PAGE_ADDRESS, MiB
from pyvmm.boot import BootImages, CpuMode, load
from pyvmm.boot.memory_map import memory_map
from pyvmm.errors import ConfigError, ImageError
from pyvmm.memory import GuestMemory

ZP = ZERO_PAGE_ADDRESS
START_INFO = struct.Struct("<IIIIQQQQII")  # hvm_start_info, 56 bytes
START_INFO_FIELDS = (
    "magic", "version", "flags", "nr_modules", "modlist_paddr", "cmdline_paddr", "rsdp_paddr",
    "memmap_paddr", "memmap_entries", "reserved",
)  # fmt: skip
MODLIST_ENTRY = struct.Struct("<QQQQ")
MEMMAP_ENTRY = struct.Struct("<QQII")
RSDP = 0xE0000


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def start_info(memory: GuestMemory, address: int) -> dict[str, int]:
    return dict(zip(START_INFO_FIELDS, START_INFO.unpack(memory.read(address, START_INFO.size)), strict=True))


def c_string(memory: GuestMemory, address: int) -> bytes:
    return memory.read(address, 4096).split(b"\0", 1)[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_compression_boots_through_pvh(memory: GuestMemory, tmp_path: Path, fmt: str) -> None:
    kernel = vmlinux()
    entry = load(memory, BootImages(write(tmp_path, f"vmlinuz.{fmt}", bzimage(kernel, fmt))))
    assert entry.mode is CpuMode.PROTECTED32
    assert entry.rip == PVH_ENTRY
    assert set(entry.registers) == {"rbx"}
    assert start_info(memory, entry.registers["rbx"])["magic"] == 0x336EC578
    offset = struct.unpack_from("<Q", kernel, 64 + 8)[0]  # first program header's p_offset
    assert memory.read(KERNEL_PADDR, 0x3000) == kernel[offset : offset + 0x3000]
    assert memory.read(KERNEL_PADDR + 0x3000, 0x2000) == bytes(0x2000)  # bss
    assert f"({fmt} vmlinux)" in entry.description


def test_pvh_start_info(memory: GuestMemory, tmp_path: Path) -> None:
    ramdisk = bytes(range(256)) * 40
    images = BootImages(
        write(tmp_path, "vmlinuz", bzimage()),
        write(tmp_path, "initrd.img", ramdisk),
        "console=ttyS0 root=/dev/vda",
        rsdp_address=RSDP,
    )
    entry = load(memory, images)
    info = start_info(memory, entry.registers["rbx"])
    assert info["magic"] == 0x336EC578
    assert info["version"] == 1
    assert info["flags"] == info["reserved"] == 0
    assert info["rsdp_paddr"] == RSDP
    assert c_string(memory, info["cmdline_paddr"]) == b"console=ttyS0 root=/dev/vda"

    assert info["nr_modules"] == 1
    paddr, size, cmdline, reserved = MODLIST_ENTRY.unpack(memory.read(info["modlist_paddr"], 32))
    assert (size, cmdline, reserved) == (len(ramdisk), 0, 0)
    assert memory.read(paddr, size) == ramdisk
    assert paddr % 4096 == 0
    assert paddr + size <= 64 * MiB
    assert paddr >= KERNEL_PADDR + 0x5000 or paddr + size <= KERNEL_PADDR

    rows = [
        MEMMAP_ENTRY.unpack(memory.read(info["memmap_paddr"] + i * 24, 24))
        for i in range(info["memmap_entries"])
    ]
    assert rows == [(e.addr, e.size, int(e.kind), 0) for e in memory_map(memory)]
    assert rows[0] == (0, 0x9FC00, 1, 0)
    assert rows[-1] == (0x100000, 63 * MiB, 1, 0)
    # The structures share one page and do not overlap.
    spans = sorted(
        [
            (entry.registers["rbx"], 56),
            (info["modlist_paddr"], 32),
            (info["memmap_paddr"], 24 * len(rows)),
        ]
    )
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(spans))


def test_pvh_without_initrd_or_rsdp(memory: GuestMemory, tmp_path: Path) -> None:
    entry = load(memory, BootImages(write(tmp_path, "vmlinuz", bzimage())))
    info = start_info(memory, entry.registers["rbx"])
    assert (info["nr_modules"], info["modlist_paddr"], info["rsdp_paddr"]) == (0, 0, 0)
    assert c_string(memory, info["cmdline_paddr"]) == b""


def test_bare_vmlinux_with_4_byte_pvh_note(memory: GuestMemory, tmp_path: Path) -> None:
    entry = load(memory, BootImages(write(tmp_path, "vmlinux", vmlinux(desc_bytes=4)), cmdline="quiet"))
    assert entry.mode is CpuMode.PROTECTED32
    assert entry.rip == PVH_ENTRY
    assert c_string(memory, start_info(memory, entry.registers["rbx"])["cmdline_paddr"]) == b"quiet"


def test_pvh_entry_outside_ram(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = write(tmp_path, "vmlinux", vmlinux(pvh=0x9000_0000))
    with pytest.raises(ImageError, match="vmlinux: Xen PVH entry 0x90000000 is not in guest RAM"):
        load(memory, BootImages(kernel))


def test_zero_page_from_the_bzimage_header(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(vmlinux(pvh=None), "xz", version=0x020C, cmdline_size=511, vid_mode=0xFFFD)
    ramdisk = b"initramfs" * 100
    images = BootImages(
        write(tmp_path, "vmlinuz", raw), write(tmp_path, "rd", ramdisk), "ro", rsdp_address=RSDP
    )
    entry = load(memory, images)
    assert entry.mode is CpuMode.LONG64
    assert entry.rip == KERNEL_PADDR
    assert entry.registers == {"rsi": ZP}

    page = memory.read(ZP, 4096)
    copied = header_bytes(raw)
    loader_fields = {
        0x210,
        0x218,
        0x219,
        0x21A,
        0x21B,
        0x21C,
        0x21D,
        0x21E,
        0x21F,
        0x228,
        0x229,
        0x22A,
        0x22B,
    }
    for offset in range(0x1F1, 0x1F1 + len(copied)):
        if offset not in loader_fields:
            assert page[offset] == copied[offset - 0x1F1], f"setup header byte {offset:#x}"
    assert struct.unpack_from("<H", page, 0x206)[0] == 0x020C
    assert struct.unpack_from("<I", page, 0x238)[0] == 511
    assert struct.unpack_from("<I", page, 0x230)[0] == 0x200000  # kernel_alignment
    assert page[0x210] == 0xFF
    assert struct.unpack_from("<I", page, 0x228)[0] == CMDLINE_ADDRESS
    assert c_string(memory, CMDLINE_ADDRESS) == b"ro"
    image, size = struct.unpack_from("<II", page, 0x218)
    assert memory.read(image, size) == ramdisk
    assert struct.unpack_from("<Q", page, 0x070)[0] == RSDP
    e820 = [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(page[0x1E8])]
    assert e820 == [(e.addr, e.size, int(e.kind)) for e in memory_map(memory)]


def test_bare_vmlinux_zero_page(memory: GuestMemory, tmp_path: Path) -> None:
    entry = load(memory, BootImages(write(tmp_path, "vmlinux", vmlinux(pvh=None)), rsdp_address=RSDP))
    assert entry.mode is CpuMode.LONG64
    assert memory.read_u16(ZP + 0x206) == 0x020F
    assert memory.read_u32(ZP + 0x230) == 0x200000  # kernel_alignment from p_align
    assert memory.read_u64(ZP + 0x070) == RSDP


def test_initrd_below_initrd_addr_max(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(initrd_addr_max=0x1FFFFFF)  # 32 MiB - 1: the highest byte the initrd may use
    images = BootImages(write(tmp_path, "vmlinuz", raw), write(tmp_path, "rd", bytes(0x1800)))
    info = start_info(memory, load(memory, images).registers["rbx"])
    paddr, size, _, _ = MODLIST_ENTRY.unpack(memory.read(info["modlist_paddr"], 32))
    assert (paddr, size) == (0x2000000 - 0x2000, 0x1800)  # page-aligned, as high as allowed


def test_cmdline_longer_than_cmdline_size(memory: GuestMemory, tmp_path: Path) -> None:
    images = BootImages(write(tmp_path, "vmlinuz", bzimage(cmdline_size=16)), cmdline="x" * 17)
    with pytest.raises(
        ImageError, match=r"vmlinuz: kernel command line is 17 bytes; this kernel takes at most 16"
    ):
        load(memory, images)
    load(memory, BootImages(images.kernel, cmdline="x" * 16))


def test_kernel_too_big_for_ram(memory: GuestMemory, tmp_path: Path) -> None:
    raw = BzImage(payload(vmlinux(), size=128 * MiB)).build()
    with pytest.raises(
        ImageError, match=r"vmlinuz: kernel too big for RAM: the gzip payload unpacks to 128 MiB"
    ):
        load(memory, BootImages(write(tmp_path, "vmlinuz", raw)))


def test_vmlinux_beyond_ram(memory: GuestMemory, tmp_path: Path) -> None:
    raw = bzimage(vmlinux(bss=64 * MiB))
    with pytest.raises(ImageError, match=r"vmlinuz \(gzip vmlinux\): segment 0 .* is outside guest RAM"):
        load(memory, BootImages(write(tmp_path, "vmlinuz", raw)))


def test_payload_not_an_elf(memory: GuestMemory, tmp_path: Path) -> None:
    raw = BzImage(payload(b"MZ not an ELF file" * 10, "zstd")).build()
    with pytest.raises(ImageError, match="vmlinuz: the zstd payload does not hold a 64-bit ELF vmlinux"):
        load(memory, BootImages(write(tmp_path, "vmlinuz", raw)))


def test_unknown_compression(memory: GuestMemory, tmp_path: Path) -> None:
    raw = BzImage(b"\x42\x42junk" * 8).build()
    with pytest.raises(ImageError, match=r"vmlinuz: unknown kernel compression \(payload starts with 42 42"):
        load(memory, BootImages(write(tmp_path, "vmlinuz", raw)))


def test_truncated_payload(memory: GuestMemory, tmp_path: Path) -> None:
    whole = payload(vmlinux(), "xz")
    raw = BzImage(whole[: len(whole) // 2] + whole[-4:]).build()
    with pytest.raises(ImageError, match=r"vmlinuz: xz payload is (truncated|corrupt)"):
        load(memory, BootImages(write(tmp_path, "vmlinuz", raw)))


def test_initrd_too_big(memory: GuestMemory, tmp_path: Path) -> None:
    images = BootImages(write(tmp_path, "vmlinuz", bzimage()), write(tmp_path, "big.img", bytes(48 * MiB)))
    with pytest.raises(
        ImageError, match=r"big.img: no room for 0x3000000 bytes of initrd between 1 MiB and 2 GiB"
    ):
        load(memory, images)


def test_boot_images_validation() -> None:
    with pytest.raises(ConfigError, match="kernel decompression 'both' is not one of host, guest"):
        BootImages(Path("k"), kernel_decompress="both")
    with pytest.raises(ConfigError, match="RSDP address"):
        BootImages(Path("k"), rsdp_address=0)
