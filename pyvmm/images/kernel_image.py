"""What a Linux kernel image says about itself: the bzImage setup header, the
compression of its payload, the uncompressed ELF inside it, and the PVH entry note.

Sources: the kernel's Documentation/arch/x86/boot.rst ("The real-mode kernel
header", protocol 2.08+ payload fields) and the Xen public header elfnote.h
(XEN_ELFNOTE_PHYS32_ENTRY, the note a PVH loader looks for).
"""

from __future__ import annotations

import lzma
import struct
import subprocess
import zlib
from dataclasses import dataclass

# Offsets in the bzImage file (boot.rst, "The real-mode kernel header").
SETUP_SECTS = 0x1F1
BOOT_FLAG = 0x1FE
HEADER_MAGIC = 0x202
VERSION = 0x206
KERNEL_VERSION = 0x20E
LOADFLAGS = 0x211
XLOADFLAGS = 0x236
PAYLOAD_OFFSET = 0x248
PAYLOAD_LENGTH = 0x24C
INIT_SIZE = 0x260
SECTOR = 512
BOOT_FLAG_VALUE = 0xAA55
HDRS = b"HdrS"

XEN_ELFNOTE_PHYS32_ENTRY = 18
_NT_NAME_XEN = b"Xen\0"
_PT_NOTE = 4

# Leading bytes of each payload format (the kernel's compressed/Makefile choices).
_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x89LZO", "lzo"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x7fELF", "none"),
)


@dataclass(frozen=True)
class SetupHeader:
    protocol: tuple[int, int]
    setup_sects: int
    loadflags: int
    xloadflags: int
    payload_offset: int
    payload_length: int
    init_size: int
    kernel_version: str

    @property
    def protocol_text(self) -> str:
        return f"{self.protocol[0]}.{self.protocol[1]:02d}"

    @property
    def payload_start(self) -> int:
        """File offset of the compressed payload (it follows the real-mode setup)."""
        return (self.setup_sects + 1) * SECTOR + self.payload_offset


def read_setup_header(image: bytes) -> SetupHeader:
    if len(image) < INIT_SIZE + 4 or image[HEADER_MAGIC:HEADER_MAGIC + 4] != HDRS:
        raise ValueError("not a bzImage: no 'HdrS' setup header")
    if struct.unpack_from("<H", image, BOOT_FLAG)[0] != BOOT_FLAG_VALUE:
        raise ValueError("not a bzImage: no 0xAA55 boot flag")
    version = struct.unpack_from("<H", image, VERSION)[0]
    if version < 0x208:
        raise ValueError(f"boot protocol {version >> 8}.{version & 0xFF:02d} is older than 2.08")
    setup_sects = image[SETUP_SECTS] or 4  # 0 means 4, for ancient kernels
    return SetupHeader(
        protocol=(version >> 8, version & 0xFF),
        setup_sects=setup_sects,
        loadflags=image[LOADFLAGS],
        xloadflags=struct.unpack_from("<H", image, XLOADFLAGS)[0],
        payload_offset=struct.unpack_from("<I", image, PAYLOAD_OFFSET)[0],
        payload_length=struct.unpack_from("<I", image, PAYLOAD_LENGTH)[0],
        init_size=struct.unpack_from("<I", image, INIT_SIZE)[0],
        kernel_version=_kernel_version(image),
    )


def _kernel_version(image: bytes) -> str:
    pointer = struct.unpack_from("<H", image, KERNEL_VERSION)[0]
    if not pointer:
        return ""
    start = pointer + SECTOR  # the field points 0x200 bytes before the string
    end = image.find(b"\0", start, start + 256)
    return image[start:end].decode(errors="replace") if end > start else ""


def compression_of(payload: bytes) -> str:
    for magic, name in _COMPRESSION_MAGIC:
        if payload.startswith(magic):
            return name
    return "unknown"


def payload_of(image: bytes, header: SetupHeader | None = None) -> bytes:
    header = header or read_setup_header(image)
    start = header.payload_start
    payload = image[start:start + header.payload_length]
    if len(payload) != header.payload_length:
        raise ValueError("bzImage payload runs past the end of the file")
    return payload


