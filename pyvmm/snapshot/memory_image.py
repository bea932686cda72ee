"""Guest memory in a snapshot file: which pages to save, how they are written sparse,
and the checksum that lets a restore verify them.

A region's image is its RAM byte for byte at a page-aligned file offset, but only the
pages that hold something are written: the rest stay holes, which read as zeros and
take no disk blocks (lseek(2) SEEK_DATA/SEEK_HOLE). Which pages may hold something:

- anonymous memory: the pages present or swapped in /proc/self/pagemap (proc(5),
  bits 63 and 62). mincore(2) would be cheaper to ask but misses a page the host
  swapped out, and the snapshot would lose it; the dirty log misses what was written
  before logging started. A page read but never written is present (the shared zero
  page) and is dropped by the zero check below;
- memory mapped from an earlier snapshot (`GuestMemory.from_file`): those pages, plus
  every page of the file's data ranges (SEEK_DATA), which the guest may not have
  touched yet but which are not zero.

Every candidate page is read through the guest's mapping and skipped when all zero,
so the choice of candidates only costs time, never correctness: without
/proc/self/pagemap every page is a candidate.

The checksum (`ImageDigest`) is two CRC-32s (zlib): one over the bytes of the non-zero
pages in order, one over their page numbers. CRC-32, not a cryptographic hash: it is
computed over every touched byte at every save (about 4x faster than BLAKE2b here),
and guest memory is data the guest chose anyway; it finds a damaged or misplaced
page, not a deliberate edit (no unkeyed checksum would).
"""

from __future__ import annotations

import array
import errno
import logging
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyvmm.memory import PAGE_SIZE, MemoryRegion

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read, checked and written at a time
_ZERO_PAGE = bytes(PAGE_SIZE)
_ZERO_CHUNK = bytes(CHUNK)
_PAGEMAP = "/proc/self/pagemap"
_PAGEMAP_ENTRY = 8
_PAGEMAP_BATCH = 1 << 16  # entries read at a time (512 KiB)
# Byte 7 of a little-endian pagemap entry holds bits 56-63: 63 present, 62 swapped.
_IN_USE = bytes(1 if byte & 0xC0 else 0 for byte in range(256))

Progress = Callable[[int], None]  # bytes of the region dealt with so far


@dataclass(frozen=True)
class ImageSummary:
    """What a region's image holds: its non-zero pages and their checksum."""

    data_pages: int
    checksum: int


