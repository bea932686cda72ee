"""Multiboot v1 kernels (Multiboot Specification 0.6.96).

§3.1 OS image format: the header in the first 8 KiB, the flags a boot loader must
honour, the a.out kludge address fields. §3.2 machine state: 32-bit protected mode,
EAX = 0x2BADB002, EBX = the information structure. §3.3 boot information format:
the structure, the memory map, the module list.

As GRUB and QEMU do, the kernel's command line starts with its file name, and the
initrd becomes module 0 named by its file name. Everything this module writes
besides the kernel sits above the kernel's last byte, in one block: the
information structure, the memory map, the module list, the strings, then the
page-aligned module.
"""

from __future__ import annotations

import ctypes
import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pyvmm.arch.x86.layout import HIGH_MEMORY_START, LOW_RAM_END, GiB, KiB
from pyvmm.boot.elf import Reservation, Segment, SegmentType, is_elf, load_segments, parse_elf
from pyvmm.boot.entry import BootImages, CpuMode, EntryPoint
from pyvmm.boot.memory_map import (
    MemoryMapEntry,
    align_up,
    describe_ram,
    memory_map,
    place_low,
    usable_ram,
)
from pyvmm.boot.zeropage import c_string
from pyvmm.errors import ImageError
from pyvmm.memory import PAGE_SIZE, GuestMemory

HEADER_MAGIC = 0x1BADB002  # §3.1.2
BOOTLOADER_MAGIC = 0x2BADB002  # §3.2, in EAX at entry
SEARCH_LIMIT = 8192  # §3.1.1: the header lies completely within the first 8192 bytes
HEADER_ALIGN = 4  # §3.1.1: longword aligned
LOADER_NAME = "pyvmm"
ADDRESS_LIMIT = 4 * GiB  # every address in the information structure is 32 bits

# Kept free of kernel segments: the arch code writes the boot GDT and IDT in page 0,
# and a kernel entered in 32-bit mode cannot reach memory above 4 GiB.
RESERVED: tuple[Reservation, ...] = (
    (0, PAGE_SIZE, "page 0 (interrupt vector table, BIOS data area, boot GDT)"),
    (ADDRESS_LIMIT, 1 << 64, "memory above 4 GiB, out of reach in 32-bit protected mode"),
)


class HeaderFlags(enum.IntFlag):
    """Multiboot header flags (§3.1.2). Bits 0-15 are requirements."""

    PAGE_ALIGN = 1 << 0  # modules on 4 KiB boundaries: always done
    MEMORY_INFO = 1 << 1  # mem_* and mmap_*: always passed
    VIDEO_MODE = 1 << 2  # a preferred video mode: there is no display, ignored
    AOUT_KLUDGE = 1 << 16  # the address fields are valid


REQUIREMENT_BITS = 0xFFFF
HONOURED = HeaderFlags.PAGE_ALIGN | HeaderFlags.MEMORY_INFO | HeaderFlags.VIDEO_MODE


class InfoFlags(enum.IntFlag):
    """Which information structure fields are valid (§3.3)."""

    MEM = 1 << 0
    CMDLINE = 1 << 2
    MODS = 1 << 3
    MMAP = 1 << 6
    BOOT_LOADER_NAME = 1 << 9


INFO_FLAGS = InfoFlags.MEM | InfoFlags.CMDLINE | InfoFlags.MODS | InfoFlags.MMAP | InfoFlags.BOOT_LOADER_NAME

_u16, _u32, _u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class HeaderMagic(ctypes.LittleEndianStructure):
    """The magic fields every Multiboot header has (§3.1.1, offsets 0-11)."""

    _pack_ = 1
    _fields_ = [("magic", _u32), ("flags", _u32), ("checksum", _u32)]


class HeaderAddresses(ctypes.LittleEndianStructure):
    """The address fields at header offsets 12-31, valid when flags bit 16 is set (§3.1.3)."""

    _pack_ = 1
    _fields_ = [
        ("header_addr", _u32),
        ("load_addr", _u32),
        ("load_end_addr", _u32),
        ("bss_end_addr", _u32),
        ("entry_addr", _u32),
    ]


class MultibootInfo(ctypes.LittleEndianStructure):
    """The Multiboot information structure (§3.3), 88 bytes."""

    _pack_ = 1
    _fields_ = [
        ("flags", _u32),
        ("mem_lower", _u32),
        ("mem_upper", _u32),
        ("boot_device", _u32),
        ("cmdline", _u32),
        ("mods_count", _u32),
        ("mods_addr", _u32),
        ("syms", _u32 * 4),
        ("mmap_length", _u32),
        ("mmap_addr", _u32),
        ("drives_length", _u32),
        ("drives_addr", _u32),
        ("config_table", _u32),
        ("boot_loader_name", _u32),
        ("apm_table", _u32),
        ("vbe_control_info", _u32),
        ("vbe_mode_info", _u32),
        ("vbe_mode", _u16),
        ("vbe_interface_seg", _u16),
        ("vbe_interface_off", _u16),
        ("vbe_interface_len", _u16),
    ]


