"""64-bit ELF kernels through `pyvmm.boot.load`: segments, initrd, zero page."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest
from boot.boot_images import Elf, Seg, code, multiboot_header

from pyvmm.arch.x86.layout import CMDLINE_ADDRESS, ZERO_PAGE_ADDRESS
from pyvmm.boot import BootImages, CpuMode, load
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

ZP = ZERO_PAGE_ADDRESS


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def kernel64(paddr: int = 0x200000, bss: int = 0x3000) -> bytes:
    return Elf([Seg(paddr, code(0x500), memsz=0x500 + bss)], entry=paddr, bits=64).build()


def test_kernel_initrd_and_zero_page(memory: GuestMemory, tmp_path: Path) -> None:
    memory.fill(0x200000, 0x4000, 0xCC)
    ramdisk = code(0x2345, seed=3)
    images = BootImages(
        write(tmp_path, "k64.elf", kernel64()), write(tmp_path, "rd", ramdisk), "root=/dev/ram0"
    )
    entry = load(memory, images)

    assert entry.mode is CpuMode.LONG64
    assert entry.rip == 0x200000
    assert entry.registers == {"rsi": ZP}
    assert memory.read(0x200000, 0x500) == code(0x500)
    assert memory.read(0x200500, 0x3000) == bytes(0x3000)

    assert memory.read_u16(ZP + 0x1FE) == 0xAA55
    assert memory.read(ZP + 0x202, 4) == b"HdrS"
    assert memory.read_u8(ZP + 0x210) == 0xFF
    assert memory.read_u32(ZP + 0x228) == CMDLINE_ADDRESS
    assert memory.read(CMDLINE_ADDRESS, 15) == b"root=/dev/ram0\0"
    e820 = [
        struct.unpack("<QQI", memory.read(ZP + 0x2D0 + 20 * i, 20)) for i in range(memory.read_u8(ZP + 0x1E8))
    ]
    assert e820[0] == (0, 0x9FC00, 1)
    assert e820[-1] == (0x100000, 63 << 20, 1)

    image, size = memory.read_u32(ZP + 0x218), memory.read_u32(ZP + 0x21C)
    assert (memory.read_u32(ZP + 0x0C0), memory.read_u32(ZP + 0x0C4)) == (0, 0)
    assert size == len(ramdisk)
    assert image == (64 << 20) - 0x3000  # page-aligned, as high as it fits
    assert memory.read(image, size) == ramdisk


def test_initrd_placed_below_a_kernel_at_the_top(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = write(tmp_path, "k", kernel64(paddr=(64 << 20) - 0x10000, bss=0x10000 - 0x500))
    entry = load(memory, BootImages(kernel, write(tmp_path, "rd", b"ramdisk")))
    image = memory.read_u32(ZP + 0x218)
    assert image == (64 << 20) - 0x11000
    assert memory.read(image, 7) == b"ramdisk"
    assert entry.rip == (64 << 20) - 0x10000


def test_no_initrd(memory: GuestMemory, tmp_path: Path) -> None:
    load(memory, BootImages(write(tmp_path, "k", kernel64())))
    assert memory.read_u32(ZP + 0x218) == memory.read_u32(ZP + 0x21C) == 0
    assert memory.read_u8(CMDLINE_ADDRESS) == 0


@pytest.mark.parametrize(
    ("paddr", "what"),
    [(0x6800, "the zero page"), (0xA000, "the boot page tables"), (0x2F000, "the kernel command line")],
)
def test_segment_over_boot_structures(memory: GuestMemory, tmp_path: Path, paddr: int, what: str) -> None:
    kernel = write(tmp_path, "k", kernel64(paddr=paddr, bss=0x1000))
    with pytest.raises(ImageError, match=f"segment 0 .* overlaps .*, {what}"):
        load(memory, BootImages(kernel))


def test_entry_outside_ram(memory: GuestMemory, tmp_path: Path) -> None:
    data = Elf([Seg(0x200000, code(0x10))], entry=0xFFFFFFFF81000000, bits=64).build()
    with pytest.raises(ImageError, match="entry point 0xffffffff81000000 is not in guest RAM"):
        load(memory, BootImages(write(tmp_path, "k", data)))


def test_initrd_too_big(memory: GuestMemory, tmp_path: Path) -> None:
    images = BootImages(write(tmp_path, "k", kernel64()), write(tmp_path, "rd", bytes(63 << 20)))
    with pytest.raises(ImageError, match="rd: no room for 0x3f00000 bytes of initrd"):
        load(memory, images)


def test_too_long_cmdline(memory: GuestMemory, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="command line is 65536 bytes"):
        load(memory, BootImages(write(tmp_path, "k", kernel64()), cmdline="x" * 0x10000))


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:  # proc(5): resident pages, second field
        return int(statm.read().split()[1]) * 4096


@pytest.mark.parametrize("bits", [64, 32])
def test_a_2_gib_bss_is_zeroed_in_place(tmp_path: Path, bits: int) -> None:
    """p_memsz of 2 GiB (an ELF64 kernel, or a Multiboot ELF32 one): no host buffer of
    that size, no RSS for it, and every byte of it reads zero."""
    paddr, bss = 0x1000000, 2 << 30
    extra = {} if bits == 64 else {"after_headers": multiboot_header()}
    kernel = Elf([Seg(paddr, code(0x500), memsz=0x500 + bss)], entry=paddr, bits=bits, **extra).build()
    memory = GuestMemory([(0, 3 << 30)])
    try:
        for gpa in (paddr + 0x500, paddr + 0x500 + bss // 2, paddr + 0x500 + bss - 8):
            memory.write(gpa, b"\xcc" * 8)  # what an earlier boot left there
        resident = resident_bytes()
        tracemalloc.start()
        try:
            entry = load(memory, BootImages(write(tmp_path, "k.elf", kernel)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert entry.mode is (CpuMode.LONG64 if bits == 64 else CpuMode.PROTECTED32)
        assert peak < 16 << 20, f"{peak >> 20} MiB allocated to load a {len(kernel)}-byte kernel"
        assert resident_bytes() - resident < 64 << 20
        for gpa in (paddr + 0x500, paddr + 0x500 + bss // 2, paddr + 0x500 + bss - 8):
            assert memory.read(gpa, 8) == bytes(8)
        assert memory.read(paddr, 0x500) == code(0x500)
    finally:
        memory.close()
