"""What a virtio device is to its transport (virtio 1.2 §2, §5): its type, its
features, its configuration space, its queues, and what it does when the driver
notifies a queue.

A device never sees transport registers: virtio-pci (§4.1) and virtio-mmio (§4.2)
both drive it through `VirtioCore` (core.py), which negotiates features, keeps the
device status and the queues, and calls `activate` once the driver is ready. The same
device module works on both transports.

Saved state (`save` / `restore`, device_state.py): a device saves only its own part;
`VirtioCore` saves the queues and the negotiation beside it and, for a device that
was active, activates the restored device with the restored queues as DRIVER_OK does.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pyvmm.errors import StateError
from pyvmm.memory import GuestMemory
from pyvmm.virtio.device_state import VirtioDeviceState
from pyvmm.virtio.queue import Virtqueue


class DeviceType(enum.IntEnum):
    """Device IDs (§5): what virtio-mmio's DeviceID and virtio-pci's 0x1040 + ID say."""

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    ENTROPY = 4


class Interrupt(Protocol):
    """How a device tells the driver something (§2.3, §2.7.7): the transport turns these
    into MSI-X messages, an ISR bit and INTx, or virtio-mmio's InterruptStatus."""

    def used_buffer(self, queue: int) -> None:
        """A used buffer notification for queue `queue`."""

    def config_changed(self) -> None:
        """A configuration change notification (also sent for DEVICE_NEEDS_RESET)."""


@dataclass(frozen=True)
class Activation:
    """What a device gets when the driver sets DRIVER_OK (§3.1.1 step 8)."""

    memory: GuestMemory
    queues: Sequence[Virtqueue]
    features: int  # the negotiated feature bits
    interrupt: Interrupt
    # For a guest fault found off the notify path (a receive ring, a completion on the
    # I/O thread): sets DEVICE_NEEDS_RESET as a `VirtqueueError` from `notify` does.
    needs_reset: Callable[[str], None] = lambda reason: None


class VirtioDevice(abc.ABC):
    """One virtio device, transport-independent.

    Threads: `notify` runs on the I/O thread (or, without ioeventfd, on the vCPU
    thread that wrote the notification register); configuration accesses run on vCPU
    threads. A device that keeps state across them locks it itself.
    """

    device_type: DeviceType
    name: str  # for people: with the host side (the disk's path, the TAP)
    # The type alone (e.g. "virtio-blk"): with its place, it names the placed device,
    # which keys its saved state, so a restore may give it another disk file or TAP.
    kind: str

    @property
    @abc.abstractmethod
    def queue_sizes(self) -> Sequence[int]:
        """The maximum size of each queue; their number is the device's queue count."""

    @abc.abstractmethod
    def device_features(self) -> int:
        """The device-type feature bits it offers (§5.x.3). The transport adds the
        reserved ones it supports (VERSION_1, INDIRECT_DESC, EVENT_IDX)."""

    @abc.abstractmethod
    def config(self) -> bytes:
        """The device configuration space as it is now (§5.x.4), little-endian."""

    @abc.abstractmethod
    def write_config(self, offset: int, data: bytes) -> None:
        """The driver wrote `data` at `offset` of the configuration space (most fields
        are read-only: a device ignores writes to them)."""

    @abc.abstractmethod
    def activate(self, activation: Activation) -> None:
        """The driver is ready (DRIVER_OK): start using the queues."""

    @abc.abstractmethod
    def notify(self, queue: int) -> None:
        """The driver made buffers available on `queue` (§2.7.13.3). A `VirtqueueError`
        raised here puts the device in DEVICE_NEEDS_RESET; nothing else is affected."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Back to the state before activation (§2.4): forget the queues and requests."""

    @abc.abstractmethod
    def close(self) -> None:
        """The VM is going away: release host resources (files, TAP devices, ...)."""

    # --- the machine's pause (docs/architecture.md, "Lifecycle") -------------------------

    def pause(self, timeout: float) -> bool:
        """The I/O thread is parked: finish what the device's own threads still do
        with guest memory and the queues (False if that takes over `timeout` seconds),
        and start nothing until `resume()`. This default: a device without threads."""
        return True

    def resume(self) -> None:  # noqa: B027 (a device without threads has nothing to do)
        """The machine runs again."""

    # --- saved state (device_state.py) -------------------------------------------------

    def save(self) -> VirtioDeviceState:
        """The device's own state, taken while the VMM has paused the vCPUs and the I/O
        thread (nothing notifies the device meanwhile). `StateError` if the device
        cannot be saved; this default: a device that never said what its state is."""
        raise StateError(f"{self.name}: this device cannot be saved")

    def restore(self, state: object) -> None:
        """Take a saved state, checked first (`StateError`, nothing changed). Called on
        a reset device, before the core activates it again."""
        raise StateError(f"{self.name}: this device cannot be restored")

    def unused_chains(self) -> Sequence[int]:
        """For each queue, how many of the chains popped last the device holds without
        having used them (receive buffers waiting for data). A saved queue gives them
        back to the ring - its next_avail goes back by that many - so the restored
        device pops them again: they were never used, the driver cannot tell."""
        return (0,) * len(self.queue_sizes)
