"""Host-side decompression of a bzImage payload (Linux boot.rst, "payload_offset").

The payload is what arch/x86/boot/compressed/Makefile packs: the vmlinux (followed by
its relocation table on KASLR kernels) compressed as one stream of the configured
format, then the uncompressed size as a little-endian u32 (``size_append`` in
scripts/Makefile.lib). The format is told by its magic number, as boot.rst asks.

Two formats come in containers that no Python library reads whole:
- LZ4 uses the *legacy* frame (LZ4 Frame Format 1.6.x, "Legacy frame"): the magic
  0x184C2102, then blocks, each a u32 little-endian compressed size and an LZ4 block
  of at most 8 MiB of output; no end mark: the frame ends at the end of the data,
  a zero size, or a size that is another frame's magic number.
- LZO uses lzop's file format: a header (magic, versions, method, flags, mode, mtime,
  name, checksum), then blocks of u32 big-endian uncompressed and compressed sizes,
  the checksums the header flags ask for, and LZO1X data; a zero size ends it.

Every failure is one `ImageError` line naming the file; the output never grows past
the size the trailer announces, which the caller has checked against guest RAM.
"""

from __future__ import annotations

import bz2
import enum
import lzma
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pyvmm.errors import ImageError

SIZE_TRAILER = struct.Struct("<I")


class Compression(enum.Enum):
    GZIP = "gzip"
    BZIP2 = "bzip2"
    LZMA = "lzma"
    XZ = "xz"
    LZO = "lzo"
    LZ4 = "lz4"
    ZSTD = "zstd"


# boot.rst "payload_offset" lists the first two bytes; longer magics where the
# format has them, so that a stray 0x5d00 or "BZ" is less likely to be mistaken.
MAGICS: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", Compression.GZIP),  # RFC 1952 §2.3.1 ID1 ID2
    (b"BZh", Compression.BZIP2),
    (b"\x5d\x00", Compression.LZMA),  # .lzma properties byte lc=3 lp=0 pb=2, then dictionary size
    (b"\xfd7zXZ\x00", Compression.XZ),  # .xz file format 1.0.4 §2.1.1.1
    (b"\x89LZO\x00\r\n\x1a\n", Compression.LZO),  # lzop
    (b"\x02\x21\x4c\x18", Compression.LZ4),  # legacy frame magic 0x184C2102, little-endian
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),  # RFC 8878 §3.1.1 magic 0xFD2FB528
)

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20  # uncompressed bytes per legacy block
LZ4_FRAME_MAGIC = 0x184D2204
LZ4_SKIPPABLE_MAGICS = range(0x184D2A50, 0x184D2A60)

# lzop header and block flags (lzop's conf.h, F_*)
LZOP_ADLER32_D = 0x0001
LZOP_ADLER32_C = 0x0002
LZOP_EXTRA_FIELD = 0x0040
LZOP_CRC32_D = 0x0100
LZOP_CRC32_C = 0x0200
LZOP_H_FILTER = 0x0800
LZOP_H_CRC32 = 0x1000
LZOP_LZO1X_METHODS = (1, 2, 3)  # M_LZO1X_1, M_LZO1X_1_15, M_LZO1X_999
LZOP_NEW_HEADER_VERSION = 0x0940  # from this version on: version_needed, level, mtime_high


@dataclass(frozen=True)
class Payload:
    """A compressed payload and what its trailer says it holds."""

    compression: Compression
    stream: bytes  # the compressed data, without the size trailer
    size: int  # the uncompressed size from the trailer


def detect(payload: bytes) -> Compression | None:
    for magic, compression in MAGICS:
        if payload.startswith(magic):
            return compression
    return None


def split_payload(payload: bytes, name: str) -> Payload:
    """Tell the format and read the size trailer; the data is not touched yet."""
    compression = detect(payload)
    if compression is None:
        raise ImageError(
            f"{name}: unknown kernel compression (payload starts with {payload[:6].hex(' ') or 'nothing'})"
        )
    if len(payload) < SIZE_TRAILER.size + 8:
        raise ImageError(f"{name}: truncated: the {compression.value} payload is {len(payload)} bytes")
    (size,) = SIZE_TRAILER.unpack_from(payload, len(payload) - SIZE_TRAILER.size)
    return Payload(compression, payload[: -SIZE_TRAILER.size], size)


def decompress(payload: Payload, name: str) -> bytes:
    """The uncompressed payload; exactly `payload.size` bytes or an ImageError."""
    what = f"{name}: {payload.compression.value} payload"
    try:
        data = _DECODERS[payload.compression](payload.stream, payload.size, what)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, MemoryError) as exc:
        raise _corrupt(what, exc) from None
    if len(data) != payload.size:
        raise ImageError(
            f"{what} decompresses to {len(data):#x} bytes but its size trailer says {payload.size:#x}"
        )
    return data


