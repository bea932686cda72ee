"""virtio over MMIO, version 2 (virtio 1.2 §4.2): one device behind a small window of
32-bit registers, its configuration space from offset 0x100 on.

The registers (§4.2.2, table "MMIO Device Register Layout") map onto `VirtioCore`;
this module only adds what is MMIO's own:

- Version 2 only. A legacy (version 1) driver reads Version 2 and gives up; a
  driver that goes on without VERSION_1 is refused by `VirtioCore` at FEATURES_OK.
- Control registers take 32-bit, aligned accesses only (§4.2.2.2 makes anything else
  the driver's mistake): other widths read 0 and their writes are ignored. The
  configuration space takes any width (§4.2.2.2 names 8-, 16- and 32-bit fields).
- The interrupt (§4.2.3.4): InterruptStatus bit 0 for a used buffer, bit 1 for a
  configuration change; the line is high while any bit is set and InterruptACK
  clears bits. Devices raise it from the I/O thread while vCPU threads acknowledge:
  the status and the line level change together under one lock.
- QueueNotify: `MmioNotifiers` gives each queue a doorbell on the register (a
  KVM_IOEVENTFD matching the queue index where KVM_CAP_IOEVENTFD exists, else the
  register's exit handler rings it), so `VirtioCore.notify` runs on the I/O thread.
  A transport used without them (no I/O thread) notifies on the writing thread.
- Saved state (`VirtioMmioState`): the core's and InterruptStatus; a restore drives
  the line to what InterruptStatus says. The doorbells are not state.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable

from pyvmm.io.ioevent import QueueDoorbells, Registrar
from pyvmm.kvm import Vm
from pyvmm.memory import GuestMemory
from pyvmm.outcome import InterruptLine
from pyvmm.snapshot.checks import check_mask, check_type
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.device import VirtioDevice
from pyvmm.virtio.transport_state import VirtioMmioState

log = logging.getLogger(__name__)

MAGIC = 0x7472_6976  # "virt" little-endian (§4.2.2)
VERSION = 2  # the non-legacy interface (§4.2.2); version 1 is legacy (§4.2.4)
VENDOR_ID = 0x6D76_7970  # "pyvm" little-endian; §4.2.2 leaves the vendor to the device
CONFIG_OFFSET = 0x100
WINDOW_SIZE = 0x200  # registers + 256 bytes of configuration space: what the guest is told
NO_SHM = 0xFFFF_FFFF  # SHMLen/SHMBase of an absent shared memory region: -1 (§4.2.2)

INTERRUPT_USED_BUFFER = 1 << 0  # InterruptStatus bits (§4.2.2)
INTERRUPT_CONFIG_CHANGE = 1 << 1
_INTERRUPT_BITS = INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE
_U32 = 0xFFFF_FFFF
_STATUS_BITS = 0xFF


class Reg(enum.IntEnum):
    """The control registers (§4.2.2), offsets in the window."""

    MAGIC_VALUE = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    SHM_SEL = 0x0AC
    SHM_LEN_LOW = 0x0B0
    SHM_LEN_HIGH = 0x0B4
    SHM_BASE_LOW = 0x0B8
    SHM_BASE_HIGH = 0x0BC
    QUEUE_RESET = 0x0C0  # only with VIRTIO_F_RING_RESET, which pyvmm does not offer
    CONFIG_GENERATION = 0x0FC


# The queue address registers: register -> (Virtqueue attribute, shift of its half).
_QUEUE_ADDRESS = {
    Reg.QUEUE_DESC_LOW: ("desc_table", 0),
    Reg.QUEUE_DESC_HIGH: ("desc_table", 32),
    Reg.QUEUE_DRIVER_LOW: ("avail_ring", 0),
    Reg.QUEUE_DRIVER_HIGH: ("avail_ring", 32),
    Reg.QUEUE_DEVICE_LOW: ("used_ring", 0),
    Reg.QUEUE_DEVICE_HIGH: ("used_ring", 32),
}


class VirtioMmio:
    """One virtio device on virtio-mmio: the bus device of its window, and the
    device's `Interrupt`."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, line: InterruptLine) -> None:
        self.device = device
        self.line = line
        self._lock = threading.Lock()  # InterruptStatus and the line level, together
        self._interrupt_status = 0
        self.core = VirtioCore(device, memory, self)
        self.on_notify: Callable[[int], None] = self.core.notify  # the register's fallback path

    @property
    def interrupt_status(self) -> int:
        return self._interrupt_status

    # --- the device's Interrupt (any thread) -------------------------------------------

    def used_buffer(self, queue: int) -> None:
        self._raise(INTERRUPT_USED_BUFFER)

    def config_changed(self) -> None:
        self._raise(INTERRUPT_CONFIG_CHANGE)

    def _raise(self, bit: int) -> None:
        with self._lock:
            self._interrupt_status |= bit
            self.line.set_level(True)

    def _acknowledge(self, bits: int) -> None:
        """§4.2.2 InterruptACK: the bits written are handled; the line drops with the last."""
        with self._lock:
            self._interrupt_status &= ~bits
            if not self._interrupt_status:
                self.line.set_level(False)

    # --- reset and saved state -----------------------------------------------------

    def pause(self, timeout: float) -> bool:
        """The machine's pause, passed on to the device (`VirtioDevice.pause`)."""
        return self.core.pause(timeout)

    def resume(self) -> None:
        self.core.resume()

    def reset(self) -> None:
        """Power-on: the device reset, as a driver's status 0 (§4.2.2.1), line low."""
        self.core.reset()
        self._acknowledge(_INTERRUPT_BITS)

    def save(self) -> VirtioMmioState:
        with self._lock:
            interrupt_status = self._interrupt_status
        return VirtioMmioState(self.core.save(), interrupt_status)

    def restore(self, state: object) -> None:
        """Take a saved state, checked first: a bad one raises `StateError` and leaves
        the transport and the device as they were."""
        name = f"virtio-mmio ({self.device.name})"
        checked = check_type(name, state, VirtioMmioState)
        status = check_mask(name, "interrupt_status", checked.interrupt_status, _INTERRUPT_BITS)
        self.core.restore(checked.core)
        with self._lock:
            self._interrupt_status = status
            self.line.set_level(bool(status))

    # --- the bus device (vCPU threads) -------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset >= CONFIG_OFFSET:
            return self.core.read_config(offset - CONFIG_OFFSET, size)
        if size != 4 or offset % 4:
            return 0  # §4.2.2.2: control registers are read 32 bits wide, aligned
        return self._read_register(offset) & _U32

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= CONFIG_OFFSET:
            self.core.write_config(offset - CONFIG_OFFSET, size, value)
        elif size == 4 and not offset % 4:
            self._write_register(offset, value & _U32)

    def _read_register(self, offset: int) -> int:
        core = self.core
        queue = core.selected_queue()
        if offset == Reg.MAGIC_VALUE:
            return MAGIC
        if offset == Reg.VERSION:
            return VERSION
        if offset == Reg.DEVICE_ID:
            return int(self.device.device_type)
        if offset == Reg.VENDOR_ID:
            return VENDOR_ID
        if offset == Reg.DEVICE_FEATURES:
            return core.device_features_window()
        if offset == Reg.QUEUE_NUM_MAX:
            return 0 if queue is None else queue.max_size  # 0: no such queue (§4.2.2)
        if offset == Reg.QUEUE_READY:
            return int(queue is not None and queue.ready)
        if offset == Reg.INTERRUPT_STATUS:
            return self._interrupt_status
        if offset == Reg.STATUS:
            return core.status
        if offset in (Reg.SHM_LEN_LOW, Reg.SHM_LEN_HIGH, Reg.SHM_BASE_LOW, Reg.SHM_BASE_HIGH):
            return NO_SHM
        if offset == Reg.CONFIG_GENERATION:
            return core.config_generation
        return 0  # write-only and reserved registers

    def _write_register(self, offset: int, value: int) -> None:
        core = self.core
        if offset == Reg.DEVICE_FEATURES_SEL:
            core.device_feature_select = value
        elif offset == Reg.DRIVER_FEATURES:
            core.write_driver_features(value)
        elif offset == Reg.DRIVER_FEATURES_SEL:
            core.driver_feature_select = value
        elif offset == Reg.QUEUE_SEL:
            core.queue_select = value
        elif offset == Reg.QUEUE_NOTIFY:
            # Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index (§4.2.2);
            # the core ignores one that names no queue.
            self.on_notify(value)
        elif offset == Reg.INTERRUPT_ACK:
            self._acknowledge(value & _INTERRUPT_BITS)
        elif offset == Reg.STATUS:
            self._write_status(value)
        elif offset in (Reg.QUEUE_NUM, Reg.QUEUE_READY) or offset in _QUEUE_ADDRESS:
            self._write_queue(offset, value)

    def _write_status(self, value: int) -> None:
        """§4.2.2 Status: zero resets the device (and its interrupt, §4.2.2.1); anything
        else sets flags. Bits above the 8 status bits are not a reset."""
        if value and not value & _STATUS_BITS:
            return
        self.core.write_status(value)
        if value == 0:
            self._acknowledge(_INTERRUPT_BITS)

    def _write_queue(self, offset: int, value: int) -> None:
        core = self.core
        select = core.queue_select  # once: another vCPU may select another queue meanwhile
        queue = core.queue(select)
        if queue is None or not core.queue_programmable():
            return  # no such queue, or DRIVER_OK is set: the queues are fixed
        if offset == Reg.QUEUE_READY:
            if value == 1:
                core.enable_queue(select)
            elif value == 0 and queue.ready:
                # Linux's error path (vm_del_vq) takes a queue back before DRIVER_OK and
                # reads QueueReady back as 0; the queue is unprogrammed again.
                queue.reset()
            return
        if queue.ready:
            return  # a ready queue's size and addresses are fixed until reset
        if offset == Reg.QUEUE_NUM:
            # Stored as written: enabling checks it (a power of 2 up to QueueNumMax),
            # and a bad size is then DEVICE_NEEDS_RESET, not a silently different ring.
            queue.size = value
            return
        name, shift = _QUEUE_ADDRESS[Reg(offset)]
        old = getattr(queue, name)
        setattr(queue, name, (old & ~(_U32 << shift)) | (value << shift))


class MmioNotifiers(QueueDoorbells):
    """QueueNotify as the device's `QueueDoorbells` (pyvmm.io.ioevent): one per queue on
    the register's guest address, 4 bytes, matching the queue index. A write KVM did
    not take exits to `VirtioMmio.write`, which passes the queue to `guest_wrote`;
    either way the device's `notify` runs on the I/O thread, never on a vCPU thread.
    """

    def __init__(
        self, vm: Vm, io: Registrar, transport: VirtioMmio, base: int, *, in_kernel: bool = True
    ) -> None:
        queues = len(transport.core.queues)
        super().__init__(
            vm, io, transport.device.name, queues, transport.core.notify, length=4, datamatch=True,
            fault=transport.core.device_fault, in_kernel=in_kernel,
        )  # fmt: skip
        self.place([base + Reg.QUEUE_NOTIFY] * queues)
        transport.on_notify = self.guest_wrote
