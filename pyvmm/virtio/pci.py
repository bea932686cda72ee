"""virtio over PCI, modern interface only (virtio 1.2 §4.1): one PCI function per
device, its registers in one 64-bit memory BAR.

BAR 0 holds the common, ISR, device and notify structures and the MSI-X table and
PBA; the capabilities (§4.1.4) point at them (the layout: pci_layout.py).

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

import struct
import threading
from collections.abc import Callable

from pyvmm.bus import all_ones
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
from pyvmm.snapshot.checks import check_int, check_mask, check_tuple, check_type, fail
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.device import DeviceType, VirtioDevice
from pyvmm.virtio.pci_layout import (
    BAR_INDEX,
    BAR_SIZE,
    COMMON_CFG_SIZE,
    COMMON_LENGTH,
    COMMON_OFFSET,
    DEVICE_LENGTH,
    DEVICE_OFFSET,
    FIELDS,
    ISR_LENGTH,
    ISR_OFFSET,
    MSIX_PBA_OFFSET,
    MSIX_TABLE_OFFSET,
    NOTIFY_LENGTH,
    NOTIFY_OFF_MULTIPLIER,
    NOTIFY_OFFSET,
    CapType,
    Common,
    PciCfgAccess,
    cap,
)
from pyvmm.virtio.queue import Virtqueue
from pyvmm.virtio.spec import is_valid_queue_size
from pyvmm.virtio.transport_state import VirtioPciState

__all__ = [
    "BAR_INDEX",
    "BAR_SIZE",
    "COMMON_OFFSET",
    "ISR_OFFSET",
    "MSIX_TABLE_OFFSET",
    "NOTIFY_OFFSET",
    "NO_VECTOR",
    "CapType",
    "Common",
    "VirtioPciFunction",
]

VIRTIO_VENDOR = 0x1AF4  # Red Hat, Inc. (§4.1.2)
MODERN_DEVICE_BASE = 0x1040  # device ID = 0x1040 + virtio device ID (§4.1.2.1)
MODERN_REVISION = 1
NO_VECTOR = 0xFFFF  # VIRTIO_MSI_NO_VECTOR (§4.1.5.1.2)

ISR_QUEUE = 1  # §4.1.4.5: bit 0 a used buffer notification, bit 1 a configuration change
ISR_CONFIG = 2

# PCI class codes QEMU gives each device type, which guests' tools expect.
_CLASSES = {
    DeviceType.NET: (0x02, 0x00),  # network controller, Ethernet
    DeviceType.BLOCK: (0x01, 0x00),  # mass storage, SCSI
    DeviceType.CONSOLE: (0x07, 0x80),  # simple communication, other
    DeviceType.ENTROPY: (0xFF, 0x00),  # unclassified
}


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
        capabilities.add_vendor(cap(CapType.COMMON, COMMON_OFFSET, COMMON_CFG_SIZE))
        notify_length = NOTIFY_OFF_MULTIPLIER * max(queues, 1)
        capabilities.add_vendor(
            cap(CapType.NOTIFY, NOTIFY_OFFSET, notify_length, struct.pack("<I", NOTIFY_OFF_MULTIPLIER))
        )
        capabilities.add_vendor(cap(CapType.ISR, ISR_OFFSET, 1))
        capabilities.add_vendor(cap(CapType.DEVICE, DEVICE_OFFSET, DEVICE_LENGTH))
        self._pci_cfg = PciCfgAccess(self.function, regions)
        self._msix_capability = MsixCapability(
            capabilities, self.msix, table_bar=BAR_INDEX, table_offset=MSIX_TABLE_OFFSET,
            pba_bar=BAR_INDEX, pba_offset=MSIX_PBA_OFFSET,
        )  # fmt: skip
        self.function.on_reset(self._reset_device)

    def pause(self, timeout: float) -> bool:
        """The machine's pause, passed on to the device (`VirtioDevice.pause`)."""
        return self.core.pause(timeout)

    def resume(self) -> None:
        self.core.resume()

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
    #
    # queue_select is read once per access (`_common_read`, `_common_write`) and that
    # value serves the whole access: another vCPU may write it at any moment, and a
    # second read could name another queue, or none (an index past `queue_vectors`).

    def _field(self, offset: int, index: int, queue: Virtqueue | None) -> int:
        """Field `offset` of the common configuration, for queue_select `index`."""
        core = self.core
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
            return index
        if queue is None:  # §4.1.4.3.2: a queue past the last reads as size 0
            return 0
        return {
            Common.QUEUE_SIZE: queue.size,
            Common.QUEUE_MSIX_VECTOR: self.queue_vectors[index],
            Common.QUEUE_ENABLE: int(queue.ready),
            Common.QUEUE_NOTIFY_OFF: index,
            Common.QUEUE_DESC: queue.desc_table,
            Common.QUEUE_DRIVER: queue.avail_ring,
            Common.QUEUE_DEVICE: queue.used_ring,
        }[Common(offset)]

    def _common_bytes(self, index: int) -> bytearray:
        """The whole structure as the driver would read it with queue_select `index`."""
        queue = self.core.queue(index)
        data = bytearray(COMMON_CFG_SIZE)
        for offset, size in FIELDS.items():
            field = self._field(offset, index, queue)
            data[offset : offset + size] = (field & all_ones(size)).to_bytes(size, "little")
        return data

    def _common_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > COMMON_CFG_SIZE:
            return 0
        index = self.core.queue_select  # once (see above)
        return int.from_bytes(self._common_bytes(index)[offset : offset + size], "little")

    def _common_write(self, offset: int, size: int, value: int) -> None:
        """Writes may cover part of a field (a 64-bit address as two dwords): each field
        touched gets its old bytes with the written ones laid over them. Fields are
        written in order: one that follows queue_select in the same write goes to the
        queue it selects."""
        if offset < 0 or offset + size > COMMON_CFG_SIZE:
            return
        index = self.core.queue_select  # once (see above)
        before = self._common_bytes(index)
        after = bytearray(before)
        after[offset : offset + size] = (value & all_ones(size)).to_bytes(size, "little")
        for field, length in FIELDS.items():
            if field < offset + size and offset < field + length:
                written = int.from_bytes(after[field : field + length], "little")
                if field == Common.QUEUE_SELECT:
                    self.core.queue_select = index = written
                else:
                    self._set_field(Common(field), written, index)

    def _set_field(self, field: Common, value: int, index: int) -> None:
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
        else:
            self._set_queue_field(field, value, index)

    def _set_queue_field(self, field: Common, value: int, index: int) -> None:
        core = self.core
        queue = self.core.queue(index)
        if queue is None:
            return
        if field is Common.QUEUE_MSIX_VECTOR:
            # §4.1.5.1.2: an unmappable vector reads back as NO_VECTOR
            self.queue_vectors[index] = value if value < self.msix.count else NO_VECTOR
            return
        if not core.queue_programmable() or queue.ready:
            return  # §4.1.4.3.2: queue fields are fixed once the queue is enabled
        if field is Common.QUEUE_SIZE:
            if is_valid_queue_size(value) and value <= queue.max_size:
                queue.size = value
        elif field is Common.QUEUE_ENABLE:
            if value == 1:
                core.enable_queue(index)
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
