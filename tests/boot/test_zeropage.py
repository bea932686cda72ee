"""The Linux zero page (pyvmm.boot.zeropage), read back byte by byte at the offsets
of Documentation/arch/x86/zero-page.rst and boot.rst."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pyvmm.arch.x86.layout import CMDLINE_ADDRESS, CMDLINE_MAX, ZERO_PAGE_ADDRESS
from pyvmm.boot.memory_map import memory_map
from pyvmm.boot.zeropage import BootParams, SetupHeader, write_zero_page
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

ZP = ZERO_PAGE_ADDRESS


def test_layout_offsets() -> None:
    assert ctypes.sizeof(BootParams) == 4096
    offsets = {name: getattr(BootParams, name).offset for name in (
        "ext_ramdisk_image", "ext_ramdisk_size", "ext_cmd_line_ptr", "cc_blob_address",
        "e820_entries", "hdr", "e820_table",
    )}  # fmt: skip
    assert offsets == {
        "ext_ramdisk_image": 0x0C0,
        "ext_ramdisk_size": 0x0C4,
        "ext_cmd_line_ptr": 0x0C8,
        "cc_blob_address": 0x13C,
        "e820_entries": 0x1E8,
        "hdr": 0x1F1,
        "e820_table": 0x2D0,
    }
    header = {name: 0x1F1 + getattr(SetupHeader, name).offset for name in (
        "boot_flag", "header", "version", "type_of_loader", "ramdisk_image", "ramdisk_size",
        "cmd_line_ptr", "cmdline_size", "kernel_info_offset",
    )}  # fmt: skip
    assert header == {
        "boot_flag": 0x1FE,
        "header": 0x202,
        "version": 0x206,
        "type_of_loader": 0x210,
        "ramdisk_image": 0x218,
        "ramdisk_size": 0x21C,
        "cmd_line_ptr": 0x228,
        "cmdline_size": 0x238,
        "kernel_info_offset": 0x268,
    }


def test_fields_in_guest_memory(memory: GuestMemory) -> None:
    memory.fill(ZP, 4096, 0xEE)  # the whole page is rewritten
    assert write_zero_page(memory, "console=ttyS0 quiet", None) == ZP
    assert memory.read_u16(ZP + 0x1FE) == 0xAA55
    assert memory.read(ZP + 0x202, 4) == b"HdrS"
    assert memory.read_u16(ZP + 0x206) >= 0x0200
    assert memory.read_u8(ZP + 0x210) == 0xFF
    assert memory.read_u32(ZP + 0x228) == CMDLINE_ADDRESS
    assert memory.read_u32(ZP + 0x0C8) == 0
    assert memory.read_u32(ZP + 0x238) == CMDLINE_MAX - 1
    assert memory.read(CMDLINE_ADDRESS, 20) == b"console=ttyS0 quiet\0"
    assert memory.read_u32(ZP + 0x218) == memory.read_u32(ZP + 0x21C) == 0
    assert memory.read(ZP, 0x1E0) == bytes(0x1E0)  # untouched fields are zero

    entries = memory_map(memory)
    assert memory.read_u8(ZP + 0x1E8) == len(entries) == 4
    rows = [struct.unpack("<QQI", memory.read(ZP + 0x2D0 + 20 * i, 20)) for i in range(len(entries))]
    assert rows == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xE0000, 0x20000, 2), (0x100000, 0x3F00000, 1)]
    assert memory.read(ZP + 0x2D0 + 20 * len(entries), 20) == bytes(20)


def test_initrd_fields(memory: GuestMemory) -> None:
    write_zero_page(memory, "", (0x1_2345_6000, 0x1_0000_0010))
    assert memory.read_u32(ZP + 0x218) == 0x2345_6000
    assert memory.read_u32(ZP + 0x0C0) == 0x1
    assert memory.read_u32(ZP + 0x21C) == 0x10
    assert memory.read_u32(ZP + 0x0C4) == 0x1
    assert memory.read_u8(CMDLINE_ADDRESS) == 0


def test_longest_command_line_fits(memory: GuestMemory) -> None:
    write_zero_page(memory, "x" * (CMDLINE_MAX - 1), None)
    assert memory.read(CMDLINE_ADDRESS + CMDLINE_MAX - 2, 2) == b"x\0"


def test_too_long_command_line(memory: GuestMemory) -> None:
    with pytest.raises(ImageError, match=f"command line is {CMDLINE_MAX} bytes; at most {CMDLINE_MAX - 1}"):
        write_zero_page(memory, "x" * CMDLINE_MAX, None)


def test_nul_in_command_line(memory: GuestMemory) -> None:
    with pytest.raises(ImageError, match="NUL"):
        write_zero_page(memory, "a\0b", None)
