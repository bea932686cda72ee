"""Tiny guests assembled in the test itself, for exits the C guests don't cover.

Each is a real boot image: a flat binary (real mode at 0x7C00) or a Multiboot image
using the a.out kludge (protected mode, loaded at 1 MiB).
"""

from __future__ import annotations

import struct
from pathlib import Path

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_AOUT_KLUDGE = 1 << 16
LOAD_ADDRESS = 0x100000
HEADER_SIZE = 32


def multiboot_image(code: bytes) -> bytes:
    """A Multiboot image whose entry point is `code`, loaded at 1 MiB (a.out kludge)."""
    flags = MULTIBOOT_AOUT_KLUDGE
    checksum = (-(MULTIBOOT_MAGIC + flags)) & 0xFFFF_FFFF
    end = LOAD_ADDRESS + HEADER_SIZE + len(code)
    header = struct.pack(
        "<8I",
        MULTIBOOT_MAGIC, flags, checksum,
        LOAD_ADDRESS,  # header_addr
        LOAD_ADDRESS,  # load_addr
        end,  # load_end_addr
        end,  # bss_end_addr
        LOAD_ADDRESS + HEADER_SIZE,  # entry_addr
    )  # fmt: skip
    return header + code


def write(tmp_path: Path, name: str, image: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(image)
    return path


# 32-bit code fragments (protected mode, flat segments).
def out_debug_exit32(code: int) -> bytes:
    """mov eax, code; out 0xf4, eax"""
    return b"\xb8" + struct.pack("<I", code) + b"\xe7\xf4"


HLT_LOOP = b"\xf4\xeb\xfd"  # hlt; jmp $-1
SPIN = b"\xeb\xfe"  # jmp $