def _corrupt(what: str, exc: BaseException) -> ImageError:
    """One line from a codec's exception (lzallright puts the partial output in args)."""
    text = str(exc.args[0]) if exc.args and not isinstance(exc.args[0], bytes) else ""
    reason = text.splitlines()[0][:120] if text.strip() else type(exc).__name__
    return ImageError(f"{what} is corrupt: {reason}")


class _Streaming(Protocol):
    """Decoders of the standard library: decompress(data, max_length), eof."""

    def decompress(self, data: bytes, max_length: int = -1, /) -> bytes: ...

    @property
    def eof(self) -> bool: ...


def _bounded(decoder: _Streaming, stream: bytes, size: int, what: str) -> bytes:
    # One byte more than announced shows a payload that is larger than its trailer.
    data = decoder.decompress(stream, size + 1)
    if len(data) > size:
        raise ImageError(f"{what} decompresses to more than the {size:#x} bytes its size trailer says")
    if not decoder.eof:
        raise ImageError(f"{what} is truncated: the stream ends after {len(data):#x} bytes of output")
    return data


def _gzip(stream: bytes, size: int, what: str) -> bytes:
    return _bounded(zlib.decompressobj(wbits=16 + zlib.MAX_WBITS), stream, size, what)


def _bzip2(stream: bytes, size: int, what: str) -> bytes:
    return _bounded(bz2.BZ2Decompressor(), stream, size, what)


# The dictionary liblzma allocates is the size the stream's header declares (up to
# 4 GiB in .lzma, 1.5 GiB in .xz), whatever the output. Allow what the kernel's own
# build uses (lzma -9: 64 MiB; scripts/xz_wrap.sh: 32 MiB), or the output's size if
# larger (a dictionary never needs to exceed the data), plus the decoder's tables.
LZMA_DICTIONARY_ALLOWANCE = 64 << 20
LZMA_TABLES = 1 << 20


def _lzma_memlimit(size: int) -> int:
    return max(size, LZMA_DICTIONARY_ALLOWANCE) + LZMA_TABLES


def _lzma(stream: bytes, size: int, what: str) -> bytes:
    decoder = lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=_lzma_memlimit(size))
    return _bounded(decoder, stream, size, what)


def _xz(stream: bytes, size: int, what: str) -> bytes:
    decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=_lzma_memlimit(size))
    return _bounded(decoder, stream, size, what)


def _zstd(stream: bytes, size: int, what: str) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise ImageError(f"{what} needs the zstandard package (or --kernel-decompress guest)") from None
    # The kernel's zstd22 uses windows up to 128 MiB; allow the format's largest.
    decoder = zstandard.ZstdDecompressor(max_window_size=1 << 31)
    try:
        # A frame that declares its content size (RFC 8878 §3.1.1.1.4) is decompressed
        # into a buffer of that size whatever max_output_size says: hold it to the
        # trailer first, or a 20-byte header could ask the host for terabytes.
        declared = zstandard.frame_content_size(stream)
        if declared >= 0 and declared != size:
            raise ImageError(
                f"{what} declares {declared:#x} bytes in its zstd frame header but its size trailer "
                f"says {size:#x}"
            )
        return decoder.decompress(stream, max_output_size=size, allow_extra_data=True)
    except zstandard.ZstdError as exc:
        # Output past max_output_size and a broken frame give the same error; a
        # bounded read of one byte more than announced tells them apart.
        try:
            longer = len(decoder.stream_reader(stream, read_across_frames=False).read(size + 1)) > size
        except zstandard.ZstdError:
            longer = False
        if longer:
            raise ImageError(
                f"{what} decompresses to more than the {size:#x} bytes its size trailer says"
            ) from None
        raise _corrupt(what, exc) from None


