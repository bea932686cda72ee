"""Constants and ring layouts of virtio 1.2, as the spec names them.

Feature bits are §6 (reserved feature bits), device status bits §2.1, descriptor
flags §2.7.5, ring flags §2.7.6 and §2.7.8; sizes and alignments of the three parts
of a split virtqueue are the table in §2.7. Every field is little-endian (§1.4);
pyvmm runs on x86 hosts only, whose native order is the same, which the ring code
relies on when it reads 16-bit fields through `memoryview.cast("H")`.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from enum import IntEnum, IntFlag

if sys.byteorder != "little":  # pragma: no cover - pyvmm is an x86 VMM
    raise ImportError("pyvmm.virtio assumes a little-endian host, as virtio 1.x rings are")


class Feature(IntFlag):
    """Device-independent feature bits (§6). Values are masks, not bit numbers."""

    INDIRECT_DESC = 1 << 28
    EVENT_IDX = 1 << 29
    VERSION_1 = 1 << 32
    ACCESS_PLATFORM = 1 << 33
    RING_PACKED = 1 << 34
    IN_ORDER = 1 << 35
    ORDER_PLATFORM = 1 << 36
    SR_IOV = 1 << 37
    NOTIFICATION_DATA = 1 << 38
    NOTIF_CONFIG_DATA = 1 << 39
    RING_RESET = 1 << 40


class DeviceStatus(IntFlag):
    """Bits of the device status field (§2.1)."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


class DescFlag(IntEnum):
    """virtq_desc.flags (§2.7.5)."""

    NEXT = 1
    WRITE = 2
    INDIRECT = 4


class AvailFlag(IntEnum):
    """virtq_avail.flags (§2.7.6): the driver's used-buffer notification suppression."""

    NO_INTERRUPT = 1


class UsedFlag(IntEnum):
    """virtq_used.flags (§2.7.8): the device's available-buffer notification suppression."""

    NO_NOTIFY = 1


class VirtqDesc(ctypes.LittleEndianStructure):
    """struct virtq_desc (§2.7.5)."""

    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
        ("next", ctypes.c_uint16),
    ]


class VirtqUsedElem(ctypes.LittleEndianStructure):
    """struct virtq_used_elem (§2.7.8)."""

    _fields_ = [("id", ctypes.c_uint32), ("len", ctypes.c_uint32)]


# Precompiled formats of the same layouts for the hot path (checked equal below).
DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")
DESC_SIZE = DESC.size
USED_ELEM_SIZE = USED_ELEM.size
assert DESC_SIZE == ctypes.sizeof(VirtqDesc) == 16
assert USED_ELEM_SIZE == ctypes.sizeof(VirtqUsedElem) == 8

MAX_QUEUE_SIZE = 32768  # §2.7: "The maximum Queue Size value is 32768"

# Alignment of each part (§2.7 table; the driver MUST honour it, §2.7.1).
DESC_TABLE_ALIGN = 16
AVAIL_RING_ALIGN = 2
USED_RING_ALIGN = 4

# Byte offsets inside struct virtq_avail and struct virtq_used (§2.7.6, §2.7.8).
AVAIL_FLAGS = 0
AVAIL_IDX = 2
AVAIL_RING = 4
USED_FLAGS = 0
USED_IDX = 2
USED_RING = 4


def desc_table_size(queue_size: int) -> int:
    """Bytes of the descriptor table: 16 * Queue Size (§2.7)."""
    return DESC_SIZE * queue_size


def avail_ring_size(queue_size: int) -> int:
    """Bytes of the available ring, used_event included: 6 + 2 * Queue Size (§2.7)."""
    return AVAIL_RING + 2 * queue_size + 2


def used_ring_size(queue_size: int) -> int:
    """Bytes of the used ring, avail_event included: 6 + 8 * Queue Size (§2.7)."""
    return USED_RING + USED_ELEM_SIZE * queue_size + 2


def used_event_offset(queue_size: int) -> int:
    """Offset of used_event in the available ring (§2.7.6, only with EVENT_IDX)."""
    return AVAIL_RING + 2 * queue_size


def avail_event_offset(queue_size: int) -> int:
    """Offset of avail_event in the used ring (§2.7.8, only with EVENT_IDX)."""
    return USED_RING + USED_ELEM_SIZE * queue_size


def is_valid_queue_size(size: int) -> bool:
    """A split queue's size is a power of 2, at most 32768 (§2.7)."""
    return 0 < size <= MAX_QUEUE_SIZE and size & (size - 1) == 0


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Has the ring index moved past `event_idx` going from `old_idx` to `new_idx`?

    The event-index test of §2.7.7.2 and §2.7.10 ("idx ... was equal to used_event"),
    written for a batch: true when event_idx is one of old_idx .. new_idx - 1, with
    16-bit wraparound, as `vring_need_event` in the spec's virtio_ring.h (appendix).
    """
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF
