"""The transport-independent part of every virtio transport (virtio 1.2 §2.1, §2.2,
§3.1): feature negotiation, the device status, the queues, activation, reset, and
DEVICE_NEEDS_RESET. virtio-pci and virtio-mmio map their registers onto this.

The rules enforced here, once for both transports:
- features are offered and accepted in 32-bit windows (§4.1.4.3, §4.2.2); the
  driver may only accept offered features, and only before FEATURES_OK (§2.2);
- FEATURES_OK sticks only if VERSION_1 was accepted (a legacy driver is refused:
  pyvmm's devices are modern-only, §7.1) and nothing unoffered was (§3.1.1);
- status bits are only ever set, except by a reset (writing 0, §2.1.2 / §2.4);
- a queue is checked when the driver makes it ready (after FEATURES_OK, so the ring
  features are known), and DRIVER_OK activates the device once;
- any guest fault in a queue (`VirtqueueError`) sets DEVICE_NEEDS_RESET and sends
  a configuration change notification (§2.1.2); the device stays quiet until reset;
- so does any other exception out of the device (`device_fault`: the I/O thread's
  fault handler for the device's sources, docs/architecture.md "Device faults"): it
  is counted in `faults` and never stops the VM.

Locks (docs/architecture.md "Lock order"): `_lock` is taken first, by the vCPU
threads that program the device, and is held while the core calls the device
(activate, reset, save, restore), which then takes its own locks. What the core
hands the device to call back - `needs_reset`, `config_changed`, `used_buffer` -
never takes `_lock`: `needs_reset` takes only `_status_lock`, a leaf, so a device
may report a fault with its own locks held while a vCPU thread resets it. A fault
reported for an earlier session (before a reset the fault raced with) is dropped.

Saved state (`save` / `restore`, a `CoreState`): the negotiation, the selects, the
queues and the device model's own part. Restoring an active device activates the
model with the restored queues through the same path as DRIVER_OK, so it carries on
where it was saved without the guest doing anything.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading

from pyvmm.errors import StateError
from pyvmm.log_limit import LogLimit
from pyvmm.memory import GuestMemory
from pyvmm.virtio.device import Activation, Interrupt, VirtioDevice
from pyvmm.virtio.errors import VirtqueueError
from pyvmm.virtio.queue import Virtqueue
from pyvmm.virtio.spec import DeviceStatus, Feature
from pyvmm.virtio.state import CoreState, check_core_state, state_error

log = logging.getLogger(__name__)

# The reserved features (§6) every pyvmm transport offers on top of the device's own.
TRANSPORT_FEATURES = int(Feature.VERSION_1 | Feature.INDIRECT_DESC | Feature.EVENT_IDX)
_DRIVER_OK = int(DeviceStatus.DRIVER_OK)
_FEATURES_OK = int(DeviceStatus.FEATURES_OK)
_NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)
_FAILED = int(DeviceStatus.FAILED)
_STATUS_BITS = 0xFF


class VirtioCore:
    """The state a transport keeps for one device."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, interrupt: Interrupt) -> None:
        self.device = device
        self.memory = memory
        self.interrupt = interrupt
        self.offered = device.device_features() | TRANSPORT_FEATURES
        self.queues = [Virtqueue(memory, size) for size in device.queue_sizes]
        self._lock = threading.RLock()  # vCPU threads program it; the I/O thread notifies
        self._status_lock = threading.Lock()  # a leaf: status and active (module docstring)
        self._session = 0  # bumped by every reset: faults of an earlier one are stale
        self.faults = 0  # DEVICE_NEEDS_RESETs, for statistics
        self._warnings = LogLimit(log)  # the guest decides how often these come
        self.reset()

    # --- status and reset -----------------------------------------------------------

    def reset(self) -> None:
        """Device reset (§2.4): status 0, nothing negotiated, every queue unprogrammed."""
        with self._lock:
            with self._status_lock:
                self._session += 1
                self.status = 0
                self.active = False
            self.accepted = 0  # the driver's feature bits
            self.device_feature_select = 0
            self.driver_feature_select = 0
            self.queue_select = 0
            self.config_generation = 0
            self.device.reset()  # first: its requests in flight end before the queues go
            for queue in self.queues:
                queue.reset()

    def write_status(self, value: int) -> None:
        """The driver wrote the device status field."""
        value &= _STATUS_BITS
        with self._lock:
            if value == 0:
                self.reset()
                return
            if value & ~self.status & _FEATURES_OK and not self._features_acceptable():
                value &= ~_FEATURES_OK  # §3.1.1 step 6: the driver re-reads and sees it unset
            with self._status_lock:
                self.status |= value & ~_NEEDS_RESET  # bits are never cleared but by reset
                status, active = self.status, self.active
            if status & _DRIVER_OK and not active and not status & (_FAILED | _NEEDS_RESET):
                self._activate()

    def _features_acceptable(self) -> bool:
        if not self.accepted & Feature.VERSION_1:
            log.debug("%s: the driver did not accept VERSION_1 (a legacy driver): refused", self.device.name)
            return False
        if self.accepted & ~self.offered:
            log.debug("%s: the driver accepted features never offered: %#x", self.device.name,
                     self.accepted & ~self.offered)  # fmt: skip
            return False
        return True

    def _activate(self) -> None:
        """With `_lock` held: DRIVER_OK (or a restore) starts the device. An exception
        out of the device's activate is a device fault, as on the I/O thread."""
        session = self._session
        if not self.status & _FEATURES_OK:
            self._needs_reset(session, "DRIVER_OK without FEATURES_OK")
            return
        with self._status_lock:
            self.active = True
        report = functools.partial(self._needs_reset, session)
        try:
            self.device.activate(Activation(self.memory, self.queues, self.accepted, self, report))
        except VirtqueueError as error:
            self._needs_reset(session, str(error))
        except Exception as error:  # a device bug or a host failure: this device stops, not the VM
            self._needs_reset(session, f"activation failed: {error!r}")

    def needs_reset(self, reason: str) -> None:
        """The device cannot go on until the driver resets it (§2.1.2). From any
        thread, with any device lock held: takes only the leaf `_status_lock`."""
        self._needs_reset(self._session, reason)

    def device_fault(self, error: BaseException) -> None:
        """An exception out of the device's own work on the I/O thread (the fault
        handler its doorbells and sources are registered with, pyvmm.io.thread): the
        device needs a reset; the VM carries on (docs/architecture.md "Device faults")."""
        self.needs_reset(str(error) if isinstance(error, VirtqueueError) else f"device error: {error!r}")

    def _needs_reset(self, session: int, reason: str) -> None:
        with self._status_lock:
            if session != self._session or self.status & _NEEDS_RESET:
                return  # a reset came meanwhile, or it is already said: once per session
            self.status |= _NEEDS_RESET
            self.active = False
            self.faults += 1
            notify = bool(self.status & _DRIVER_OK)
        self._warnings.warning("%s: needs reset: %s", self.device.name, reason)
        if notify:
            self.interrupt.config_changed()

    # --- the device's interrupts, passed on to the transport's ------------------------

    def used_buffer(self, queue: int) -> None:
        self.interrupt.used_buffer(queue)

    def config_changed(self) -> None:
        """The device changed its configuration (§2.5.1): a new generation, then the
        notification, so a driver reading across the change sees it and reads again."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        self.interrupt.config_changed()

    # --- features -----------------------------------------------------------------

    def device_features_window(self) -> int:
        """The 32 offered feature bits selected by `device_feature_select`."""
        select = self.device_feature_select
        return (self.offered >> (32 * select)) & 0xFFFF_FFFF if select < 2 else 0

    def write_driver_features(self, value: int) -> None:
        """The driver accepted the 32 bits selected by `driver_feature_select`; ignored
        once FEATURES_OK is set (§2.2: negotiation is over) or for windows past 63."""
        with self._lock:
            select = self.driver_feature_select
            if self.status & _FEATURES_OK or select >= 2:
                return
            shift = 32 * select
            self.accepted = (self.accepted & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)

    def driver_features_window(self) -> int:
        select = self.driver_feature_select
        return (self.accepted >> (32 * select)) & 0xFFFF_FFFF if select < 2 else 0

    # --- queues -------------------------------------------------------------------

    def selected_queue(self) -> Virtqueue | None:
        """The queue `queue_select` names, or None past the last one (reads as size 0)."""
        return self.queue(self.queue_select)

    def queue(self, index: int) -> Virtqueue | None:
        """Queue `index`, or None past the last one. A transport reads queue_select
        once per register access and passes that index on: another vCPU may select
        another queue at any moment."""
        return self.queues[index] if 0 <= index < len(self.queues) else None

    def enable_queue(self, index: int) -> None:
        """The driver set queue `index` ready (§4.1.4.3 queue_enable, §4.2.2
        QueueReady): check its rings now; a bad one means DEVICE_NEEDS_RESET."""
        with self._lock:
            queue = self.queue(index)
            if queue is None or queue.ready or not self.queue_programmable():
                return
            try:
                queue.enable(self.accepted)
            except VirtqueueError as error:
                self.needs_reset(str(error))

    def queue_programmable(self) -> bool:
        """Queue registers may be written between FEATURES_OK and DRIVER_OK (§3.1.1)."""
        return not self.status & _DRIVER_OK

    def notify(self, index: int) -> None:
        """An available buffer notification for queue `index` (the I/O thread). A
        guest's fault in the queue puts the device in DEVICE_NEEDS_RESET; any other
        exception goes to the I/O thread, whose fault handler is `device_fault`."""
        session = self._session
        if not self.active or not 0 <= index < len(self.queues):
            return  # §2.7.13.3: notifications for unknown or idle queues are ignored
        try:
            self.device.notify(index)
        except VirtqueueError as error:
            self._needs_reset(session, str(error))

    # --- configuration space ----------------------------------------------------------

    def read_config(self, offset: int, size: int) -> int:
        """`size` bytes of the device configuration space; past its end reads as 0."""
        data = self.device.config()
        if offset < 0 or offset + size > len(data):
            return 0
        return int.from_bytes(data[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        data = self.device.config()
        if offset < 0 or offset + size > len(data):
            return
        self.device.write_config(offset, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        self.config_generation = (self.config_generation + 1) & 0xFF

    # --- the machine's pause -----------------------------------------------------------

    def pause(self, timeout: float) -> bool:
        return self.device.pause(timeout)

    def resume(self) -> None:
        self.device.resume()

    # --- saved state ------------------------------------------------------------------

    def save(self) -> CoreState:
        """The core's state and the device's (quiesced first: see `VirtioDevice.save`).
        Chains the device holds unused go back to their rings in the saved queues."""
        with self._lock:
            device = self.device.save()
            queues = []
            for queue, unused in zip(self.queues, self.device.unused_chains(), strict=True):
                saved = queue.save()
                if unused:
                    saved = dataclasses.replace(saved, next_avail=(saved.next_avail - unused) & 0xFFFF)
                queues.append(saved)
            return CoreState(
                status=self.status,
                accepted=self.accepted,
                device_feature_select=self.device_feature_select,
                driver_feature_select=self.driver_feature_select,
                queue_select=self.queue_select,
                config_generation=self.config_generation,
                active=self.active,
                queues=tuple(queues),
                device=device,
            )

    def restore(self, state: object) -> None:
        """Take a saved state, checked first; a bad one raises `StateError` and leaves
        the core and the device as they were (what is only found while loading - rings
        outside this guest's RAM, a device part of the wrong kind - puts back the
        state saved on entry)."""
        name = self.device.name
        sizes = tuple(queue.max_size for queue in self.queues)
        checked = check_core_state(name, state, self.offered, sizes)
        with self._lock:
            before = self.save()
            try:
                self._load(checked)
            except (StateError, VirtqueueError) as error:
                self._load(before)
                raise state_error(name, error) from None

    def _load(self, state: CoreState) -> None:
        self.reset()
        for queue, saved in zip(self.queues, state.queues, strict=True):
            queue.restore(saved)
        self.device.restore(state.device)
        with self._status_lock:
            self.status = state.status
        self.accepted = state.accepted
        self.device_feature_select = state.device_feature_select
        self.driver_feature_select = state.driver_feature_select
        self.queue_select = state.queue_select
        self.config_generation = state.config_generation
        if state.active:
            self._activate()
