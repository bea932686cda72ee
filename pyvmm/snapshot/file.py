"""The snapshot file: named byte parts (the machine's encoded configuration and saved
states) and guest memory, written atomically and sparse, read back with every header
and part byte checked, memory mapped lazily.

Layout (version 1, integers little-endian; every offset from the start of the file):

    header   prologue (48 bytes): magic, version, flags, part count, region count,
             metadata length, memory offset, file length
             part table: per part its name (64 bytes, UTF-8, NUL-padded), offset,
             length and BLAKE2b-256 digest
             memory table: per RAM region its guest physical address, size, file
             offset, count of non-zero pages and checksum (memory_image.py)
             BLAKE2b-256 digest of all the header before it
    parts    back to back, in table order, up to the metadata length
    padding  zeros, up to the memory offset (the next page boundary)
    memory   each region's image at a page-aligned offset, back to back, to the end
             of the file; pages that were zero are holes

Everything is canonical: a reader accepts exactly the bytes the writer produces for
the same input (parts tile the metadata, images tile the memory, padding is zero, the
file ends where the header says), so a changed or truncated header, part or padding
byte is always refused. BLAKE2b for the metadata: strong, in the standard library,
and its speed does not matter for kilobytes. Guest memory is not read at restore
(that would make restore time grow with RAM): its checksum is checked only when
asked (`read_snapshot(path, verify_memory=True)`, `SnapshotFile.verify_memory()`).

Firecracker keeps the same split (a checked state file, a memory file mapped
MAP_PRIVATE); here both live in one file, so one rename replaces a snapshot whole.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import stat
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Self

from pyvmm.errors import StateError
from pyvmm.memory import PAGE_SIZE, GuestMemory
from pyvmm.snapshot.memory_image import image_summary, pwrite_all, write_image

log = logging.getLogger(__name__)

MAGIC = b"\x89PYVMM\r\n"  # PNG's trick: a high byte and CRLF catch text-mode copies
VERSION = 1
MAX_PARTS = 256
MAX_REGIONS = 64
MAX_NAME = 64  # bytes of a part's UTF-8 name
MAX_METADATA = 64 << 20  # header and parts: what a reader will hold in memory
MAX_GPA = 1 << 52  # x86-64's physical address width at most (SDM vol. 3A §4.1.4)
_FIRST_READ = 64 << 10  # the header and parts of a usual snapshot, in one read

_PROLOGUE = struct.Struct("<8sIIIIQQQ")
_PART = struct.Struct(f"<{MAX_NAME}sQQ32s")
_REGION = struct.Struct("<QQQQQ")
_DIGEST_SIZE = 32

ProgressCallback = Callable[[int, int], None]


class SnapshotError(StateError):
    """A snapshot file cannot be written, or is not one this pyvmm can restore."""


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE).digest()


def _page_align(value: int) -> int:
    return -(-value // PAGE_SIZE) * PAGE_SIZE


def _header_size(parts: int, regions: int) -> int:
    return _PROLOGUE.size + parts * _PART.size + regions * _REGION.size + _DIGEST_SIZE


@dataclass(frozen=True)
class MemoryImage:
    """One RAM region in the file: guest address, size, and where its image starts."""

    gpa: int
    size: int
    file_offset: int
    data_pages: int  # pages not zero when saved
    checksum: int  # memory_image.ImageDigest


@dataclass(frozen=True)
class SnapshotInfo:
    """What `write_snapshot` wrote."""

    path: str
    size: int  # the file's length (holes included)
    written: int  # bytes written: header, parts and non-zero pages
    allocated: int  # disk blocks the file takes, in bytes (st_blocks * 512)


class SnapshotFile:
    """A checked snapshot file, open: its parts, its memory table, and its fd (kept
    open for `guest_memory`; close it when the restore is done, the memory keeps its
    own duplicate)."""

    def __init__(
        self,
        path: str,
        fd: int,
        version: int,
        parts: dict[str, bytes],
        regions: tuple[MemoryImage, ...],
    ) -> None:
        self.path = path
        self.version = version
        self.parts: Mapping[str, bytes] = MappingProxyType(parts)
        self.regions = regions
        self._fd = fd

    def guest_memory(self, layout: Sequence[tuple[int, int]] | None = None) -> GuestMemory:
        """The guest's RAM, mapped MAP_PRIVATE from this file (`GuestMemory.from_file`):
        nothing is read now, and the guest's writes never reach the file. With
        `layout` (each RAM range's (gpa, size), as `GuestMemory(layout)` takes: the
        machine's configuration), a `SnapshotError` unless the file's regions are
        exactly those: the file's own table is checked, but only the caller knows
        where RAM may be."""
        found = [(r.gpa, r.size) for r in self.regions]
        if layout is not None and sorted(layout) != found:
            raise SnapshotError(
                f"{self.path}: guest memory {_ranges(found)}, the machine has {_ranges(layout)}"
            )
        return GuestMemory.from_file(self._fd, [(r.gpa, r.size, r.file_offset) for r in self.regions])

    def verify_memory(self) -> None:
        """Read every stored memory page and compare with the checksums: a
        `SnapshotError` when they differ. Costs a read of all the saved memory."""
        for region in self.regions:
            try:
                found = image_summary(self._fd, region.file_offset, region.size)
            except OSError as exc:
                raise SnapshotError(f"{self.path}: cannot read guest memory: {exc}") from exc
            if (found.data_pages, found.checksum) != (region.data_pages, region.checksum):
                raise SnapshotError(
                    f"{self.path}: guest memory at {region.gpa:#x} does not match its checksum"
                )

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ranges(layout: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{gpa:#x}+{size:#x}" for gpa, size in sorted(layout)) or "none"


@dataclass(frozen=True)
class _Layout:
    """Where everything goes in a file, from the parts' and regions' sizes."""

    header_size: int
    metadata_length: int
    memory_offset: int
    file_length: int
    part_offsets: tuple[int, ...]
    image_offsets: tuple[int, ...]


def _layout(part_lengths: list[int], region_sizes: list[int]) -> _Layout:
    header = _header_size(len(part_lengths), len(region_sizes))
    part_offsets = []
    position = header
    for length in part_lengths:
        part_offsets.append(position)
        position += length
    metadata_length = position
    memory_offset = _page_align(metadata_length)
    image_offsets = []
    position = memory_offset
    for size in region_sizes:
        image_offsets.append(position)
        position += size
    return _Layout(
        header, metadata_length, memory_offset, position, tuple(part_offsets), tuple(image_offsets)
    )


# ---------------------------------------------------------------- the writer


def _encode_names(parts: Mapping[str, bytes]) -> list[tuple[bytes, bytes]]:
    if len(parts) > MAX_PARTS:
        raise SnapshotError(f"{len(parts)} snapshot parts, at most {MAX_PARTS}")
    encoded = []
    for name, data in parts.items():
        if not isinstance(name, str) or not isinstance(data, bytes | bytearray | memoryview):
            raise SnapshotError(f"snapshot part {name!r}: a part is a str name and bytes")
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError:
            raw = b""
        if not raw or len(raw) > MAX_NAME or b"\0" in raw:
            raise SnapshotError(f"snapshot part name {name!r}: 1 to {MAX_NAME} bytes of UTF-8, no NUL")
        encoded.append((raw, bytes(data)))
    return encoded


def _header(layout: _Layout, parts: list[tuple[bytes, bytes]], images: list[MemoryImage]) -> bytes:
    prologue = _PROLOGUE.pack(
        MAGIC,
        VERSION,
        0,
        len(parts),
        len(images),
        layout.metadata_length,
        layout.memory_offset,
        layout.file_length,
    )
    table = [
        _PART.pack(name, offset, len(data), _digest(data))
        for (name, data), offset in zip(parts, layout.part_offsets, strict=True)
    ]
    table += [_REGION.pack(i.gpa, i.size, i.file_offset, i.data_pages, i.checksum) for i in images]
    body = b"".join([prologue, *table])
    return body + _digest(body)


def write_snapshot(
    path: str | os.PathLike[str],
    parts: Mapping[str, bytes],
    memory: GuestMemory,
    progress: ProgressCallback | None = None,
) -> SnapshotInfo:
    """Write a snapshot of `parts` and `memory` to `path`, atomically.

    The file is built under a temporary name in the same directory, fsynced, renamed
    over `path` and the directory fsynced (rename(2)): whatever happens before the
    rename (an error, an exception from `progress`, kill -9, a crash), `path` still
    holds the snapshot it held before, and a failure removes the temporary file (a
    killed writer leaves it, hidden as ``.NAME.*.tmp``). Only the pages of `memory`
    that hold something are written (memory_image.py); the rest are holes.
    `progress(done, total)` is called as the memory is saved, in bytes of guest RAM;
    `done` reaches `total` once the new snapshot is in place. The guest must not run
    meanwhile. Errors, from the parts given to a full disk, are `SnapshotError`s.
    """
    path = os.fspath(path)
    encoded = _encode_names(parts)
    regions = memory.regions
    if not regions or len(regions) > MAX_REGIONS or regions[-1].end > MAX_GPA:
        raise SnapshotError(
            f"guest memory of {len(regions)} regions: a snapshot holds 1 to {MAX_REGIONS} below {MAX_GPA:#x}"
        )
    layout = _layout([len(data) for _, data in encoded], [r.size for r in regions])
    if layout.metadata_length > MAX_METADATA:
        raise SnapshotError(f"snapshot parts of {layout.metadata_length} bytes, at most {MAX_METADATA}")
    report = progress or (lambda done, total: None)
    directory, name = os.path.split(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise SnapshotError(f"cannot write a snapshot in {directory}: {exc.strerror or exc}") from exc
    try:
        try:
            written = _write_contents(fd, layout, encoded, memory, report)
            os.fsync(fd)
            allocated = os.fstat(fd).st_blocks * 512
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException as exc:
        _remove(temporary)
        if isinstance(exc, OSError):
            raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror or exc}") from exc
        raise
    _sync_directory(directory, path)
    report(memory.size, memory.size)
    log.debug("snapshot %s: %d bytes, %d written, %d allocated", path, layout.file_length, written, allocated)
    return SnapshotInfo(path, layout.file_length, written, allocated)


def _write_contents(
    fd: int, layout: _Layout, parts: list[tuple[bytes, bytes]], memory: GuestMemory, report: ProgressCallback
) -> int:
    """Memory first, then parts and header (which hold the memory's checksums)."""
    os.ftruncate(fd, layout.file_length)  # all holes until written
    total, done = memory.size, 0
    report(0, total)
    images = []
    for region, offset in zip(memory.regions, layout.image_offsets, strict=True):
        summary = write_image(fd, region, offset, functools.partial(_report_region, report, done, total))
        done += region.size
        images.append(MemoryImage(region.gpa, region.size, offset, summary.data_pages, summary.checksum))
    metadata = _header(layout, parts, images) + b"".join(data for _, data in parts)
    pwrite_all(fd, metadata, 0)
    return len(metadata) + sum(image.data_pages for image in images) * PAGE_SIZE


def _report_region(report: ProgressCallback, base: int, total: int, done: int) -> None:
    # `total` only once the file is in place: the fsync can be the longest step
    report(min(base + done, total - 1), total)


def _remove(temporary: str) -> None:
    try:
        os.unlink(temporary)
    except OSError as exc:
        log.warning("cannot remove %s: %s", temporary, exc)


def _sync_directory(directory: str, path: str) -> None:
    """Make the rename durable (fsync(2) on the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SnapshotError(
            f"snapshot {path} was written, but its directory cannot be synced: {exc}"
        ) from exc


# ---------------------------------------------------------------- the reader


def read_snapshot(path: str | os.PathLike[str], *, verify_memory: bool = False) -> SnapshotFile:
    """Open and check a snapshot file: a `SnapshotError` for anything but a whole,
    unchanged snapshot of this format version (another version, another kind of
    file, truncation, a table entry out of place, a checksum mismatch, absurd
    counts); never another exception. Header and parts are read in one or two
    pread(2) calls; guest memory is not read unless `verify_memory`."""
    path = os.fspath(path)
    try:
        # O_NONBLOCK: a FIFO given as the path must not hang the open
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise SnapshotError(f"cannot open snapshot {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        snapshot = _read(path, fd)
    except BaseException:
        os.close(fd)
        raise
    if verify_memory:
        try:
            snapshot.verify_memory()
        except BaseException:
            snapshot.close()
            raise
    return snapshot


def _read(path: str, fd: int) -> SnapshotFile:
    def refuse(reason: str) -> SnapshotError:
        return SnapshotError(f"{path}: {reason}")

    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise refuse("not a regular file")
        head = os.pread(fd, _FIRST_READ, 0)
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror or exc}") from exc
    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        raise refuse("not a pyvmm snapshot")
    if len(head) < _PROLOGUE.size:
        raise refuse("truncated")
    _, version, flags, part_count, region_count, metadata_length, memory_offset, file_length = (
        _PROLOGUE.unpack_from(head)
    )
    if version != VERSION:
        raise refuse(f"snapshot format version {version}; this pyvmm reads version {VERSION}")
    if flags:
        raise refuse(f"unknown flags {flags:#x}")
    if part_count > MAX_PARTS or not 1 <= region_count <= MAX_REGIONS:
        raise refuse(f"{part_count} parts and {region_count} memory regions: too many or none")
    header_size = _header_size(part_count, region_count)
    if not header_size <= metadata_length <= MAX_METADATA or memory_offset != _page_align(metadata_length):
        raise refuse(f"metadata of {metadata_length} bytes, memory at {memory_offset}: out of place")
    if file_length != status.st_size:
        raise refuse(f"{status.st_size} bytes where the header says {file_length}: truncated or extended")
    metadata = _read_exactly(fd, head, memory_offset, refuse)
    header = memoryview(metadata)[:header_size]
    if _digest(header[:-_DIGEST_SIZE]) != header[-_DIGEST_SIZE:]:
        raise refuse("header checksum mismatch")
    if any(metadata[metadata_length:memory_offset]):
        raise refuse("non-zero padding before guest memory")
    parts = _check_parts(metadata, part_count, header_size, metadata_length, refuse)
    regions = _check_regions(header, part_count, region_count, memory_offset, file_length, refuse)
    return SnapshotFile(path, fd, version, parts, regions)


def _read_exactly(fd: int, head: bytes, length: int, refuse: Callable[[str], SnapshotError]) -> bytes:
    """The first `length` bytes of the file (`head` holds the start of them)."""
    if len(head) >= length:
        return head[:length]
    try:
        rest = os.pread(fd, length - len(head), len(head))
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror or exc}") from exc
    if len(head) + len(rest) != length:
        raise refuse("truncated while being read")
    return head + rest


def _check_parts(
    metadata: bytes,
    count: int,
    header_size: int,
    metadata_length: int,
    refuse: Callable[[str], SnapshotError],
) -> dict[str, bytes]:
    """Parts tile [header_size, metadata_length) in table order, each as digested."""
    parts: dict[str, bytes] = {}
    position = header_size
    for index in range(count):
        raw, offset, length, digest = _PART.unpack_from(metadata, _PROLOGUE.size + index * _PART.size)
        name = raw.rstrip(b"\0")
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if not text or b"\0" in name or text in parts:
            raise refuse(f"part {index}: a bad or repeated name")
        if offset != position or length > metadata_length - position:
            raise refuse(f"part {text!r}: out of place")
        data = metadata[offset : offset + length]
        if _digest(data) != digest:
            raise refuse(f"part {text!r}: checksum mismatch")
        parts[text] = data
        position += length
    if position != metadata_length:
        raise refuse("parts do not fill the metadata")
    return parts


def _check_regions(
    header: memoryview,
    part_count: int,
    count: int,
    memory_offset: int,
    file_length: int,
    refuse: Callable[[str], SnapshotError],
) -> tuple[MemoryImage, ...]:
    """Regions in guest address order, page-aligned, not overlapping, inside the
    physical address space; their images tile [memory_offset, file_length)."""
    regions: list[MemoryImage] = []
    table = _PROLOGUE.size + part_count * _PART.size
    position, guest_end = memory_offset, 0
    for index in range(count):
        image = MemoryImage(*_REGION.unpack_from(header, table + index * _REGION.size))
        if (
            image.gpa % PAGE_SIZE
            or image.size % PAGE_SIZE
            or image.size == 0
            or image.gpa < guest_end
            or image.gpa + image.size > MAX_GPA
            or image.data_pages > image.size // PAGE_SIZE
        ):
            raise refuse(f"memory region {index} ({image.gpa:#x}+{image.size:#x}): not a valid RAM range")
        if image.file_offset != position or image.size > file_length - position:
            raise refuse(f"memory region {index}: its image is out of place")
        regions.append(image)
        position, guest_end = position + image.size, image.gpa + image.size
    if position != file_length:
        raise refuse("memory images do not fill the file")
    return tuple(regions)
