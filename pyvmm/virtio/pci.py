"""virtio over PCI, modern interface only (virtio 1.2 §4.1): one PCI function per
device, its registers in one 64-bit memory BAR.

BAR 0 (32 KiB), laid out as Cloud Hypervisor and QEMU do, one page per structure:

    0x0000  common configuration (§4.1.4.3)      COMMON_CFG
    0x1000  ISR status, read to clear (§4.1.4.5)  ISR_CFG
    0x2000  device configuration (§4.1.4.6)       DEVICE_CFG
    0x3000  notifications, 4 bytes per queue      NOTIFY_CFG (§4.1.4.4)
    0x4000  MSI-X table, one vector per queue + one for configuration changes
    0x6000  MSI-X PBA

The capabilities (§4.1.4) point at those, plus the PCI configuration access
capability (§4.1.4.8) through which a driver reaches the BAR from configuration space.

The device ID is 0x1040 + the virtio device ID and the revision 1 (§4.1.2.1): a
transitional (legacy) driver finds no device it knows, and a driver that does not
accept VERSION_1 is refused by `VirtioCore`. Interrupts go by MSI-X when the driver
enables it (a vector per queue, `queue_msix_vector`), else by INTx with the ISR bits
(§4.1.5.3, §4.1.5.4).

Saved state (`VirtioPciState`, transport_state.py): the function, its MSI-X table,
the core, the vectors and the ISR. A restore moves BAR 0 through the function's
`on_bar_change`, the path a guest's BAR write takes, so the platform's buses and
the doorbells' ioeventfds follow it.
"""

from __future__ import annotations

import enum
import struct
import threading
from collections.abc import Callable

from pyvmm.bus import all_ones
from pyvmm.devices.state_checks import check_int, check_mask, check_tuple, check_type, fail
from pyvmm.errors import StateError
from pyvmm.memory import GuestMemory
from pyvmm.pci import (
    BarKind,
    BarRegions,
    BarSpec,
    InterruptPin,
    MsixCapability,
    MsixTable,
    PciFunction,
    PciIds,
)
from pyvmm.pci.msix import CONTROL_ENABLE as MSIX_ENABLE
from pyvmm.pci.msix import CONTROL_FUNCTION_MASK as MSIX_FUNCTION_MASK
from pyvmm.pci.msix import CONTROL_OFFSET as MSIX_CONTROL
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.device import DeviceType, VirtioDevice
from pyvmm.virtio.spec import is_valid_queue_size
from pyvmm.virtio.transport_state import VirtioPciState

VIRTIO_VENDOR = 0x1AF4  # Red Hat, Inc. (§4.1.2)
MODERN_DEVICE_BASE = 0x1040  # device ID = 0x1040 + virtio device ID (§4.1.2.1)
MODERN_REVISION = 1
NO_VECTOR = 0xFFFF  # VIRTIO_MSI_NO_VECTOR (§4.1.5.1.2)

BAR_INDEX = 0
BAR_SIZE = 0x8000
COMMON_OFFSET, COMMON_LENGTH = 0x0000, 0x1000
ISR_OFFSET, ISR_LENGTH = 0x1000, 0x1000
DEVICE_OFFSET, DEVICE_LENGTH = 0x2000, 0x1000
NOTIFY_OFFSET, NOTIFY_LENGTH = 0x3000, 0x1000
NOTIFY_OFF_MULTIPLIER = 4  # queue i notifies at NOTIFY_OFFSET + 4 * i
MSIX_TABLE_OFFSET = 0x4000
MSIX_PBA_OFFSET = 0x6000

ISR_QUEUE = 1  # §4.1.4.5: bit 0 a used buffer notification, bit 1 a configuration change
ISR_CONFIG = 2

# PCI class codes QEMU gives each device type, which guests' tools expect.
_CLASSES = {
    DeviceType.NET: (0x02, 0x00),  # network controller, Ethernet
    DeviceType.BLOCK: (0x01, 0x00),  # mass storage, SCSI
    DeviceType.CONSOLE: (0x07, 0x80),  # simple communication, other
    DeviceType.ENTROPY: (0xFF, 0x00),  # unclassified
}


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
_FIELDS = {
    Common.DEVICE_FEATURE_SELECT: 4, Common.DEVICE_FEATURE: 4, Common.DRIVER_FEATURE_SELECT: 4,
    Common.DRIVER_FEATURE: 4, Common.CONFIG_MSIX_VECTOR: 2, Common.NUM_QUEUES: 2,
    Common.DEVICE_STATUS: 1, Common.CONFIG_GENERATION: 1, Common.QUEUE_SELECT: 2, Common.QUEUE_SIZE: 2,
    Common.QUEUE_MSIX_VECTOR: 2, Common.QUEUE_ENABLE: 2, Common.QUEUE_NOTIFY_OFF: 2,
    Common.QUEUE_DESC: 8, Common.QUEUE_DRIVER: 8, Common.QUEUE_DEVICE: 8,
}  # fmt: skip