def decompress_payload(payload: bytes) -> bytes:
    """The uncompressed payload (the kernel's ELF, maybe followed by relocations).

    The kernel build appends the uncompressed size (32-bit LE) to every payload
    (for gzip it is the format's own trailer); it checks the result. Decompressors
    that stop at their end marker ignore it; lz4's legacy frame would read it as
    a block, so it is cut off first."""
    kind = compression_of(payload)
    expected = struct.unpack_from("<I", payload, len(payload) - 4)[0]
    if kind == "gzip":
        data = zlib.decompressobj(wbits=31).decompress(payload)
    elif kind == "xz":
        data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif kind == "lzma":
        data = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
    elif kind in _EXTERNAL_TOOLS:
        data = _decompress_with_tool(_EXTERNAL_TOOLS[kind], payload[:-4])
    elif kind == "none":
        return payload
    else:
        raise ValueError(f"cannot unpack a {kind} kernel payload")
    if len(data) != expected:
        raise ValueError(f"{kind} payload unpacked to {len(data)} bytes, the image says {expected}")
    return data


_EXTERNAL_TOOLS = {"lz4": ["lz4", "-d", "-c"], "zstd": ["zstd", "-d", "-c", "-q"]}


def _decompress_with_tool(tool: list[str], data: bytes) -> bytes:
    try:
        result = subprocess.run(tool, input=data, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise ValueError(f"{tool[0]} is needed to unpack this kernel") from exc
    if result.returncode != 0:
        raise ValueError(f"{tool[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def elf_extent(elf: bytes) -> int:
    """Where a 64-bit ELF file's own bytes end. The bzImage payload may carry the
    relocation table after the ELF (CONFIG_X86_NEED_RELOCS), which is not part of it."""
    if not elf.startswith(b"\x7fELF\x02\x01"):
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff, shoff = struct.unpack_from("<QQ", elf, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", elf, 0x36)
    end = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    for index in range(phnum):
        offset, filesz = _program_header(elf, phoff + index * phentsize)[1:3]
        end = max(end, offset + filesz)
    for index in range(shnum):
        base = shoff + index * shentsize
        sh_type = struct.unpack_from("<I", elf, base + 4)[0]
        sh_offset, sh_size = struct.unpack_from("<QQ", elf, base + 0x18)
        if sh_type != 8:  # SHT_NOBITS has no bytes in the file
            end = max(end, sh_offset + sh_size)
    return min(int(end), len(elf))


def _program_header(elf: bytes, base: int) -> tuple[int, int, int]:
    p_type = struct.unpack_from("<I", elf, base)[0]
    p_offset = struct.unpack_from("<Q", elf, base + 8)[0]
    p_filesz = struct.unpack_from("<Q", elf, base + 0x20)[0]
    return p_type, p_offset, p_filesz


def pvh_entry(elf: bytes) -> int | None:
    """The 32-bit PVH entry point from the ELF's Xen PHYS32_ENTRY note, if any."""
    if not elf.startswith(b"\x7fELF\x02\x01"):
        return None
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        p_type, offset, size = _program_header(elf, phoff + index * phentsize)
        if p_type != _PT_NOTE:
            continue
        position, end = offset, offset + size
        while position + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, position)
            name_at = position + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            if note_type == XEN_ELFNOTE_PHYS32_ENTRY and elf[name_at:name_at + namesz] == _NT_NAME_XEN:
                width = "<I" if descsz == 4 else "<Q"
                entry: int = struct.unpack_from(width, elf, desc_at)[0]
                return entry
            position = desc_at + (descsz + 3) // 4 * 4
    return None


def describe(image: bytes) -> dict[str, object]:
    """The facts the manifest records about a bzImage."""
    header = read_setup_header(image)
    return {
        "boot_protocol": header.protocol_text,
        "compression": compression_of(payload_of(image, header)),
        "kernel_version": header.kernel_version,
        "init_size": header.init_size,
    }
