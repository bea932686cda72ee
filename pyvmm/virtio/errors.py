"""The one error a virtqueue raises: `VirtqueueError`, with the rule that was broken.

Everything in a virtqueue is written by the guest, so a malformed ring or chain is
an expected input, not a bug: it is reported as a `VirtqueueError` whose `fault`
names the check (and so the spec clause) that failed. The device that owns the queue
then sets DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2) and stops using it; the VM and the
other devices carry on.
"""

from __future__ import annotations

from enum import Enum

from pyvmm.errors import VmmError


class Fault(Enum):
    """Which rule a guest (or a saved state) broke. The value is the spec clause."""

    CONFIG = "§2.7 / §2.7.1: queue size, ring alignment or ring outside RAM"
    NOT_READY = "§2.7: queue used before it was enabled"
    AVAIL_IDX = "§2.7.13.3: available idx more than queue size ahead"
    HEAD_INDEX = "§2.7.6: chain head index not below queue size"
    HEAD_IN_FLIGHT = "§2.7.13 / §2.7.13.1: chain head made available again before the device used it"
    NEXT_INDEX = "§2.7.5: next index not below the table's length"
    CHAIN_TOO_LONG = "§2.7.5.3.1: chain longer than its table (a loop)"
    TOO_MANY_DESCRIPTORS = "§2.7.4.1: more descriptors than the device allows"
    CHAIN_TOO_BIG = "§2.7.5.2: chain longer in bytes than allowed (at most 2**32)"
    BUFFER_RAM = "§2.7.5: buffer not inside one RAM region"
    READABLE_AFTER_WRITABLE = "§2.7.4.2: device-readable buffer after a device-writable one"
    INDIRECT_NOT_NEGOTIATED = "§2.7.5.3.1: indirect descriptor without VIRTIO_F_INDIRECT_DESC"
    INDIRECT_WITH_NEXT = "§2.7.5.3.1: indirect descriptor with VIRTQ_DESC_F_NEXT"
    INDIRECT_NESTED = "§2.7.5.3.1: indirect descriptor inside an indirect table"
    INDIRECT_TABLE_SIZE = "§2.7.5.3: indirect table length not a nonzero multiple of 16 or too long"
    INDIRECT_TABLE_RAM = "§2.7.5.3: indirect table not inside one RAM region"
    BUFFER_TOO_SMALL = "§2.7.4.1: the chain's buffers are shorter than the request"
    BROKEN = "§2.1.2: queue used after a fault, before a reset"
    STATE = "saved queue state is inconsistent"


class VirtqueueError(VmmError):
    """A virtqueue rule was broken; `fault` says which one."""

    def __init__(self, fault: Fault, detail: str) -> None:
        super().__init__(f"virtqueue: {detail} ({fault.value})")
        self.fault = fault
        self.detail = detail
