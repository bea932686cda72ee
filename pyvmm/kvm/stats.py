"""KVM binary statistics (api.rst §4.133, KVM_GET_STATS_FD, KVM_CAP_BINARY_STATS_FD).

A VM or vCPU fd hands out a statistics fd: a header, an id string, one descriptor
per statistic (each followed by its name) and a data block of u64 values. All blocks
but the data are immutable, so they are read and checked once when the fd is opened;
`read()` re-reads the data block alone with one pread. The kernel is trusted, but
every size and offset in the header is still checked against fixed bounds, so a
surprising header is a `KvmStatsError`, never a huge read or a slice past the end.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from pyvmm.kvm.errors import KvmCapabilityError, KvmError
from pyvmm.kvm.fd import FileDescriptor
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.uapi import (
    KVM_STATS_BASE_SHIFT,
    KVM_STATS_FIELD_MASK,
    KVM_STATS_TYPE_SHIFT,
    KVM_STATS_UNIT_SHIFT,
    Cap,
    StatsBase,
    StatsType,
    StatsUnit,
    kvm_stats_desc,
    kvm_stats_header,
)
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

# Bounds on what one stats fd may describe: Linux 6.x has about 60 statistics per
# vCPU with names of 48 bytes (KVM_STATS_NAME_SIZE) and histograms of at most 32
# buckets, far below these.
MAX_NAME_SIZE = 256
MAX_DESCRIPTORS = 4096
MAX_VALUES_PER_STAT = 1024
MAX_BLOCK_BYTES = 1 << 20
_HEADER_SIZE = ctypes.sizeof(kvm_stats_header)
_DESC_SIZE = ctypes.sizeof(kvm_stats_desc)
_VALUE_SIZE = 8  # every data item is a __u64


class KvmStatsError(KvmError):
    """A statistics fd whose header or descriptors break api.rst §4.133's layout."""


@dataclass(frozen=True)
class StatDescriptor:
    """One statistic as its descriptor names it. Its value is `size` u64s at
    `offset` bytes into the data block; its unit is `unit` * `base` ** `exponent`
    (e.g. SECONDS, POW10, -9: nanoseconds). `bucket_size` is the width of a linear
    histogram's buckets (0 for the other types)."""

    name: str
    type: StatsType
    unit: StatsUnit
    base: StatsBase
    exponent: int
    size: int
    offset: int
    bucket_size: int


class Stats(FileDescriptor):
    """An open statistics fd of one VM or vCPU, its descriptors read once."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        try:
            header = kvm_stats_header.from_buffer_copy(self._pread(0, _HEADER_SIZE))
            self.id, self.descriptors, self._data = _parse(self, header)
        except BaseException:
            self.close()
            raise
        self._data_offset = header.data_offset

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(descriptor.name for descriptor in self.descriptors)

    def read(self) -> dict[str, tuple[int, ...]]:
        """Every statistic's current values (one for a counter, one per bucket for a
        histogram), read with one pread of the data block."""
        block = memoryview(self._pread(self._data_offset, self._data)).cast("Q")
        return {
            d.name: tuple(block[d.offset // _VALUE_SIZE : d.offset // _VALUE_SIZE + d.size])
            for d in self.descriptors
        }

    def _pread(self, offset: int, size: int) -> bytes:
        with self._lock:
            if self.fd < 0:
                raise KvmStatsError("the statistics fd is closed")
            data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise KvmStatsError(f"stats fd: {size} bytes at {offset:#x} asked, {len(data)} read")
        return data


def open_stats(handle: Vm | Vcpu) -> Stats:
    """The statistics of `handle`, a VM or a vCPU; `KvmCapabilityError` where this
    KVM lacks KVM_CAP_BINARY_STATS_FD (Linux before 5.14)."""
    kvm: Kvm = handle.kvm if isinstance(handle, Vm) else handle.vm.kvm
    if not kvm.check_extension(Cap.BINARY_STATS_FD):
        raise KvmCapabilityError("this host's KVM lacks KVM_CAP_BINARY_STATS_FD: no KVM statistics")
    return Stats(handle.stats_fd())


def _field(flags: int, shift: int) -> int:
    return (flags >> shift) & KVM_STATS_FIELD_MASK


def _descriptor(raw: bytes, name_size: int) -> StatDescriptor:
    desc = kvm_stats_desc.from_buffer_copy(raw, 0)
    name = raw[_DESC_SIZE : _DESC_SIZE + name_size].split(b"\0", 1)[0].decode("ascii", "replace")
    try:
        kind = StatsType(_field(desc.flags, KVM_STATS_TYPE_SHIFT))
        unit = StatsUnit(_field(desc.flags, KVM_STATS_UNIT_SHIFT))
        base = StatsBase(_field(desc.flags, KVM_STATS_BASE_SHIFT))
    except ValueError:
        raise KvmStatsError(f"statistic {name!r}: unknown flags {desc.flags:#x}") from None
    if not 1 <= desc.size <= MAX_VALUES_PER_STAT or desc.offset % _VALUE_SIZE:
        raise KvmStatsError(f"statistic {name!r}: {desc.size} values at offset {desc.offset:#x}")
    return StatDescriptor(name, kind, unit, base, desc.exponent, desc.size, desc.offset, desc.bucket_size)


def _parse(stats: Stats, header: kvm_stats_header) -> tuple[str, tuple[StatDescriptor, ...], int]:
    """The id, the descriptors and the size of the data block, each bound checked."""
    if not 1 <= header.name_size <= MAX_NAME_SIZE or header.num_desc > MAX_DESCRIPTORS:
        raise KvmStatsError(f"stats header: name size {header.name_size}, {header.num_desc} descriptors")
    for offset in (header.id_offset, header.desc_offset, header.data_offset):
        # §4.133: every block is 64-bit aligned and past the header
        if offset % 8 or offset < _HEADER_SIZE or offset > MAX_BLOCK_BYTES:
            raise KvmStatsError(f"stats header: block offset {offset:#x}")
    ident = stats._pread(header.id_offset, header.name_size).split(b"\0", 1)[0].decode("ascii", "replace")
    step = _DESC_SIZE + header.name_size
    block = stats._pread(header.desc_offset, step * header.num_desc) if header.num_desc else b""
    descriptors = tuple(
        _descriptor(block[i * step : (i + 1) * step], header.name_size) for i in range(header.num_desc)
    )
    data_size = max((d.offset + d.size * _VALUE_SIZE for d in descriptors), default=0)
    if data_size > MAX_BLOCK_BYTES:
        raise KvmStatsError(f"stats data block of {data_size} bytes")
    return ident, descriptors, data_size
