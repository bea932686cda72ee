"""Guest physical memory: host mappings (anonymous, or private copies of a snapshot
file), registered with KVM, and the one bounds-checked way device code reads and
writes them.

No device indexes a raw mapping: every access goes through `GuestMemory`, which checks
that ``gpa + length`` lies inside a single RAM region and raises `GuestMemoryError`
otherwise. That is the only place guest-supplied addresses meet host memory.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pyvmm.errors import ConfigError, GuestMemoryError
from pyvmm.kvm import Vm
from pyvmm.kvm.fd import FileDescriptor

PAGE_SIZE = 4096

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class FileBacking:
    """Where a file-backed region's contents start: `offset` in the file open as `fd`
    (owned by the `GuestMemory`; a page the guest has not written reads from there)."""

    fd: int
    offset: int


@dataclass
class MemoryRegion:
    """One contiguous range of guest RAM backed by one host mapping (one KVM slot)."""

    gpa: int
    size: int
    slot: int
    mapping: mmap.mmap
    host_address: int
    backing: FileBacking | None = None  # None: anonymous memory, zero until written

    @property
    def end(self) -> int:
        return self.gpa + self.size


_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0)


def _private_mapping(size: int, fd: int = -1, offset: int = 0) -> tuple[mmap.mmap, int]:
    """A private, writable mapping: anonymous (fd -1) or copy-on-write of a file."""
    flags = mmap.MAP_PRIVATE | _NORESERVE | (mmap.MAP_ANONYMOUS if fd < 0 else 0)
    mapping = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
    address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    return mapping, address


def _check_layout(layout: Sequence[tuple[int, ...]]) -> None:
    if not layout or any(size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE for gpa, size, *_ in layout):
        raise ConfigError("guest memory must be a non-empty list of page-aligned ranges")


def split_around_hole(size: int, hole_start: int, hole_end: int) -> list[tuple[int, int]]:
    """Lay out `size` bytes of RAM from address 0, skipping [hole_start, hole_end)."""
    if size <= hole_start:
        return [(0, size)]
    return [(0, hole_start), (hole_end, size - hole_start)]


class GuestMemory:
    """All of a guest's RAM. Reads and writes are checked against the regions."""

    def __init__(self, layout: list[tuple[int, int]]) -> None:
        _check_layout(layout)
        self._file: FileDescriptor | None = None
        self.regions: list[MemoryRegion] = []
        for slot, (gpa, size) in enumerate(sorted(layout)):
            try:
                mapping, address = _private_mapping(size)
            except (OSError, OverflowError) as exc:
                self.close()
                raise ConfigError(f"cannot reserve {size} bytes of guest memory: {exc}") from exc
            self.regions.append(MemoryRegion(gpa, size, slot, mapping, address))
        self._check_disjoint()

    @classmethod
    def from_file(cls, fd: int, layout: Sequence[tuple[int, int, int]]) -> GuestMemory:
        """Guest RAM whose contents are a file's: each (gpa, size, file_offset) maps
        `size` bytes of the file open as `fd` from `file_offset` (page-aligned)
        MAP_PRIVATE, as Firecracker's file memory backend does (mmap(2)).

        Nothing is read here: a page comes from the file when first touched (by the
        guest through KVM, or by a read or view), and a write makes a private copy
        that never reaches the file, so restoring costs the same for any RAM size.
        Everything else (`register`, the dirty log, `read`/`write`/`view`, `close`)
        works as for anonymous memory. The file must not shrink while mapped: a page
        past its end would fault (SIGBUS). `fd` stays the caller's: the memory keeps
        a duplicate, for the snapshot writer to find which pages the file holds.
        """
        _check_layout(layout)
        if any(offset < 0 or offset % PAGE_SIZE for _, _, offset in layout):
            raise ConfigError("file offsets of guest memory must be page-aligned")
        memory = cls.__new__(cls)
        memory.regions = []
        try:
            memory._file = FileDescriptor(os.dup(fd))
        except OSError as exc:
            raise ConfigError(f"cannot map guest memory from fd {fd}: {exc}") from exc
        for slot, (gpa, size, offset) in enumerate(sorted(layout)):
            try:
                mapping, address = _private_mapping(size, memory._file.fd, offset)
            except (OSError, OverflowError, ValueError) as exc:  # ValueError: past the end of the file
                memory.close()
                raise ConfigError(
                    f"cannot map {size} bytes of guest memory from offset {offset}: {exc}"
                ) from exc
            backing = FileBacking(memory._file.fd, offset)
            memory.regions.append(MemoryRegion(gpa, size, slot, mapping, address, backing))
        memory._check_disjoint()
        return memory

    def _check_disjoint(self) -> None:
        for before, after in zip(self.regions, self.regions[1:], strict=False):
            if before.end > after.gpa:
                self.close()
                raise ConfigError("guest memory ranges overlap")

    @property
    def size(self) -> int:
        """Total bytes of RAM."""
        return sum(region.size for region in self.regions)

    def ram_ranges(self) -> list[tuple[int, int]]:
        """(start, end) of each RAM range, in address order."""
        return [(region.gpa, region.end) for region in self.regions]

    def register(self, vm: Vm, *, log_dirty: bool = False) -> None:
        """Make the regions the guest's RAM (KVM_SET_USER_MEMORY_REGION)."""
        for region in self.regions:
            vm.set_user_memory_region(
                region.slot, region.gpa, region.size, region.host_address, log_dirty=log_dirty
            )

    def dirty_pages(self, vm: Vm) -> Iterator[int]:
        """Guest addresses of pages written since the last call (KVM_GET_DIRTY_LOG).

        The regions must have been registered with ``log_dirty=True``.
        """
        for region in self.regions:
            bitmap = vm.get_dirty_log(region.slot, region.size // PAGE_SIZE)
            for word_index, word in enumerate(bitmap):
                while word:
                    bit = (word & -word).bit_length() - 1
                    word &= word - 1
                    yield region.gpa + (word_index * 64 + bit) * PAGE_SIZE

    def _locate(self, gpa: int, length: int) -> tuple[MemoryRegion, int]:
        if length < 0 or gpa < 0:
            raise GuestMemoryError(gpa, length, "is not a valid range")
        for region in self.regions:
            if region.gpa <= gpa and gpa + length <= region.end:
                return region, gpa - region.gpa
        raise GuestMemoryError(gpa, length)

    def contains(self, gpa: int, length: int) -> bool:
        """True when [gpa, gpa + length) lies inside one RAM region."""
        try:
            self._locate(gpa, length)
        except GuestMemoryError:
            return False
        return True

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy, writable view of guest RAM."""
        region, offset = self._locate(gpa, length)
        return memoryview(region.mapping)[offset : offset + length]

    def read(self, gpa: int, length: int) -> bytes:
        region, offset = self._locate(gpa, length)
        return region.mapping[offset : offset + length]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        region, offset = self._locate(gpa, length)
        region.mapping[offset : offset + length] = data

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        """Set a range to one byte value in place, allocating nothing on the host.

        The length can come from an image (an ELF bss of gigabytes), so no buffer of
        that size is built. Zeros: the whole pages inside the range are dropped with
        madvise(MADV_DONTNEED), after which a private anonymous mapping reads zeros
        and holds no host memory until touched (madvise(2)); the partial pages at
        either end, and any other value, are set with memset on the mapping. A region
        mapped from a file is always set with memset: there MADV_DONTNEED would bring
        the file's contents back, not zeros.
        """
        if not 0 <= byte <= 0xFF:
            raise ValueError(f"fill byte {byte} is not in 0..255")
        region, offset = self._locate(gpa, length)
        end = offset + length
        first, last = -(-offset // PAGE_SIZE) * PAGE_SIZE, end // PAGE_SIZE * PAGE_SIZE
        if byte == 0 and first < last and region.backing is None:
            ctypes.memset(region.host_address + offset, 0, first - offset)
            region.mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
            ctypes.memset(region.host_address + last, 0, end - last)
        else:
            ctypes.memset(region.host_address + offset, byte, length)

    def read_u8(self, gpa: int) -> int:
        return self.read(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return int(_U16.unpack(self.read(gpa, 2))[0])

    def read_u32(self, gpa: int) -> int:
        return int(_U32.unpack(self.read(gpa, 4))[0])

    def read_u64(self, gpa: int) -> int:
        return int(_U64.unpack(self.read(gpa, 8))[0])

    def write_u8(self, gpa: int, value: int) -> None:
        self.write(gpa, bytes([value & 0xFF]))

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, _U16.pack(value & 0xFFFF))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, _U32.pack(value & 0xFFFF_FFFF))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, _U64.pack(value & 0xFFFF_FFFF_FFFF_FFFF))

    def close(self) -> None:
        """Unmap all regions (and close the backing file's duplicate). The VM that used
        them must be closed first."""
        for region in self.regions:
            try:
                region.mapping.close()
            except BufferError:
                pass  # a view is still exported; the mapping goes with the last reference
        self.regions = []
        if self._file is not None:
            self._file.close()
