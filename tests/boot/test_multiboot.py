"""Multiboot v1 kernels through `pyvmm.boot.load`: what lands in guest memory
(Multiboot 0.6.96 §3.1 loading, §3.2 entry state, §3.3 information structure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from boot.boot_images import (
    MMAP_ENTRY,
    MODULE,
    Elf,
    Seg,
    aout_kernel,
    c_string,
    code,
    multiboot_elf,
    multiboot_header,
    read_mbi,
)

from pyvmm.boot import BootImages, CpuMode, load
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

PAGE = 4096


def kernel_file(tmp_path: Path, data: bytes, name: str = "kernel.elf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_elf_kernel_with_initrd(memory: GuestMemory, tmp_path: Path) -> None:
    image = multiboot_elf(text=code(0x300), bss=0x2345)
    kernel = kernel_file(tmp_path, image.build())
    initrd = kernel_file(tmp_path, code(0x1800, seed=9), "initrd.img")
    memory.fill(0x100000, 0x10000, 0xCC)
    entry = load(memory, BootImages(kernel, initrd, "exit=3 verbose"))

    assert entry.mode is CpuMode.PROTECTED32
    assert entry.rip == 0x100010
    mbi_address = entry.registers["rbx"]
    assert entry.registers["rax"] == 0x2BADB002

    # the segment, then its bss zeroed
    kernel_end = 0x100000 + 0x300 + 0x2345
    assert memory.read(0x100000, 0x300) == code(0x300)
    assert memory.read(0x100300, 0x2345) == bytes(0x2345)

    mbi = read_mbi(memory, mbi_address)
    assert mbi["flags"] == 1 << 0 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9
    assert mbi["mem_lower"] == 639
    assert mbi["mem_upper"] == (64 * 1024) - 1024
    assert c_string(memory, mbi["cmdline"]) == f"{kernel} exit=3 verbose".encode()
    assert c_string(memory, mbi["boot_loader_name"]) == b"pyvmm"

    assert mbi["mmap_length"] == 4 * MMAP_ENTRY.size
    table = memory.read(mbi["mmap_addr"], mbi["mmap_length"])
    rows = [MMAP_ENTRY.unpack_from(table, i * MMAP_ENTRY.size) for i in range(4)]
    assert rows == [
        (20, 0, 0x9FC00, 1),
        (20, 0x9FC00, 0x400, 2),
        (20, 0xE0000, 0x20000, 2),
        (20, 0x100000, 63 << 20, 1),
    ]

    assert mbi["mods_count"] == 1
    start, end, string, _ = MODULE.unpack(memory.read(mbi["mods_addr"], MODULE.size))
    assert start % PAGE == 0
    assert end - start == 0x1800
    assert memory.read(start, end - start) == code(0x1800, seed=9)
    assert c_string(memory, string) == str(initrd).encode()

    # everything the loader wrote sits above the kernel, out of page 0, apart
    structures = [
        (mbi_address, mbi_address + 88),
        (mbi["mmap_addr"], mbi["mmap_addr"] + mbi["mmap_length"]),
        (mbi["mods_addr"], mbi["mods_addr"] + MODULE.size),
        (mbi["cmdline"], mbi["cmdline"] + len(f"{kernel} exit=3 verbose") + 1),
        (mbi["boot_loader_name"], mbi["boot_loader_name"] + 6),
        (string, string + len(str(initrd)) + 1),
        (start, end),
    ]
    assert mbi_address >= kernel_end and mbi_address % PAGE == 0
    for index, area in enumerate(structures):
        assert area[0] >= kernel_end
        assert not overlaps(area, (0, PAGE))
        assert not overlaps(area, (0x100000, kernel_end))
        assert not any(overlaps(area, other) for other in structures[index + 1 :])


def test_without_cmdline_or_initrd(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf().build())
    entry = load(memory, BootImages(kernel))
    mbi = read_mbi(memory, entry.registers["rbx"])
    assert c_string(memory, mbi["cmdline"]) == str(kernel).encode()
    assert mbi["mods_count"] == 0


@pytest.mark.parametrize("lead", [0, 64])
def test_aout_kludge(memory: GuestMemory, tmp_path: Path, lead: int) -> None:
    data = aout_kernel(load_addr=0x200000, text_size=0x400, bss=0x1000, lead=lead)
    memory.fill(0x200000, 0x2000, 0xCC)
    entry = load(memory, BootImages(kernel_file(tmp_path, data, "kernel.bin")))
    assert entry.mode is CpuMode.PROTECTED32
    assert entry.rip == 0x200000 + 32
    loaded = data[lead:]
    assert memory.read(0x200000, len(loaded)) == loaded
    assert memory.read(0x200000 + len(loaded), 0x1000) == bytes(0x1000)
    assert entry.registers["rbx"] >= 0x200000 + len(loaded) + 0x1000


def test_aout_kludge_whole_file_and_no_bss(memory: GuestMemory, tmp_path: Path) -> None:
    text = code(0x200)
    addresses = (0x300000, 0x300000, 0, 0, 0x300020)  # load_end 0: the whole file; bss_end 0: none
    data = multiboot_header(0x10002, addresses=addresses) + text
    entry = load(memory, BootImages(kernel_file(tmp_path, data, "kernel.bin")))
    assert memory.read(0x300000, len(data)) == data
    assert entry.rip == 0x300020
    assert entry.registers["rbx"] == 0x300000 + PAGE


def test_address_fields_win_over_elf(memory: GuestMemory, tmp_path: Path) -> None:
    # an ELF file whose header asks for bit 16: the address fields say where to load
    image = Elf([Seg(0x100000, code(0x100))], entry=0x100000)
    image.after_headers = bytes(12 + 20)  # room for a full header, patched below
    data = bytearray(image.build())
    at = 52 + 32  # after the ELF header and one program header
    data[at : at + 32] = multiboot_header(0x10000, addresses=(0x400000 + at, 0x400000, 0, 0, 0x400000))
    entry = load(memory, BootImages(kernel_file(tmp_path, bytes(data))))
    assert memory.read(0x400000, len(data)) == bytes(data)
    assert entry.rip == 0x400000


def test_video_mode_and_optional_bits_are_accepted(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf(flags=0x3 | 1 << 2 | 1 << 20).build())
    assert load(memory, BootImages(kernel)).mode is CpuMode.PROTECTED32


def test_modules_above_a_low_kernel(memory: GuestMemory, tmp_path: Path) -> None:
    # a kernel ending just below the EBDA: the information goes above 1 MiB
    kernel = kernel_file(tmp_path, multiboot_elf(paddr=0x90000, bss=0xF000 - 0x300).build())
    initrd = kernel_file(tmp_path, b"module", "m")
    entry = load(memory, BootImages(kernel, initrd))
    # [0x9f000, 0x9fc00) is too small for the block, [0x9fc00, 1 MiB) is not RAM
    assert entry.registers["rbx"] == 0x100000
    mbi = read_mbi(memory, entry.registers["rbx"])
    start, end, _, _ = MODULE.unpack(memory.read(mbi["mods_addr"], MODULE.size))
    assert memory.read(start, end - start) == b"module"


def assert_rejected(memory: GuestMemory, path: Path, message: str, initrd: Path | None = None) -> None:
    with pytest.raises(ImageError, match=message) as caught:
        load(memory, BootImages(path, initrd))
    assert "\n" not in str(caught.value)


def test_bad_checksum(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf(checksum=0x1234).build())
    assert_rejected(memory, kernel, r"kernel.elf: Multiboot header at offset 0x54 has a bad checksum")


@pytest.mark.parametrize("bit", [3, 5, 15])
def test_unknown_required_flag(memory: GuestMemory, tmp_path: Path, bit: int) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf(flags=0x3 | 1 << bit).build())
    assert_rejected(memory, kernel, rf"requires features pyvmm does not provide \(flags {1 << bit:#x}")


def test_segment_outside_ram(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf(paddr=0x8000000).build())
    assert_rejected(memory, kernel, r"segment 0 \[0x8000000, 0x8002300\) is outside guest RAM \(64 MiB")


def test_segment_in_page_0(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf(paddr=0x800).build())
    assert_rejected(memory, kernel, r"overlaps \[0x0, 0x1000\), page 0")


def test_truncated_elf(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf().build()[:-16])
    assert_rejected(memory, kernel, "truncated: segment 0")


def test_truncated_aout(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, aout_kernel()[:-1], "kernel.bin")
    assert_rejected(memory, kernel, "truncated: Multiboot load range")


def test_aout_load_addr_above_header_addr(memory: GuestMemory, tmp_path: Path) -> None:
    data = multiboot_header(0x10000, addresses=(0x100000, 0x100010, 0, 0, 0x100000)) + code(64)
    assert_rejected(memory, kernel_file(tmp_path, data), "load_addr 0x100010 is above header_addr")


def test_not_elf_without_address_fields(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_header(0x3) + code(64), "kernel.bin")
    assert_rejected(memory, kernel, r"not ELF, and the Multiboot header has no address fields")


def test_entry_outside_ram(memory: GuestMemory, tmp_path: Path) -> None:
    image = multiboot_elf()
    image.entry = 0xC0000000
    assert_rejected(
        memory, kernel_file(tmp_path, image.build()), "entry point 0xc0000000 is not in guest RAM"
    )


def test_no_room_above_the_kernel(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf(paddr=0x3000000, bss=0x1000000 - 0x300).build())
    assert_rejected(memory, kernel, r"no room for .* above the kernel \(which ends at 0x4000000\)")


def test_initrd_too_big_for_ram(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf().build())
    initrd = kernel_file(tmp_path, bytes(64 << 20), "big.img")
    assert_rejected(memory, kernel, "no room for", initrd)


def test_header_beyond_8_kib_is_not_seen(memory: GuestMemory, tmp_path: Path) -> None:
    image = multiboot_elf()
    image.after_headers = bytes(8192) + image.after_headers
    kernel = kernel_file(tmp_path, image.build())
    assert_rejected(memory, kernel, "32-bit ELF without a Multiboot header is not bootable")


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ((0x100000, 0x0FF000, 0, 0, 0x100000), "starts loading before the file's first byte"),
        ((0x100000, 0x100000, 0x100000, 0, 0x100000), "load_end_addr 0x100000 is not above load_addr"),
        ((0x100000, 0x100000, 0x100100, 0x100080, 0x100000), "bss_end_addr 0x100080 is below load_end_addr"),
    ],
)
def test_bad_address_fields(
    memory: GuestMemory, tmp_path: Path, addresses: tuple[int, ...], message: str
) -> None:
    data = multiboot_header(0x10000, addresses=addresses) + code(0x200)
    assert_rejected(memory, kernel_file(tmp_path, data, "kernel.bin"), message)


def test_address_fields_cut_off(memory: GuestMemory, tmp_path: Path) -> None:
    data = multiboot_header(0x10000, addresses=(0x100000,) * 5)[:20]
    assert_rejected(
        memory, kernel_file(tmp_path, data, "kernel.bin"), "truncated: the Multiboot address fields"
    )


def test_command_line_checks(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = kernel_file(tmp_path, multiboot_elf().build())
    with pytest.raises(ImageError, match="kernel command line contains a NUL"):
        load(memory, BootImages(kernel, cmdline="a\0b"))
    with pytest.raises(ImageError, match=r"kernel command line is \d+ bytes; at most 65535 fit"):
        load(memory, BootImages(kernel, cmdline="x" * 0x10000))