class MmapEntry(ctypes.LittleEndianStructure):
    """One memory map entry (§3.3); `size` counts the bytes after itself."""

    _pack_ = 1
    _fields_ = [("size", _u32), ("base_addr", _u64), ("length", _u64), ("type", _u32)]


class Module(ctypes.LittleEndianStructure):
    """One boot module (§3.3): [mod_start, mod_end) and its string."""

    _pack_ = 1
    _fields_ = [("mod_start", _u32), ("mod_end", _u32), ("string", _u32), ("reserved", _u32)]


@dataclass(frozen=True)
class MultibootHeader:
    """A valid header found in an image: its file offset and fields."""

    offset: int
    flags: int
    addresses: HeaderAddresses | None  # present when flags bit 16 is set


def find_header(data: bytes, name: str) -> MultibootHeader | None:
    """The first valid Multiboot header in the first 8 KiB (§3.1.1), or None.

    The magic with a wrong checksum and no valid header anywhere is an error: the
    image meant to be a Multiboot kernel and is broken.
    """
    magic_size = ctypes.sizeof(HeaderMagic)
    bad_checksum_at = None
    for offset in range(0, min(len(data), SEARCH_LIMIT) - magic_size + 1, HEADER_ALIGN):
        magic = HeaderMagic.from_buffer_copy(data, offset)
        if magic.magic != HEADER_MAGIC:
            continue
        if (magic.magic + magic.flags + magic.checksum) & 0xFFFF_FFFF:
            bad_checksum_at = offset if bad_checksum_at is None else bad_checksum_at
            continue
        return _checked_header(data, offset, magic.flags, name)
    if bad_checksum_at is not None:
        raise ImageError(f"{name}: Multiboot header at offset {bad_checksum_at:#x} has a bad checksum")
    return None


def _checked_header(data: bytes, offset: int, flags: int, name: str) -> MultibootHeader:
    """Refuse requirements pyvmm cannot meet (§3.1.2); read the address fields (§3.1.3)."""
    unknown = flags & REQUIREMENT_BITS & ~HONOURED
    if unknown:
        raise ImageError(
            f"{name}: Multiboot header requires features pyvmm does not provide (flags {unknown:#x}, §3.1.2)"
        )
    if not flags & HeaderFlags.AOUT_KLUDGE:
        return MultibootHeader(offset, flags, None)
    at = offset + ctypes.sizeof(HeaderMagic)
    end = at + ctypes.sizeof(HeaderAddresses)
    if end > min(len(data), SEARCH_LIMIT):
        raise ImageError(
            f"{name}: truncated: the Multiboot address fields end at {end:#x}, past the header area"
        )
    return MultibootHeader(offset, flags, HeaderAddresses.from_buffer_copy(data, at))


def load_multiboot(
    memory: GuestMemory, kernel: bytes, images: BootImages, initrd: bytes | None, header: MultibootHeader
) -> EntryPoint:
    """Load the kernel and its information structure; 32-bit entry per §3.2."""
    name = str(images.kernel)
    if header.addresses is not None:
        segment, entry = _aout_segment(kernel, header.offset, header.addresses, name)
        segments = [segment]
    elif is_elf(kernel):
        elf = parse_elf(kernel, name)
        segments, entry = elf.loadable(), elf.entry
    else:
        raise ImageError(f"{name}: not ELF, and the Multiboot header has no address fields (flags bit 16)")
    loaded = load_segments(memory, kernel, segments, name, RESERVED)
    if not (entry < ADDRESS_LIMIT and memory.contains(entry, 1)):
        raise ImageError(f"{name}: entry point {entry:#x} is not in guest RAM ({describe_ram(memory)})")
    info_address, info_loaded = _write_information(memory, images, initrd, loaded)
    return EntryPoint(
        CpuMode.PROTECTED32,
        rip=entry,
        registers={"rax": BOOTLOADER_MAGIC, "rbx": info_address},
        loaded=loaded + info_loaded,
        description=f"Multiboot kernel {name}",
    )


