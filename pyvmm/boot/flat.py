"""Flat binaries: raw bytes started the way a PC BIOS starts a boot sector.

The BIOS Boot Specification 1.01 §6.5.1 loads the boot sector at 0000:7C00, jumps
there in real mode and passes the boot drive in DL; docs/boot.md keeps that entry
state and lets the image run up to the VGA window at `BIOS_AREA_START`.

A raw binary has no header to recognise it by, so pyvmm boots one only when the
user says so (kernel format "flat") or when it is a boot sector as a BIOS checks
it (§6.5.1 and the PC BIOS before it): 512 bytes ending in the signature 55 AA.
"""

from __future__ import annotations

from pyvmm.arch.x86.layout import BIOS_AREA_START, FLAT_LOAD_ADDRESS
from pyvmm.boot.entry import CpuMode, EntryPoint
from pyvmm.boot.memory_map import describe_ram
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

FLAT_MAX_SIZE = BIOS_AREA_START - FLAT_LOAD_ADDRESS
BOOT_DRIVE = 0x80  # DL at entry: the first hard disk, as a BIOS reports it
BOOT_SECTOR_SIZE = 512
BOOT_SIGNATURE = b"\x55\xaa"  # the last two bytes of a bootable sector


def is_boot_sector(data: bytes) -> bool:
    """A 512-byte image that ends in the boot signature 55 AA."""
    return len(data) == BOOT_SECTOR_SIZE and data[-len(BOOT_SIGNATURE) :] == BOOT_SIGNATURE


def load_flat(memory: GuestMemory, data: bytes, name: str) -> EntryPoint:
    """Copy `data` to `FLAT_LOAD_ADDRESS`; 16-bit entry with CS:IP = SS:SP = 0000:7C00."""
    if not data:
        raise ImageError(f"{name}: flat binary is empty")
    if len(data) > FLAT_MAX_SIZE:
        raise ImageError(
            f"{name}: flat binary is {len(data):#x} bytes; at most {FLAT_MAX_SIZE:#x} fit "
            f"between {FLAT_LOAD_ADDRESS:#x} and {BIOS_AREA_START:#x}"
        )
    end = FLAT_LOAD_ADDRESS + len(data)
    if not memory.contains(FLAT_LOAD_ADDRESS, len(data)):
        raise ImageError(f"{name}: flat binary needs RAM up to {end:#x} ({describe_ram(memory)})")
    memory.write(FLAT_LOAD_ADDRESS, data)
    return EntryPoint(
        CpuMode.REAL16,
        rip=FLAT_LOAD_ADDRESS,
        registers={"rdx": BOOT_DRIVE, "rsp": FLAT_LOAD_ADDRESS},
        loaded=[(FLAT_LOAD_ADDRESS, end, f"{name} (flat binary)")],
        description=f"flat binary {name} at {FLAT_LOAD_ADDRESS:#x}",
    )