class ImageDigest:
    """The checksum of a memory image, fed with runs of non-zero pages in order."""

    def __init__(self) -> None:
        self._content = 0
        self._pages = array.array("Q")

    def add(self, first_page: int, data: bytes | memoryview) -> None:
        self._content = zlib.crc32(data, self._content)
        self._pages.extend(range(first_page, first_page + len(data) // PAGE_SIZE))

    def summary(self) -> ImageSummary:
        pages = array.array("Q", self._pages)
        if sys.byteorder == "big":
            pages.byteswap()  # page numbers are checksummed little-endian, as the file is
        return ImageSummary(len(pages), zlib.crc32(pages.tobytes()) << 32 | self._content)


def nonzero_runs(chunk: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) byte offsets of the runs of non-zero pages in `chunk` (a whole
    number of pages)."""
    if _ZERO_CHUNK.startswith(chunk):  # all zero (chunk is at most CHUNK long)
        return
    start = -1
    for offset in range(0, len(chunk), PAGE_SIZE):
        zero = chunk.startswith(_ZERO_PAGE, offset)
        if zero and start >= 0:
            yield start, offset
            start = -1
        elif not zero and start < 0:
            start = offset
    if start >= 0:
        yield start, len(chunk)


def _runs(flags: bytes | bytearray) -> Iterator[tuple[int, int]]:
    """(first, end) of each run of ones in a page flag array."""
    end = 0
    while (first := flags.find(1, end)) >= 0:
        end = flags.find(0, first)
        end = len(flags) if end < 0 else end
        yield first, end


def _pagemap_flags(region: MemoryRegion) -> bytearray:
    """One byte per page of the region: 1 when pagemap says it is present or swapped;
    all ones when pagemap cannot be read."""
    pages = region.size // PAGE_SIZE
    try:
        fd = os.open(_PAGEMAP, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("%s: %s; every page is a candidate", _PAGEMAP, exc)
        return bytearray(b"\x01") * pages
    flags = bytearray()
    try:
        base = region.host_address // PAGE_SIZE * _PAGEMAP_ENTRY
        for first in range(0, pages, _PAGEMAP_BATCH):
            count = min(_PAGEMAP_BATCH, pages - first)
            entries = os.pread(fd, count * _PAGEMAP_ENTRY, base + first * _PAGEMAP_ENTRY)
            if len(entries) != count * _PAGEMAP_ENTRY:
                raise OSError(errno.EIO, "short read")
            flags += entries[7::_PAGEMAP_ENTRY].translate(_IN_USE)
    except OSError as exc:
        log.debug("%s: %s; every page is a candidate", _PAGEMAP, exc)
        return bytearray(b"\x01") * pages
    finally:
        os.close(fd)
    return flags


def _data_pages(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the pages of [start, end) of a file that hold data, as
    SEEK_DATA/SEEK_HOLE see it (a file system without them reports all of it as
    data): offsets from `start`, page-aligned, runs merged. `start` and `end` are
    page-aligned; a file system's blocks may be smaller than a page."""
    position, run = start, None
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data after position
                raise
            break
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        first, last = (data - start) // PAGE_SIZE * PAGE_SIZE, -(-(hole - start) // PAGE_SIZE) * PAGE_SIZE
        if run is not None and first > run[1]:
            yield run
            run = None
        run = (first if run is None else run[0], last)
        position = start + last
    if run is not None:
        yield run


def candidate_pages(region: MemoryRegion) -> bytearray:
    """One byte per page of `region`: 1 for a page that may hold non-zero bytes."""
    flags = _pagemap_flags(region)
    if region.backing is not None:
        base = region.backing.offset
        for start, end in _data_pages(region.backing.fd, base, base + region.size):
            flags[start // PAGE_SIZE : end // PAGE_SIZE] = b"\x01" * ((end - start) // PAGE_SIZE)
    return flags


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[written:], offset + written


def write_image(fd: int, region: MemoryRegion, file_offset: int, progress: Progress) -> ImageSummary:
    """Write `region`'s non-zero pages to `fd` at `file_offset` + their offset in the
    region (the file is already long enough: what is not written stays a hole).

    The guest must not run meanwhile (its vCPUs paused): a page changed while the
    image is written would make the image and its checksum disagree.
    """
    digest = ImageDigest()
    for first, end in _runs(candidate_pages(region)):
        progress(first * PAGE_SIZE)
        for start in range(first * PAGE_SIZE, end * PAGE_SIZE, CHUNK):
            chunk = region.mapping[start : min(start + CHUNK, end * PAGE_SIZE)]
            for run_start, run_end in nonzero_runs(chunk):
                data = memoryview(chunk)[run_start:run_end]
                pwrite_all(fd, data, file_offset + start + run_start)
                digest.add((start + run_start) // PAGE_SIZE, data)
            progress(start + len(chunk))
    progress(region.size)
    return digest.summary()


def image_summary(fd: int, file_offset: int, size: int) -> ImageSummary:
    """Read an image back from the file (its data ranges only) and summarise it, to
    compare with the summary `write_image` stored."""
    digest = ImageDigest()
    for start, end in _data_pages(fd, file_offset, file_offset + size):
        for position in range(start, end, CHUNK):
            length = min(CHUNK, end - position)
            chunk = os.pread(fd, length, file_offset + position)
            if len(chunk) != length:
                raise OSError(errno.EIO, f"short read at {file_offset + position}")
            for run_start, run_end in nonzero_runs(chunk):
                digest.add((position + run_start) // PAGE_SIZE, memoryview(chunk)[run_start:run_end])
    return digest.summary()