def _aout_segment(data: bytes, header_offset: int, fields: HeaderAddresses, name: str) -> tuple[Segment, int]:
    """The one segment the address fields describe (§3.1.3), and the entry address."""
    if fields.load_addr > fields.header_addr:
        raise ImageError(f"{name}: Multiboot load_addr {fields.load_addr:#x} is above header_addr")
    file_start = header_offset - (fields.header_addr - fields.load_addr)
    if file_start < 0:
        raise ImageError(
            f"{name}: Multiboot load_addr {fields.load_addr:#x} starts loading before the file's first byte"
        )
    if fields.load_end_addr == 0:  # "the text and data segments occupy the whole OS image file"
        size = len(data) - file_start
    elif fields.load_end_addr <= fields.load_addr:
        raise ImageError(f"{name}: Multiboot load_end_addr {fields.load_end_addr:#x} is not above load_addr")
    else:
        size = fields.load_end_addr - fields.load_addr
    if file_start + size > len(data):
        raise ImageError(
            f"{name}: truncated: Multiboot load range needs file bytes up to {file_start + size:#x} "
            f"but the file has {len(data):#x}"
        )
    load_end = fields.load_addr + size
    if fields.bss_end_addr and fields.bss_end_addr < load_end:
        raise ImageError(f"{name}: Multiboot bss_end_addr {fields.bss_end_addr:#x} is below load_end_addr")
    memsz = (fields.bss_end_addr or load_end) - fields.load_addr
    return Segment(0, SegmentType.LOAD, file_start, fields.load_addr, size, memsz), fields.entry_addr


def _memory_sizes(entries: Sequence[MemoryMapEntry]) -> tuple[int, int]:
    """mem_lower and mem_upper in KiB (§3.3): RAM from 0, and RAM from 1 MiB to the first hole."""
    lower = upper = 0
    for start, end in usable_ram(entries):
        if start == 0:
            lower = min(end, LOW_RAM_END) // KiB
        if start <= HIGH_MEMORY_START < end:
            upper = (end - HIGH_MEMORY_START) // KiB
    return lower, upper


def _write_information(
    memory: GuestMemory, images: BootImages, initrd: bytes | None, kernel: list[tuple[int, int, str]]
) -> tuple[int, list[tuple[int, int, str]]]:
    """Build the information block above the kernel; returns its address and ranges."""
    name = str(images.kernel)
    # File names as bytes, as the user gave them (os.fsencode), like the command line.
    cmdline = images.cmdline_bytes
    kernel_name = os.fsencode(images.kernel)
    command_line = c_string(
        kernel_name + b" " + cmdline if cmdline else kernel_name, f"{name}: kernel command line"
    )
    loader_name = c_string(LOADER_NAME, "boot loader name")
    module_name = b""
    if initrd is not None and images.initrd is not None:
        module_name = c_string(os.fsencode(images.initrd), f"{images.initrd}: initrd file name")
    entries = memory_map(memory, images.reserved)

    # Block layout: info, mmap, module list, strings; the module on the next page.
    mmap_offset = ctypes.sizeof(MultibootInfo)
    mods_offset = mmap_offset + len(entries) * ctypes.sizeof(MmapEntry)
    mods_count = 0 if initrd is None else 1
    strings_offset = mods_offset + mods_count * ctypes.sizeof(Module)
    strings = command_line + loader_name + module_name
    module_offset = align_up(strings_offset + len(strings), PAGE_SIZE)
    total = module_offset + (len(initrd) if initrd is not None else 0)

    kernel_end = max(end for _, end, _ in kernel)
    base = place_low(usable_ram(entries), total, above=kernel_end, below=ADDRESS_LIMIT, align=PAGE_SIZE)
    if base is None:
        raise ImageError(
            f"{name}: no room for {total:#x} bytes of Multiboot information and modules above the kernel "
            f"(which ends at {kernel_end:#x}) below 4 GiB ({describe_ram(memory)})"
        )

    info = MultibootInfo()
    info.flags = INFO_FLAGS
    info.mem_lower, info.mem_upper = _memory_sizes(entries)
    info.cmdline = base + strings_offset
    info.boot_loader_name = info.cmdline + len(command_line)
    info.mmap_addr = base + mmap_offset
    info.mmap_length = mods_offset - mmap_offset
    info.mods_count = mods_count
    info.mods_addr = base + mods_offset if mods_count else 0
    mmap_size = ctypes.sizeof(MmapEntry) - ctypes.sizeof(_u32)
    table = b"".join(bytes(MmapEntry(mmap_size, e.addr, e.size, e.kind)) for e in entries)
    block = bytearray(module_offset)
    block[0:mmap_offset] = bytes(info)
    block[mmap_offset:mods_offset] = table
    if initrd is not None:
        module_start = base + module_offset
        string_address = info.boot_loader_name + len(loader_name)
        module = Module(module_start, module_start + len(initrd), string_address)
        block[mods_offset:strings_offset] = bytes(module)
    block[strings_offset : strings_offset + len(strings)] = strings
    memory.write(base, block)

    ranges = [(base, base + module_offset, "Multiboot information")]
    if initrd is not None:
        memory.write(base + module_offset, initrd)
        ranges.append((base + module_offset, base + total, f"module 0 ({images.initrd})"))
    return base, ranges
