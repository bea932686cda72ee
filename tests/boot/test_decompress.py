"""Host decompression of bzImage payloads (pyvmm.boot.decompress): every format the
kernel build makes, the LZ4 legacy frame and lzop containers, and the errors."""

from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import struct
import tracemalloc
import zlib
from pathlib import Path

import lz4.block  # type: ignore[import-untyped]
import pytest
import zstandard
from boot.linux_images import FORMATS, LZ4_LEGACY_MAGIC, BzImage, MiB, compress, lz4_legacy, lzop, payload

from pyvmm.boot import BootImages, load
from pyvmm.boot.decompress import Compression, decompress, split_payload
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

DATA = b"\x7fELF" + bytes(range(256)) * 64 + bytes(5000) + b"vmlinux" * 300


def unpack(raw: bytes) -> bytes:
    return decompress(split_payload(raw, "k"), "k")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format(fmt: str) -> None:
    raw = payload(DATA, fmt)
    split = split_payload(raw, "k")
    assert split.compression is Compression(fmt)
    assert split.size == len(DATA)
    assert len(split.stream) == len(raw) - 4
    assert decompress(split, "k") == DATA


def test_lz4_legacy_blocks_of_8_mib() -> None:
    data = bytes(LZ4_BLOCKS_PATTERN) * (9 * MiB // len(LZ4_BLOCKS_PATTERN)) + b"end"
    raw = lz4_legacy(data)
    (first,) = struct.unpack_from("<I", raw, 4)
    assert len(lz4.block.decompress(raw[8 : 8 + first], uncompressed_size=8 * MiB)) == 8 * MiB
    assert unpack(raw + struct.pack("<I", len(data))) == data


LZ4_BLOCKS_PATTERN = bytes(range(251)) + bytes(5)


def test_lz4_concatenated_legacy_frames_and_a_final_zero_size() -> None:
    a, b = b"first frame " * 100, b"second frame " * 100
    raw = lz4_legacy(a) + lz4_legacy(b) + bytes(4)
    assert unpack(raw + struct.pack("<I", len(a + b))) == a + b


def test_lz4_stops_at_another_frame_magic() -> None:
    frame_magic = struct.pack("<I", 0x184D2204)
    raw = lz4_legacy(DATA) + frame_magic + b"not a legacy block"
    assert unpack(raw + struct.pack("<I", len(DATA))) == DATA


def test_lz4_small_blocks() -> None:
    assert unpack(lz4_legacy(DATA, block=4096) + struct.pack("<I", len(DATA))) == DATA


def test_lzop_stored_block() -> None:
    noise = bytes((i * 2654435761 >> 13) & 0xFF for i in range(3000))
    assert unpack(lzop(noise) + struct.pack("<I", len(noise))) == noise


def test_unknown_compression() -> None:
    with pytest.raises(ImageError, match=r"^k: unknown kernel compression \(payload starts with 00 11 22"):
        split_payload(bytes.fromhex("0011223344556677") * 4, "k")


def test_empty_payload() -> None:
    with pytest.raises(ImageError, match="payload starts with nothing"):
        split_payload(b"", "k")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_stream(fmt: str) -> None:
    stream = compress(DATA, fmt)
    raw = stream[: len(stream) * 2 // 3] + struct.pack("<I", len(DATA))
    with pytest.raises(ImageError) as info:
        unpack(raw)
    message = str(info.value)
    assert message.startswith(f"k: {fmt} payload ") and "\n" not in message
    assert any(word in message for word in ("truncated", "corrupt", "size trailer"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_size_trailer_mismatch(fmt: str) -> None:
    with pytest.raises(ImageError, match=f"k: {fmt} payload .*size trailer says"):
        unpack(payload(DATA, fmt, size=len(DATA) - 1))
    with pytest.raises(ImageError, match=f"k: {fmt} payload"):
        unpack(payload(DATA, fmt, size=len(DATA) + 1))


def test_corrupt_gzip() -> None:
    stream = bytearray(gzip.compress(DATA))
    stream[30:40] = b"\xff" * 10
    with pytest.raises(ImageError, match="k: gzip payload is corrupt"):
        unpack(bytes(stream) + struct.pack("<I", len(DATA)))


def test_lz4_block_runs_past_the_end() -> None:
    raw = LZ4_LEGACY_MAGIC + struct.pack("<I", 0x1000) + b"short"
    with pytest.raises(ImageError, match="lz4 block of 0x1000 bytes at offset 0x8 runs past the end"):
        unpack(raw + struct.pack("<I", 100))


def test_lzop_header_checksum() -> None:
    raw = bytearray(lzop(DATA))
    raw[20] ^= 0x01  # inside the mode field
    with pytest.raises(ImageError, match="lzop header checksum mismatch"):
        unpack(bytes(raw) + struct.pack("<I", len(DATA)))


def test_lzop_block_checksum() -> None:
    raw = bytearray(lzop(DATA))
    header_end = 9 + 24 + 1 + len(b"vmlinux.bin") + 4
    struct.pack_into(">I", raw, header_end + 8, zlib.adler32(b"other"))
    with pytest.raises(ImageError, match="lzop block checksum mismatch"):
        unpack(bytes(raw) + struct.pack("<I", len(DATA)))


def test_lzop_other_method() -> None:
    raw = bytearray(lzop(DATA))
    raw[9 + 6] = 0x80  # method byte (after version, library version, version needed)
    with pytest.raises(ImageError, match="lzop method 128 is not LZO1X"):
        unpack(bytes(raw) + struct.pack("<I", len(DATA)))


def test_lzop_truncated_header() -> None:
    with pytest.raises(ImageError, match="truncated in the lzop"):
        unpack(lzop(DATA)[:20] + struct.pack("<I", len(DATA)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_stream_is_an_image_error_or_wrong_data(fmt: str) -> None:
    stream = bytearray(compress(DATA, fmt))
    middle = len(stream) // 2
    stream[middle : middle + 16] = bytes(b ^ 0x5A for b in stream[middle : middle + 16])
    try:
        out = unpack(bytes(stream) + struct.pack("<I", len(DATA)))
    except ImageError as exc:
        assert str(exc).startswith(f"k: {fmt} payload") and "\n" not in str(exc)
    else:  # LZ4 and LZO blocks carry no checksum of their own: garbage in, garbage out
        assert out != DATA


def test_corrupt_lz4_block() -> None:
    raw = LZ4_LEGACY_MAGIC + struct.pack("<I", 16) + b"\xff" * 16
    with pytest.raises(ImageError, match=r"^k: lz4 payload is corrupt: "):
        unpack(raw + struct.pack("<I", 100))


def test_corrupt_lzo_block() -> None:
    raw = bytearray(lzop(DATA))
    header_end = 9 + 24 + 1 + len(b"vmlinux.bin") + 4
    raw[header_end + 12 : header_end + 28] = b"\xff" * 16
    with pytest.raises(ImageError, match=r"^k: lzo payload is corrupt: "):
        unpack(bytes(raw) + struct.pack("<I", len(DATA)))


# Decompression bombs: 80 MiB of zeros in a few KiB, more than the 64 MiB guest. The
# fast levels keep the set of them under 3 s to build.
BOMB_SIZE = 80 * MiB
BOMBS = {
    "gzip": lambda data: gzip.compress(data, 1, mtime=0),
    "bzip2": lambda data: bz2.compress(data, 1),
    "lzma": lambda data: lzma.compress(data, lzma.FORMAT_ALONE, preset=0),
    "xz": lambda data: lzma.compress(data, lzma.FORMAT_XZ, preset=0),
    "lz4": lz4_legacy,
    "zstd": lambda data: zstandard.ZstdCompressor(level=1, write_content_size=False).compress(data),
    "zstd-content-size": lambda data: zstandard.ZstdCompressor(level=1).compress(data),  # RFC 8878 FCS
    "lzo": lambda data: lzop(data, block=8 * MiB),
}


@functools.cache
def bomb(kind: str) -> bytes:
    return BOMBS[kind](bytes(BOMB_SIZE))


@pytest.mark.parametrize("kind", list(BOMBS))
def test_a_payload_that_inflates_past_its_trailer_stops_early(
    kind: str, memory: GuestMemory, tmp_path: Path
) -> None:
    """The trailer says 1 MiB; the stream holds 80. Decompression stops at the trailer's
    size (one lz4 block of 8 MiB at most past it), not at the end of the stream."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(BzImage(bomb(kind) + struct.pack("<I", MiB)).build())
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=r"vmlinuz: zstd|vmlinuz: " + kind.split("-")[0]) as info:
            load(memory, BootImages(kernel))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "size trailer" in str(info.value)
    assert peak < 24 * MiB, f"{peak >> 20} MiB of host memory for a 1 MiB kernel"


@pytest.mark.parametrize("kind", ["gzip", "zstd-content-size"])
def test_a_payload_bigger_than_ram_is_refused_before_decompression(
    kind: str, memory: GuestMemory, tmp_path: Path
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(BzImage(bomb(kind) + struct.pack("<I", BOMB_SIZE)).build())
    with pytest.raises(ImageError, match=r"kernel too big for RAM: the \w+ payload unpacks to 80 MiB"):
        load(memory, BootImages(kernel))


def test_lzma_dictionary_size_from_the_header_is_bounded() -> None:
    """A .lzma header may declare a 4 GiB dictionary, which liblzma would allocate."""
    stream = bytearray(lzma.compress(DATA, lzma.FORMAT_ALONE, preset=0))
    stream[1:5] = struct.pack("<I", 0xFFFF_FF00)  # after the properties byte: the dictionary size
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=r"^k: lzma payload is corrupt: Memory usage limit"):
            unpack(bytes(stream) + struct.pack("<I", len(DATA)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 96 * MiB