def _lz4(stream: bytes, size: int, what: str) -> bytes:
    try:
        import lz4.block  # type: ignore[import-untyped]
    except ImportError:
        raise ImageError(f"{what} needs the lz4 package (or --kernel-decompress guest)") from None
    u32 = struct.Struct("<I")
    out = bytearray()
    position = 0
    while position + u32.size <= len(stream):
        (block_size,) = u32.unpack_from(stream, position)
        if block_size == LZ4_LEGACY_MAGIC:  # another legacy frame follows
            position += u32.size
            continue
        if block_size == 0 or block_size == LZ4_FRAME_MAGIC or block_size in LZ4_SKIPPABLE_MAGICS:
            break
        position += u32.size
        if position + block_size > len(stream):
            raise ImageError(
                f"{what} is truncated: an lz4 block of {block_size:#x} bytes at offset {position:#x} "
                f"runs past the end ({len(stream):#x})"
            )
        block = stream[position : position + block_size]
        try:
            out += lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError as exc:
            raise _corrupt(what, exc) from None
        if len(out) > size:
            raise ImageError(f"{what} decompresses to more than the {size:#x} bytes its size trailer says")
        position += block_size
    if position != len(stream) and len(stream) - position < u32.size:
        raise ImageError(f"{what} is truncated: {len(stream) - position} stray bytes after an lz4 block")
    return bytes(out)


class _Reader:
    """Big-endian fields of an lzop file, with a truncation error naming the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.what, self.position = data, what, 0

    def take(self, count: int, field: str) -> bytes:
        if self.position + count > len(self.data):
            raise ImageError(f"{self.what} is truncated in the lzop {field} at offset {self.position:#x}")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")


def _lzo(stream: bytes, size: int, what: str) -> bytes:
    try:
        import lzallright
    except ImportError:
        raise ImageError(f"{what}: lzo kernels need lzallright, or --kernel-decompress guest") from None
    reader = _Reader(stream, what)
    flags = _lzop_header(reader, what)
    data_checksum = _lzop_checksum(flags & LZOP_CRC32_D, flags & LZOP_ADLER32_D)
    out = bytearray()
    while True:
        dst_len = reader.u32("block size")
        if dst_len == 0:
            break
        src_len = reader.u32("compressed block size")
        if len(out) + dst_len > size:
            raise ImageError(f"{what} decompresses to more than the {size:#x} bytes its size trailer says")
        if src_len > dst_len or src_len == 0:
            raise ImageError(f"{what} is corrupt: lzop block of {src_len:#x} bytes for {dst_len:#x}")
        expected_d = reader.u32("block checksum") if data_checksum else None
        if flags & (LZOP_ADLER32_C | LZOP_CRC32_C) and src_len < dst_len:
            reader.u32("compressed block checksum")
        block = reader.take(src_len, "block data")
        try:
            data = block if src_len == dst_len else lzallright.LZOCompressor.decompress(block, dst_len)
        except lzallright.LZOError as exc:
            raise _corrupt(what, exc) from None
        if len(data) != dst_len:
            raise ImageError(f"{what} is corrupt: an lzop block gave {len(data):#x} bytes, not {dst_len:#x}")
        if data_checksum is not None and data_checksum(data) != expected_d:
            raise ImageError(f"{what} is corrupt: lzop block checksum mismatch before {reader.position:#x}")
        out += data
    return bytes(out)


def _lzop_checksum(crc32: int, adler32: int) -> Callable[[bytes], int] | None:
    """lzop's checksums are zlib's: CRC-32 from 0, Adler-32 from 1."""
    if crc32:
        return zlib.crc32
    return zlib.adler32 if adler32 else None


def _lzop_header(reader: _Reader, what: str) -> int:
    """Check an lzop file header and return its flags."""
    reader.take(9, "magic")
    start = reader.position
    version = reader.u16("version")
    reader.u16("library version")
    new = version >= LZOP_NEW_HEADER_VERSION
    if new:
        reader.u16("version needed")
    method = reader.u8("method")
    if method not in LZOP_LZO1X_METHODS:
        raise ImageError(f"{what}: lzop method {method} is not LZO1X")
    if new:
        reader.u8("level")
    flags = reader.u32("flags")
    if flags & (LZOP_H_FILTER | LZOP_EXTRA_FIELD):
        raise ImageError(f"{what}: lzop filters and extra header fields are not supported (flags {flags:#x})")
    reader.take(12 if new else 8, "mode and modification time")
    name_length = reader.u8("file name length")
    reader.take(name_length, "file name")
    header = reader.data[start : reader.position]
    checksum = _lzop_checksum(flags & LZOP_H_CRC32, 1)
    if checksum is not None and reader.u32("header checksum") != checksum(header):
        raise ImageError(f"{what} is corrupt: lzop header checksum mismatch")
    return flags


_DECODERS: dict[Compression, Callable[[bytes, int, str], bytes]] = {
    Compression.GZIP: _gzip,
    Compression.BZIP2: _bzip2,
    Compression.LZMA: _lzma,
    Compression.XZ: _xz,
    Compression.LZO: _lzo,
    Compression.LZ4: _lz4,
    Compression.ZSTD: _zstd,
}