def _cap(cfg_type: CapType, offset: int, length: int, extra: bytes = b"") -> bytes:
    """A `struct virtio_pci_cap` after its vendor, next and length bytes (§4.1.4)."""
    return struct.pack("<BBB2xII", cfg_type, BAR_INDEX, 0, offset, length) + extra


class VirtioPciFunction:
    """One virtio device as a PCI function: configuration header, capabilities, BAR 0."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory) -> None:
        base_class, subclass = _CLASSES[device.device_type]
        ids = PciIds(
            VIRTIO_VENDOR, MODERN_DEVICE_BASE + device.device_type, base_class, subclass,
            revision=MODERN_REVISION, subsystem_vendor=VIRTIO_VENDOR, subsystem=0x40,
        )  # fmt: skip
        self.function = PciFunction(
            ids, bars={BAR_INDEX: BarSpec(BarKind.MEMORY64, BAR_SIZE)}, interrupt_pin=InterruptPin.INTA
        )
        self.device = device
        self._lock = threading.Lock()  # the ISR and the INTx level
        self._isr = 0
        self.core = VirtioCore(device, memory, self)
        queues = len(self.core.queues)
        self.msix = MsixTable(queues + 1)
        self.config_vector = NO_VECTOR
        self.queue_vectors = [NO_VECTOR] * queues
        self.on_notify: Callable[[int], None] = self.core.notify  # the platform may wrap it

        regions = BarRegions(BAR_SIZE)
        regions.add(COMMON_OFFSET, COMMON_LENGTH, _Registers(self._common_read, self._common_write))
        regions.add(ISR_OFFSET, ISR_LENGTH, _Registers(self._isr_read, _ignore))
        regions.add(DEVICE_OFFSET, DEVICE_LENGTH, _Registers(self.core.read_config, self._config_write))
        regions.add(NOTIFY_OFFSET, NOTIFY_LENGTH, _Registers(_zero, self._notify_write))
        regions.add(MSIX_TABLE_OFFSET, self.msix.table_size, self.msix.table)
        regions.add(MSIX_PBA_OFFSET, self.msix.pba_size, self.msix.pba)
        self.regions = regions
        self.function.set_bar_handler(BAR_INDEX, regions)

        capabilities = self.function.capabilities
        capabilities.add_vendor(_cap(CapType.COMMON, COMMON_OFFSET, COMMON_CFG_SIZE))
        notify_length = NOTIFY_OFF_MULTIPLIER * max(queues, 1)
        capabilities.add_vendor(
            _cap(CapType.NOTIFY, NOTIFY_OFFSET, notify_length, struct.pack("<I", NOTIFY_OFF_MULTIPLIER))
        )
        capabilities.add_vendor(_cap(CapType.ISR, ISR_OFFSET, 1))
        capabilities.add_vendor(_cap(CapType.DEVICE, DEVICE_OFFSET, DEVICE_LENGTH))
        self._pci_cfg = _PciCfgAccess(self)
        self._msix_capability = MsixCapability(
            capabilities, self.msix, table_bar=BAR_INDEX, table_offset=MSIX_TABLE_OFFSET,
            pba_bar=BAR_INDEX, pba_offset=MSIX_PBA_OFFSET,
        )  # fmt: skip
        self.function.on_reset(self._reset_device)

    def reset(self) -> None:
        """Function-level reset (§4.1.5.1.1): the header's guest bits (BARs unassigned,
        decoding off, MSI-X disabled), then the device and the transport's state."""
        self.function.reset()

    def _reset_device(self) -> None:
        """The function's reset hook: the device, MSI-X, vectors, ISR and INTx."""
        self.core.reset()
        self.msix.reset()
        self.config_vector = NO_VECTOR
        self.queue_vectors = [NO_VECTOR] * len(self.queue_vectors)
        with self._lock:
            self._isr = 0
            self.function.set_intx(False)

    # --- saved state ------------------------------------------------------------------

    def save(self) -> VirtioPciState:
        core = self.core.save()  # first: the device finishes its requests (interrupts)
        with self._lock:
            isr = self._isr
        return VirtioPciState(
            self.function.save(), self.msix.save(), core, self.config_vector, tuple(self.queue_vectors), isr
        )

    def restore(self, state: object) -> None:
        """Take a saved state, checked first: vectors name table entries (or none),
        the MSI-X state agrees with the capability's Message Control in the saved
        configuration space, an asserted INTx has an ISR bit behind it. A bad state
        raises `StateError` and leaves function, table and device as they were."""
        name = f"virtio-pci ({self.device.name})"
        checked = check_type(name, state, VirtioPciState)
        self._check_vector(name, "config_vector", checked.config_vector)
        vectors = check_tuple(name, "queue_vectors", checked.queue_vectors, len(self.queue_vectors))
        if len(vectors) != len(self.queue_vectors):
            raise fail(name, f"{len(vectors)} queue vectors for {len(self.queue_vectors)} queues")
        for index, vector in enumerate(vectors):
            self._check_vector(name, f"queue_vectors[{index}]", vector)
        isr = check_mask(name, "isr", checked.isr, ISR_QUEUE | ISR_CONFIG)
        self._check_agreement(name, checked, isr)
        before = self.save()
        try:
            self._load(checked, isr)
        except StateError:
            self._load(before, before.isr)
            raise

    def _check_vector(self, name: str, field: str, value: object) -> None:
        vector = check_int(name, field, value, 0, NO_VECTOR)
        if vector != NO_VECTOR and vector >= self.msix.count:
            raise fail(name, f"{field} {vector} is past the MSI-X table of {self.msix.count}")

    def _check_agreement(self, name: str, state: VirtioPciState, isr: int) -> None:
        function, msix = state.function, state.msix
        config = getattr(function, "config", None)
        control_at = self._msix_capability.offset + MSIX_CONTROL
        if type(config) is bytes and len(config) == self.function.config.size:
            control = int.from_bytes(config[control_at : control_at + 2], "little")
            saved = (bool(control & MSIX_ENABLE), bool(control & MSIX_FUNCTION_MASK))
            if saved != (getattr(msix, "enabled", None), getattr(msix, "function_masked", None)):
                raise fail(name, f"MSI-X Message Control {control:#06x} disagrees with the table's state")
        if getattr(function, "intx_asserted", False) is True and not isr:
            raise fail(name, "INTx is asserted with no ISR bit set")

    def _load(self, state: VirtioPciState, isr: int) -> None:
        self.msix.restore(state.msix)
        self.function.restore(state.function)  # BAR 0 moves: buses and doorbells follow
        self.core.restore(state.core)
        self.config_vector = state.config_vector
        self.queue_vectors = list(state.queue_vectors)
        with self._lock:
            self._isr = isr

    def notify_offset(self, queue: int) -> int:
        """Where in BAR 0 queue `queue` is notified (for an ioeventfd)."""
        return NOTIFY_OFFSET + NOTIFY_OFF_MULTIPLIER * queue

    # --- interrupts (the device's Interrupt) -----------------------------------------

    def used_buffer(self, queue: int) -> None:
        vector = self.queue_vectors[queue] if 0 <= queue < len(self.queue_vectors) else NO_VECTOR
        self._interrupt(vector, ISR_QUEUE)

    def config_changed(self) -> None:
        self._interrupt(self.config_vector, ISR_CONFIG)

    def _interrupt(self, vector: int, isr_bit: int) -> None:
        if self.msix.enabled:
            # §4.1.5.4: with MSI-X on, NO_VECTOR means no interrupt at all; ISR bit 1
            # is still set for a configuration change.
            if isr_bit == ISR_CONFIG:
                with self._lock:
                    self._isr |= ISR_CONFIG
            if vector != NO_VECTOR:
                self.msix.signal(vector)
            return
        with self._lock:
            self._isr |= isr_bit
            self.function.set_intx(True)

    def _isr_read(self, offset: int, size: int) -> int:
        """§4.1.4.5.1: reading the ISR clears it and de-asserts INTx."""
        if offset:
            return 0
        with self._lock:
            value, self._isr = self._isr, 0
            self.function.set_intx(False)
        return value

    # --- notifications ----------------------------------------------------------------

    def _notify_write(self, offset: int, size: int, value: int) -> None:
        if offset % NOTIFY_OFF_MULTIPLIER == 0:
            self.on_notify(offset // NOTIFY_OFF_MULTIPLIER)

    def _config_write(self, offset: int, size: int, value: int) -> None:
        self.core.write_config(offset, size, value)

    # --- the common configuration -------------------------------------------------------

    def _field(self, offset: int) -> int:
        core = self.core
        queue = core.selected_queue()
        if offset == Common.DEVICE_FEATURE_SELECT:
            return core.device_feature_select
        if offset == Common.DEVICE_FEATURE:
            return core.device_features_window()
        if offset == Common.DRIVER_FEATURE_SELECT:
            return core.driver_feature_select
        if offset == Common.DRIVER_FEATURE:
            return core.driver_features_window()
        if offset == Common.CONFIG_MSIX_VECTOR:
            return self.config_vector
        if offset == Common.NUM_QUEUES:
            return len(core.queues)
        if offset == Common.DEVICE_STATUS:
            return core.status
        if offset == Common.CONFIG_GENERATION:
            return core.config_generation
        if offset == Common.QUEUE_SELECT:
            return core.queue_select
        if queue is None:  # §4.1.4.3.2: a queue past the last reads as size 0
            return 0
        index = core.queue_select
        return {
            Common.QUEUE_SIZE: queue.size,
            Common.QUEUE_MSIX_VECTOR: self.queue_vectors[index],
            Common.QUEUE_ENABLE: int(queue.ready),
            Common.QUEUE_NOTIFY_OFF: index,
            Common.QUEUE_DESC: queue.desc_table,
            Common.QUEUE_DRIVER: queue.avail_ring,
            Common.QUEUE_DEVICE: queue.used_ring,
        }[Common(offset)]

    def _common_bytes(self) -> bytearray:
        data = bytearray(COMMON_CFG_SIZE)
        for offset, size in _FIELDS.items():
            data[offset : offset + size] = (self._field(offset) & all_ones(size)).to_bytes(size, "little")
        return data

    def _common_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > COMMON_CFG_SIZE:
            return 0
        return int.from_bytes(self._common_bytes()[offset : offset + size], "little")

    def _common_write(self, offset: int, size: int, value: int) -> None:
        """Writes may cover part of a field (a 64-bit address as two dwords): each field
        touched gets its old bytes with the written ones laid over them."""
        if offset < 0 or offset + size > COMMON_CFG_SIZE:
            return
        before = self._common_bytes()
        after = bytearray(before)
        after[offset : offset + size] = (value & all_ones(size)).to_bytes(size, "little")
        for field, length in _FIELDS.items():
            if field < offset + size and offset < field + length:
                self._set_field(Common(field), int.from_bytes(after[field : field + length], "little"))

    def _set_field(self, field: Common, value: int) -> None:
        core = self.core
        if field is Common.DEVICE_FEATURE_SELECT:
            core.device_feature_select = value
        elif field is Common.DRIVER_FEATURE_SELECT:
            core.driver_feature_select = value
        elif field is Common.DRIVER_FEATURE:
            core.write_driver_features(value)
        elif field is Common.CONFIG_MSIX_VECTOR:
            self.config_vector = value if value < self.msix.count else NO_VECTOR
        elif field is Common.DEVICE_STATUS:
            core.write_status(value)
            if value == 0:
                self.config_vector = NO_VECTOR
                self.queue_vectors = [NO_VECTOR] * len(self.queue_vectors)
        elif field is Common.QUEUE_SELECT:
            core.queue_select = value
        else:
            self._set_queue_field(field, value)

    def _set_queue_field(self, field: Common, value: int) -> None:
        core = self.core
        queue = core.selected_queue()
        if queue is None:
            return
        if field is Common.QUEUE_MSIX_VECTOR:
            # §4.1.5.1.2: an unmappable vector reads back as NO_VECTOR
            self.queue_vectors[core.queue_select] = value if value < self.msix.count else NO_VECTOR
            return
        if not core.queue_programmable() or queue.ready:
            return  # §4.1.4.3.2: queue fields are fixed once the queue is enabled
        if field is Common.QUEUE_SIZE:
            if is_valid_queue_size(value) and value <= queue.max_size:
                queue.size = value
        elif field is Common.QUEUE_ENABLE:
            if value == 1:
                core.enable_queue()
        elif field is Common.QUEUE_DESC:
            queue.desc_table = value
        elif field is Common.QUEUE_DRIVER:
            queue.avail_ring = value
        elif field is Common.QUEUE_DEVICE:
            queue.used_ring = value


class _Registers:
    """A BAR sub-region served by two functions."""

    def __init__(self, read: Callable[[int, int], int], write: Callable[[int, int, int], None]) -> None:
        self.read = read
        self.write = write


def _ignore(offset: int, size: int, value: int) -> None:
    pass


def _zero(offset: int, size: int) -> int:
    return 0


class _PciCfgAccess:
    """VIRTIO_PCI_CAP_PCI_CFG (§4.1.4.8): the driver writes bar, offset and length in
    the capability, then reads or writes `pci_cfg_data` to reach that part of the BAR."""

    def __init__(self, owner: VirtioPciFunction) -> None:
        self.owner = owner
        config = owner.function.config
        # bar (1 byte), offset (4) and length (4) are writable; the data dword is ours.
        # after the vendor header: cfg_type, bar, id, padding[2], offset, length, data
        writable = bytes((0, 0xFF, 0, 0, 0)) + b"\xff" * 8 + b"\x00" * 4
        self.offset = owner.function.capabilities.add_vendor(_cap(CapType.PCI, 0, 0, bytes(4)), writable)
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
        return self.owner.regions.read(target, length)

    def write(self, offset: int, size: int, value: int) -> None:
        target = self._target(size)
        if target is not None and not offset:
            length = self.config.get(self.offset + 12, 4)
            self.owner.regions.write(target, length, value & all_ones(length))
