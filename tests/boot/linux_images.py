"""Synthetic Linux kernels for the bzImage and PVH tests, packed by hand from the
specs so that the tests do not trust the reader they test:

- the setup header at the offsets of Linux Documentation/arch/x86/boot.rst;
- payloads as arch/x86/boot/compressed/Makefile builds them: the vmlinux compressed
  in one stream, then its size as a little-endian u32;
- LZ4's legacy frame (magic 0x184C2102, blocks of u32 LE size + LZ4 block of at most
  8 MiB of output) and lzop's file format (header, big-endian block sizes, Adler-32
  checksums), built from the block codecs (lz4.block, lzallright).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field

import lz4.block  # type: ignore[import-untyped]
import lzallright
import zstandard
from boot.boot_images import PT_NOTE, Elf, Seg, code, note

MiB = 1 << 20
KERNEL_PADDR = 0x1000000  # where a vmlinux is linked (LOAD_PHYSICAL_ADDR)
PVH_ENTRY = KERNEL_PADDR + 0x40
XEN_ELFNOTE_PHYS32_ENTRY = 18
LZ4_LEGACY_MAGIC = struct.pack("<I", 0x184C2102)
LZ4_BLOCK = 8 * MiB
LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"

FORMATS = ("gzip", "bzip2", "lzma", "xz", "lz4", "zstd", "lzo")


def vmlinux(
    pvh: int | None = PVH_ENTRY, *, desc_bytes: int = 8, text: int = 0x3000, bss: int = 0x2000
) -> bytes:
    """A small x86-64 vmlinux: one PT_LOAD at 16 MiB, optionally the Xen PVH note."""
    segments = [Seg(KERNEL_PADDR, code(text, seed=9), memsz=text + bss, align=0x200000)]
    if pvh is not None:
        desc = pvh.to_bytes(desc_bytes, "little")
        notes = note(b"Xen", 6, b"linux\0") + note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, desc)
        segments.append(Seg(0, notes, type=PT_NOTE))
    return Elf(segments, entry=KERNEL_PADDR, bits=64).build()


def lz4_legacy(data: bytes, block: int = LZ4_BLOCK) -> bytes:
    out = bytearray(LZ4_LEGACY_MAGIC)
    for start in range(0, len(data), block):
        compressed = lz4.block.compress(data[start : start + block], store_size=False)
        out += struct.pack("<I", len(compressed)) + compressed
    return bytes(out)


def lzop(data: bytes, block: int = 256 * 1024) -> bytes:
    """An lzop file: version 0x1040 header with F_ADLER32_D, then LZO1X blocks."""
    flags = 0x1  # F_ADLER32_D
    name = b"vmlinux.bin"
    header = struct.pack(">HHHBBIIII", 0x1040, 0x2080, 0x0940, 3, 9, flags, 0o100644, 0, 0)
    header += bytes([len(name)]) + name
    out = bytearray(LZOP_MAGIC + header + struct.pack(">I", zlib.adler32(header)))
    for start in range(0, len(data), block):
        chunk = data[start : start + block]
        compressed = lzallright.LZOCompressor().compress(chunk)
        if len(compressed) >= len(chunk):
            compressed = chunk  # lzop stores incompressible blocks as they are
        out += struct.pack(">III", len(chunk), len(compressed), zlib.adler32(chunk))
        out += compressed
    return bytes(out + struct.pack(">I", 0))


def compress(data: bytes, fmt: str) -> bytes:
    """`data` compressed as the kernel's build does, without the size trailer."""
    if fmt == "gzip":
        return gzip.compress(data, 9, mtime=0)
    if fmt == "bzip2":
        return bz2.compress(data, 9)
    if fmt == "lzma":
        return lzma.compress(data, lzma.FORMAT_ALONE, preset=9)
    if fmt == "xz":
        filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 9}]
        return lzma.compress(data, lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    if fmt == "lz4":
        return lz4_legacy(data)
    if fmt == "zstd":
        return zstandard.ZstdCompressor(level=19, write_content_size=False, write_checksum=True).compress(
            data
        )
    if fmt == "lzo":
        return lzop(data)
    raise ValueError(fmt)


def payload(data: bytes, fmt: str = "gzip", size: int | None = None) -> bytes:
    """A kernel payload: the compressed stream and the u32 uncompressed size."""
    return compress(data, fmt) + struct.pack("<I", len(data) if size is None else size)


# Setup header fields: (offset, struct format), boot.rst "The Real-Mode Kernel Header".
FIELDS = {
    "setup_sects": (0x1F1, "B"),
    "syssize": (0x1F4, "I"),
    "vid_mode": (0x1FA, "H"),
    "boot_flag": (0x1FE, "H"),
    "jump": (0x200, "H"),
    "header": (0x202, "4s"),
    "version": (0x206, "H"),
    "kernel_version": (0x20E, "H"),
    "type_of_loader": (0x210, "B"),
    "loadflags": (0x211, "B"),
    "setup_move_size": (0x212, "H"),
    "code32_start": (0x214, "I"),
    "ramdisk_image": (0x218, "I"),
    "ramdisk_size": (0x21C, "I"),
    "heap_end_ptr": (0x224, "H"),
    "cmd_line_ptr": (0x228, "I"),
    "initrd_addr_max": (0x22C, "I"),
    "kernel_alignment": (0x230, "I"),
    "relocatable_kernel": (0x234, "B"),
    "min_alignment": (0x235, "B"),
    "xloadflags": (0x236, "H"),
    "cmdline_size": (0x238, "I"),
    "payload_offset": (0x248, "I"),
    "payload_length": (0x24C, "I"),
    "pref_address": (0x258, "Q"),
    "init_size": (0x260, "I"),
    "handover_offset": (0x264, "I"),
    "kernel_info_offset": (0x268, "I"),
}


@dataclass
class BzImage:
    """A bzImage: real-mode setup sectors with the header, then the protected-mode
    part: `lead` bytes (the decompressor's code), the payload, `tail` bytes."""

    payload: bytes = b""
    fields: dict[str, int | bytes] = field(default_factory=dict)
    setup_sects: int = 4
    lead: int = 0x200
    tail: int = 0x40

    def build(self) -> bytes:
        protected = code(self.lead, seed=4) + self.payload + code(self.tail, seed=5)
        protected += bytes(-len(protected) % 16)
        values: dict[str, int | bytes] = {
            "setup_sects": self.setup_sects,
            "syssize": len(protected) // 16,
            "vid_mode": 0xFFFF,
            "boot_flag": 0xAA55,
            "jump": 0x6AEB,  # jmp over the header: it ends at 0x202 + 0x6a = 0x26c
            "header": b"HdrS",
            "version": 0x020F,
            "kernel_version": 0x100,
            "loadflags": 0x01,  # LOADED_HIGH
            "setup_move_size": 0x8000,
            "code32_start": 0x100000,
            "heap_end_ptr": 0x5BE0,
            "initrd_addr_max": 0x7FFFFFFF,
            "kernel_alignment": 0x200000,
            "relocatable_kernel": 1,
            "min_alignment": 21,
            "xloadflags": 0x3,  # XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
            "cmdline_size": 2047,
            "payload_offset": self.lead,
            "payload_length": len(self.payload),
            "pref_address": KERNEL_PADDR,
            "init_size": 0x400000,
            "handover_offset": 0x190,
            "kernel_info_offset": 0x1000,
        }
        values.update(self.fields)
        setup = bytearray(code((self.setup_sects or 4) * 512 + 512, seed=3))
        for name, value in values.items():
            offset, fmt = FIELDS[name]
            struct.pack_into("<" + fmt, setup, offset, value)
        return bytes(setup) + protected


def bzimage(kernel: bytes | None = None, fmt: str = "gzip", **fields: int | bytes) -> bytes:
    """A bzImage whose payload is `kernel` (default: a PVH vmlinux) compressed as `fmt`."""
    return BzImage(payload(vmlinux() if kernel is None else kernel, fmt), dict(fields)).build()


def header_bytes(image: bytes) -> bytes:
    """The setup header as a boot loader copies it: 0x1f1 up to 0x202 + byte 0x201."""
    return image[0x1F1 : 0x202 + image[0x201]]
