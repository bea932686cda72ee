"""The layout of a virtio-pci function (virtio 1.2 §4.1.4): BAR 0, the common
configuration's fields, the virtio capabilities that point into the BAR, and the PCI
configuration access capability (§4.1.4.8) through which a driver reaches the BAR
from configuration space.

BAR 0 (32 KiB), laid out as Cloud Hypervisor and QEMU do, one page per structure:

    0x0000  common configuration (§4.1.4.3)      COMMON_CFG
    0x1000  ISR status, read to clear (§4.1.4.5)  ISR_CFG
    0x2000  device configuration (§4.1.4.6)       DEVICE_CFG
    0x3000  notifications, 4 bytes per queue      NOTIFY_CFG (§4.1.4.4)
    0x4000  MSI-X table, one vector per queue + one for configuration changes
    0x6000  MSI-X PBA
"""

from __future__ import annotations

import enum
import struct

from pyvmm.bus import all_ones
from pyvmm.pci import BarRegions, PciFunction

BAR_INDEX = 0
BAR_SIZE = 0x8000
COMMON_OFFSET, COMMON_LENGTH = 0x0000, 0x1000
ISR_OFFSET, ISR_LENGTH = 0x1000, 0x1000
DEVICE_OFFSET, DEVICE_LENGTH = 0x2000, 0x1000
NOTIFY_OFFSET, NOTIFY_LENGTH = 0x3000, 0x1000
NOTIFY_OFF_MULTIPLIER = 4  # queue i notifies at NOTIFY_OFFSET + 4 * i
MSIX_TABLE_OFFSET = 0x4000
MSIX_PBA_OFFSET = 0x6000


class CapType(enum.IntEnum):
    """`cfg_type` of a virtio PCI capability (§4.1.4)."""

    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4
    PCI = 5


class Common(enum.IntEnum):
    """Offsets in `struct virtio_pci_common_cfg` (§4.1.4.3)."""

    DEVICE_FEATURE_SELECT = 0
    DEVICE_FEATURE = 4
    DRIVER_FEATURE_SELECT = 8
    DRIVER_FEATURE = 12
    CONFIG_MSIX_VECTOR = 16
    NUM_QUEUES = 18
    DEVICE_STATUS = 20
    CONFIG_GENERATION = 21
    QUEUE_SELECT = 22
    QUEUE_SIZE = 24
    QUEUE_MSIX_VECTOR = 26
    QUEUE_ENABLE = 28
    QUEUE_NOTIFY_OFF = 30
    QUEUE_DESC = 32
    QUEUE_DRIVER = 40
    QUEUE_DEVICE = 48


COMMON_CFG_SIZE = 56
# Every field of the common configuration: offset -> size.
FIELDS = {
    Common.DEVICE_FEATURE_SELECT: 4, Common.DEVICE_FEATURE: 4, Common.DRIVER_FEATURE_SELECT: 4,
    Common.DRIVER_FEATURE: 4, Common.CONFIG_MSIX_VECTOR: 2, Common.NUM_QUEUES: 2,
    Common.DEVICE_STATUS: 1, Common.CONFIG_GENERATION: 1, Common.QUEUE_SELECT: 2, Common.QUEUE_SIZE: 2,
    Common.QUEUE_MSIX_VECTOR: 2, Common.QUEUE_ENABLE: 2, Common.QUEUE_NOTIFY_OFF: 2,
    Common.QUEUE_DESC: 8, Common.QUEUE_DRIVER: 8, Common.QUEUE_DEVICE: 8,
}  # fmt: skip


def cap(cfg_type: CapType, offset: int, length: int, extra: bytes = b"") -> bytes:
    """A `struct virtio_pci_cap` after its vendor, next and length bytes (§4.1.4)."""
    return struct.pack("<BBB2xII", cfg_type, BAR_INDEX, 0, offset, length) + extra


class PciCfgAccess:
    """VIRTIO_PCI_CAP_PCI_CFG (§4.1.4.8): the driver writes bar, offset and length in
    the capability, then reads or writes `pci_cfg_data` to reach that part of the BAR."""

    def __init__(self, function: PciFunction, regions: BarRegions) -> None:
        self.regions = regions
        config = function.config
        # bar (1 byte), offset (4) and length (4) are writable; the data dword is ours.
        # after the vendor header: cfg_type, bar, id, padding[2], offset, length, data
        writable = bytes((0, 0xFF, 0, 0, 0)) + b"\xff" * 8 + b"\x00" * 4
        self.offset = function.capabilities.add_vendor(cap(CapType.PCI, 0, 0, bytes(4)), writable)
        self.config = config
        config.intercept(self.offset + 16, 4, self)

    def _target(self, size: int) -> int | None:
        """The BAR offset the capability points at, if it names BAR 0 and `size` bytes."""
        bar = self.config.get(self.offset + 4, 1)
        offset = self.config.get(self.offset + 8, 4)
        length = self.config.get(self.offset + 12, 4)
        if bar != BAR_INDEX or length not in (1, 2, 4) or size < length or offset + length > BAR_SIZE:
            return None
        return offset

    def read(self, offset: int, size: int) -> int:
        target = self._target(size)
        if target is None or offset:
            return 0
        length = self.config.get(self.offset + 12, 4)
        return self.regions.read(target, length)

    def write(self, offset: int, size: int, value: int) -> None:
        target = self._target(size)
        if target is not None and not offset:
            length = self.config.get(self.offset + 12, 4)
            self.regions.write(target, length, value & all_ones(length))
