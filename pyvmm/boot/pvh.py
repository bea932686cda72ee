"""The Xen PVH boot ABI, as KVM VMMs use it to start a Linux vmlinux directly.

A kernel that supports it says so with an ELF note named "Xen" of type
XEN_ELFNOTE_PHYS32_ENTRY (18; Xen include/public/elfnote.h, Linux
include/xen/interface/elfnote.h) whose descriptor is the physical address of its
32-bit entry. The loader hands over a `hvm_start_info` (Xen
include/public/arch-x86/hvm/start_info.h, version 1: command line, modules, RSDP,
memory map) and enters in 32-bit protected mode, paging off, flat CS/DS/ES/SS,
interrupts off, with EBX = the structure's address (Xen docs/misc/pvh.pandoc).
pyvmm's `CpuMode.PROTECTED32` is that state.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence

from pyvmm.arch.x86.layout import ZERO_PAGE_ADDRESS
from pyvmm.boot.elf import ElfFile, elf_notes
from pyvmm.boot.memory_map import align_up, memory_map
from pyvmm.errors import ConfigError, ImageError
from pyvmm.memory import PAGE_SIZE, GuestMemory

XEN_NOTE_NAME = "Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18
XEN_HVM_START_MAGIC_VALUE = 0x336EC578  # "xEn3" with the 0x80 bit of the "E" set
HVM_START_INFO_VERSION = 1  # the version with a memory map
# A PVH boot has no zero page: its page holds the start info, module list and map.
START_INFO_ADDRESS = ZERO_PAGE_ADDRESS

_u32, _u64 = ctypes.c_uint32, ctypes.c_uint64


class HvmStartInfo(ctypes.LittleEndianStructure):
    """struct hvm_start_info (56 bytes)."""

    _pack_ = 1
    _fields_ = [
        ("magic", _u32),  # 0
        ("version", _u32),  # 4
        ("flags", _u32),  # 8: SIF_* (none for an HVM/PVH guest of ours)
        ("nr_modules", _u32),  # 12
        ("modlist_paddr", _u64),  # 16
        ("cmdline_paddr", _u64),  # 24
        ("rsdp_paddr", _u64),  # 32
        ("memmap_paddr", _u64),  # 40
        ("memmap_entries", _u32),  # 48
        ("reserved", _u32),  # 52
    ]


class HvmModlistEntry(ctypes.LittleEndianStructure):
    """struct hvm_modlist_entry (32 bytes)."""

    _pack_ = 1
    _fields_ = [("paddr", _u64), ("size", _u64), ("cmdline_paddr", _u64), ("reserved", _u64)]


class HvmMemmapTableEntry(ctypes.LittleEndianStructure):
    """struct hvm_memmap_table_entry (24 bytes); types are the ACPI/e820 ones."""

    _pack_ = 1
    _fields_ = [("addr", _u64), ("size", _u64), ("type", _u32), ("reserved", _u32)]


MODLIST_ADDRESS = START_INFO_ADDRESS + align_up(ctypes.sizeof(HvmStartInfo), 16)
MEMMAP_ADDRESS = MODLIST_ADDRESS + align_up(ctypes.sizeof(HvmModlistEntry), 16)
MEMMAP_MAX_ENTRIES = (START_INFO_ADDRESS + PAGE_SIZE - MEMMAP_ADDRESS) // ctypes.sizeof(HvmMemmapTableEntry)


def pvh_entry(data: bytes, elf: ElfFile, name: str) -> int | None:
    """The PVH entry from the XEN_ELFNOTE_PHYS32_ENTRY note, or None without one.

    Linux writes the descriptor with _ASM_PTR: 8 bytes in a 64-bit kernel, 4 in a
    32-bit one; the address is 32-bit either way.
    """
    for note in elf_notes(data, elf, name):
        if note.name != XEN_NOTE_NAME or note.type != XEN_ELFNOTE_PHYS32_ENTRY:
            continue
        if len(note.desc) not in (4, 8):
            raise ImageError(f"{name}: Xen PVH entry note has a {len(note.desc)}-byte descriptor, not 4 or 8")
        (address,) = struct.unpack("<I" if len(note.desc) == 4 else "<Q", note.desc)
        if address >= 1 << 32:
            raise ImageError(f"{name}: Xen PVH entry {address:#x} is not a 32-bit address")
        return int(address)
    return None


def write_start_info(
    memory: GuestMemory,
    cmdline_address: int,
    modules: Sequence[tuple[int, int]] = (),
    rsdp_address: int | None = None,
    reserved: Sequence[tuple[int, int]] = (),
) -> int:
    """Write hvm_start_info, its module list (each (address, size), no command line)
    and the memory map of `memory_map`; returns the address for EBX."""
    if len(modules) > 1:
        raise ConfigError(f"{len(modules)} PVH modules; pyvmm passes at most one (the initrd)")
    entries = memory_map(memory, reserved)
    if len(entries) > MEMMAP_MAX_ENTRIES:
        raise ConfigError(f"{len(entries)} memory map entries; the PVH start page holds {MEMMAP_MAX_ENTRIES}")
    info = HvmStartInfo(
        magic=XEN_HVM_START_MAGIC_VALUE,
        version=HVM_START_INFO_VERSION,
        nr_modules=len(modules),
        modlist_paddr=MODLIST_ADDRESS if modules else 0,
        cmdline_paddr=cmdline_address,
        rsdp_paddr=rsdp_address or 0,
        memmap_paddr=MEMMAP_ADDRESS,
        memmap_entries=len(entries),
    )
    table = (HvmMemmapTableEntry * len(entries))(
        *(HvmMemmapTableEntry(entry.addr, entry.size, entry.kind) for entry in entries)
    )
    memory.fill(START_INFO_ADDRESS, PAGE_SIZE)
    memory.write(START_INFO_ADDRESS, bytes(info))
    for index, (address, size) in enumerate(modules):
        memory.write(
            MODLIST_ADDRESS + index * ctypes.sizeof(HvmModlistEntry), bytes(HvmModlistEntry(address, size))
        )
    memory.write(MEMMAP_ADDRESS, bytes(table))
    return START_INFO_ADDRESS
