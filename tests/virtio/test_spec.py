"""virtio 1.2 constants and layouts: the ctypes structures and the precompiled formats
agree, ring sizes follow the §2.7 table, and vring_need_event wraps at 16 bits."""

from __future__ import annotations

import ctypes

import pytest

from pyvmm.virtio.spec import (
    DESC,
    USED_ELEM,
    DeviceStatus,
    Feature,
    VirtqDesc,
    VirtqUsedElem,
    avail_event_offset,
    avail_ring_size,
    desc_table_size,
    is_valid_queue_size,
    used_event_offset,
    used_ring_size,
    vring_need_event,
)


def test_descriptor_layout_matches_the_struct() -> None:
    """§2.7.5: le64 addr, le32 len, le16 flags, le16 next."""
    desc = VirtqDesc(addr=0x1122334455667788, len=0x99AABBCC, flags=0xDDEE, next=0x0102)
    assert bytes(desc) == DESC.pack(0x1122334455667788, 0x99AABBCC, 0xDDEE, 0x0102)
    assert [VirtqDesc.addr.offset, VirtqDesc.len.offset, VirtqDesc.flags.offset, VirtqDesc.next.offset] == [
        0,
        8,
        12,
        14,
    ]
    assert bytes(VirtqUsedElem(id=7, len=9)) == USED_ELEM.pack(7, 9)
    assert ctypes.sizeof(VirtqUsedElem) == 8


@pytest.mark.parametrize("n", [1, 2, 256, 32768])
def test_ring_sizes_follow_the_table(n: int) -> None:
    """§2.7: descriptor table 16*N, available ring 6+2*N, used ring 6+8*N."""
    assert desc_table_size(n) == 16 * n
    assert avail_ring_size(n) == 6 + 2 * n
    assert used_ring_size(n) == 6 + 8 * n
    assert used_event_offset(n) + 2 == avail_ring_size(n)
    assert avail_event_offset(n) + 2 == used_ring_size(n)


def test_queue_sizes() -> None:
    """§2.7: a power of 2, at most 32768."""
    assert [n for n in range(70000) if is_valid_queue_size(n)] == [1 << k for k in range(16)]


def test_bit_values() -> None:
    """§6 feature bits and §2.1 status bits, as numbers the spec gives."""
    assert Feature.INDIRECT_DESC == 1 << 28 and Feature.EVENT_IDX == 1 << 29
    assert Feature.VERSION_1 == 1 << 32 and Feature.RING_RESET == 1 << 40
    assert DeviceStatus.DEVICE_NEEDS_RESET == 64 and DeviceStatus.FAILED == 128
    assert DeviceStatus.FEATURES_OK == 8 and DeviceStatus.DRIVER_OK == 4


@pytest.mark.parametrize(
    ("event", "new", "old", "expected"),
    [
        (0, 1, 0, True),  # the element at index 0 was written
        (1, 1, 0, False),
        (5, 8, 3, True),  # a batch 3..7 includes 5
        (8, 8, 3, False),
        (2, 8, 3, False),
        (0xFFFF, 1, 0xFFFE, True),  # batch 0xFFFE, 0xFFFF across the wrap
        (0, 1, 0xFFFE, True),
        (1, 1, 0xFFFE, False),
        (7, 7, 7, False),  # an empty batch never notifies
    ],
)
def test_vring_need_event(event: int, new: int, old: int, expected: bool) -> None:
    assert vring_need_event(event, new, old) is expected
