"""The Linux `boot_params` ("zero page") for kernels entered in 64-bit mode.

Layout: Linux Documentation/arch/x86/zero-page.rst (offsets of struct boot_params)
and Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header" (the setup
header at 0x1f1). Only the fields a loader fills are named; the rest is padding
that keeps every named field at its documented offset. The command line lives at
`CMDLINE_ADDRESS`, the e820 table comes from `memory_map`.

A loader that booted from a bzImage starts from a copy of the kernel's own setup
header (boot.rst, "64-bit Boot Protocol": "the setup header at offset 0x01f1 of
kernel image on should be loaded into struct boot_params"); a bare vmlinux gets
the header a boot loader would have read from the newest protocol.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Sequence

from pyvmm.arch.x86.layout import CMDLINE_ADDRESS, CMDLINE_MAX, ZERO_PAGE_ADDRESS
from pyvmm.boot.entry import encode_text
from pyvmm.boot.memory_map import memory_map
from pyvmm.errors import ConfigError, ImageError
from pyvmm.memory import GuestMemory

BOOT_FLAG = 0xAA55  # boot.rst: "boot_flag ... 0xAA55 magic number"
HEADER_MAGIC = int.from_bytes(b"HdrS", "little")  # boot.rst: "header ... Magic signature HdrS"
BOOT_PROTOCOL_VERSION = 0x020F  # 2.15, the newest version boot.rst describes
LOADER_TYPE_UNDEFINED = 0xFF  # boot.rst, type_of_loader: "0xFF if no ID is assigned"
E820_MAX_ENTRIES = 128  # E820_MAX_ENTRIES_ZEROPAGE
SETUP_HEADER_OFFSET = 0x1F1  # boot.rst: "examine the following header at offset 0x01f1"
JUMP_OFFSET = 0x200  # the header's jump instruction; its byte at 0x201 gives the header end


class LoadFlags(enum.IntFlag):
    """setup_header.loadflags (boot.rst)."""

    LOADED_HIGH = 1 << 0  # the protected-mode code is loaded at 0x100000 or above
    KASLR_FLAG = 1 << 1  # kernel internal
    QUIET_FLAG = 1 << 5
    KEEP_SEGMENTS = 1 << 6
    CAN_USE_HEAP = 1 << 7


class XLoadFlags(enum.IntFlag):
    """setup_header.xloadflags (boot.rst, protocol 2.12+)."""

    KERNEL_64 = 1 << 0  # the legacy 64-bit entry point at load address + 0x200
    CAN_BE_LOADED_ABOVE_4G = 1 << 1
    EFI_HANDOVER_32 = 1 << 2
    EFI_HANDOVER_64 = 1 << 3
    EFI_KEXEC = 1 << 4


_u8, _u16, _u32, _u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class BootE820Entry(ctypes.LittleEndianStructure):
    """struct boot_e820_entry: one e820_table row."""

    _pack_ = 1
    _fields_ = [("addr", _u64), ("size", _u64), ("type", _u32)]


class SetupHeader(ctypes.LittleEndianStructure):
    """struct setup_header, at offset 0x1f1 of boot_params (boot.rst)."""

    _pack_ = 1
    _fields_ = [
        ("setup_sects", _u8),  # 0x1f1
        ("root_flags", _u16),  # 0x1f2
        ("syssize", _u32),  # 0x1f4
        ("ram_size", _u16),  # 0x1f8
        ("vid_mode", _u16),  # 0x1fa
        ("root_dev", _u16),  # 0x1fc
        ("boot_flag", _u16),  # 0x1fe
        ("jump", _u16),  # 0x200
        ("header", _u32),  # 0x202
        ("version", _u16),  # 0x206
        ("realmode_swtch", _u32),  # 0x208
        ("start_sys_seg", _u16),  # 0x20c
        ("kernel_version", _u16),  # 0x20e
        ("type_of_loader", _u8),  # 0x210
        ("loadflags", _u8),  # 0x211
        ("setup_move_size", _u16),  # 0x212
        ("code32_start", _u32),  # 0x214
        ("ramdisk_image", _u32),  # 0x218
        ("ramdisk_size", _u32),  # 0x21c
        ("bootsect_kludge", _u32),  # 0x220
        ("heap_end_ptr", _u16),  # 0x224
        ("ext_loader_ver", _u8),  # 0x226
        ("ext_loader_type", _u8),  # 0x227
        ("cmd_line_ptr", _u32),  # 0x228
        ("initrd_addr_max", _u32),  # 0x22c
        ("kernel_alignment", _u32),  # 0x230
        ("relocatable_kernel", _u8),  # 0x234
        ("min_alignment", _u8),  # 0x235
        ("xloadflags", _u16),  # 0x236
        ("cmdline_size", _u32),  # 0x238
        ("hardware_subarch", _u32),  # 0x23c
        ("hardware_subarch_data", _u64),  # 0x240
        ("payload_offset", _u32),  # 0x248
        ("payload_length", _u32),  # 0x24c
        ("setup_data", _u64),  # 0x250
        ("pref_address", _u64),  # 0x258
        ("init_size", _u32),  # 0x260
        ("handover_offset", _u32),  # 0x264
        ("kernel_info_offset", _u32),  # 0x268
    ]


class BootParams(ctypes.LittleEndianStructure):
    """struct boot_params, one 4 KiB page (zero-page.rst)."""

    _pack_ = 1
    _fields_ = [
        ("screen_info", _u8 * 0x40),  # 0x000
        ("apm_bios_info", _u8 * 0x14),  # 0x040
        ("_pad2", _u8 * 4),  # 0x054
        ("tboot_addr", _u64),  # 0x058
        ("ist_info", _u8 * 0x10),  # 0x060
        ("acpi_rsdp_addr", _u64),  # 0x070
        ("_pad3", _u8 * 8),  # 0x078
        ("hd0_info", _u8 * 0x10),  # 0x080
        ("hd1_info", _u8 * 0x10),  # 0x090
        ("sys_desc_table", _u8 * 0x10),  # 0x0a0
        ("olpc_ofw_header", _u8 * 0x10),  # 0x0b0
        ("ext_ramdisk_image", _u32),  # 0x0c0
        ("ext_ramdisk_size", _u32),  # 0x0c4
        ("ext_cmd_line_ptr", _u32),  # 0x0c8
        ("_pad4", _u8 * 0x70),  # 0x0cc
        ("cc_blob_address", _u32),  # 0x13c
        ("edid_info", _u8 * 0x80),  # 0x140
        ("efi_info", _u8 * 0x20),  # 0x1c0
        ("alt_mem_k", _u32),  # 0x1e0
        ("scratch", _u32),  # 0x1e4
        ("e820_entries", _u8),  # 0x1e8
        ("eddbuf_entries", _u8),  # 0x1e9
        ("edd_mbr_sig_buf_entries", _u8),  # 0x1ea
        ("kbd_status", _u8),  # 0x1eb
        ("secure_boot", _u8),  # 0x1ec
        ("_pad5", _u8 * 2),  # 0x1ed
        ("sentinel", _u8),  # 0x1ef
        ("_pad6", _u8),  # 0x1f0
        ("hdr", SetupHeader),  # 0x1f1
        ("_pad7", _u8 * 0x24),  # 0x26c
        ("edd_mbr_sig_buffer", _u32 * 16),  # 0x290
        ("e820_table", BootE820Entry * E820_MAX_ENTRIES),  # 0x2d0
        ("_pad8", _u8 * 0x30),  # 0xcd0
        ("eddbuf", _u8 * 0x1EC),  # 0xd00: 6 struct edd_info of 82 bytes
        ("_pad9", _u8 * 0x114),  # 0xeec
    ]


def c_string(text: str | bytes, what: str = "kernel command line", limit: int = CMDLINE_MAX - 1) -> bytes:
    """`text` as a NUL-terminated string of at most `limit` bytes before the NUL.

    Bytes go as they are; a str is encoded as `encode_text` does for every loader.
    """
    encoded = encode_text(text, what)
    if b"\0" in encoded:
        raise ImageError(f"{what} contains a NUL character")
    if len(encoded) > limit:
        raise ImageError(f"{what} is {len(encoded)} bytes; at most {limit} fit")
    return encoded + b"\0"


def write_command_line(memory: GuestMemory, cmdline: str | bytes) -> int:
    """Put the NUL-terminated command line at `CMDLINE_ADDRESS`; returns its address."""
    memory.write(CMDLINE_ADDRESS, c_string(cmdline))
    return CMDLINE_ADDRESS


def boot_params(
    memory: GuestMemory,
    cmdline_address: int,
    initrd: tuple[int, int] | None,
    *,
    kernel_header: bytes = b"",
    rsdp_address: int | None = None,
    reserved: Sequence[tuple[int, int]] = (),
) -> BootParams:
    """boot_params as a boot loader fills it; `initrd` is (address, size) or None.

    `kernel_header` is the setup header bytes from offset 0x1f1 of a bzImage: copied
    first, then the loader's fields are written over it. Without it the header
    claims the newest protocol and the command line size pyvmm has room for.
    """
    params = BootParams()
    if len(kernel_header) > ctypes.sizeof(SetupHeader):
        kernel_header = kernel_header[: ctypes.sizeof(SetupHeader)]
    ctypes.memmove(ctypes.addressof(params.hdr), kernel_header, len(kernel_header))
    hdr = params.hdr
    if not kernel_header:
        hdr.boot_flag = BOOT_FLAG
        hdr.header = HEADER_MAGIC
        hdr.version = BOOT_PROTOCOL_VERSION
        hdr.loadflags = LoadFlags.LOADED_HIGH
        hdr.cmdline_size = CMDLINE_MAX - 1
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED
    hdr.cmd_line_ptr = cmdline_address & 0xFFFF_FFFF
    params.ext_cmd_line_ptr = cmdline_address >> 32
    if initrd is not None:
        address, size = initrd
        hdr.ramdisk_image, params.ext_ramdisk_image = address & 0xFFFF_FFFF, address >> 32
        hdr.ramdisk_size, params.ext_ramdisk_size = size & 0xFFFF_FFFF, size >> 32
    if rsdp_address is not None:
        params.acpi_rsdp_addr = rsdp_address

    entries = memory_map(memory, reserved)
    if len(entries) > E820_MAX_ENTRIES:
        raise ConfigError(f"{len(entries)} memory map entries; the zero page holds {E820_MAX_ENTRIES}")
    params.e820_entries = len(entries)
    for row, entry in zip(params.e820_table, entries, strict=False):
        row.addr, row.size, row.type = entry.addr, entry.size, entry.kind
    return params


def write_boot_params(memory: GuestMemory, params: BootParams) -> int:
    """Put `params` at `ZERO_PAGE_ADDRESS`; returns that address, for RSI at entry."""
    memory.write(ZERO_PAGE_ADDRESS, bytes(params))
    return ZERO_PAGE_ADDRESS


def write_zero_page(memory: GuestMemory, cmdline: str | bytes, initrd: tuple[int, int] | None) -> int:
    """Write boot_params and the command line; `initrd` is (address, size) or None.

    Returns the zero page's guest address, for RSI at a 64-bit entry.
    """
    return write_boot_params(memory, boot_params(memory, write_command_line(memory, cmdline), initrd))
