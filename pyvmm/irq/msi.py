"""MSI vectors: a message (address, data) that a device sends from any thread.

Two ways to send one, chosen by what the host's KVM offers (`msi_vector`):

- `RoutedMsi`: an MSI route on a GSI of its own (KVM_SET_GSI_ROUTING, api.rst §4.52)
  and an irqfd on that GSI (api.rst §4.75): sending is one eventfd write from the
  caller's thread, no ioctl; the route changes only when the guest reprograms the
  vector. Needs KVM_CAP_IRQ_ROUTING and KVM_CAP_IRQFD; the preferred way, as in
  Cloud Hypervisor, Firecracker and crosvm.
- `SignalledMsi`: KVM_SIGNAL_MSI (api.rst §4.71) injects the message directly, one
  ioctl per interrupt, nothing to set up: the fallback where routes are missing or
  all taken (KVM_CAP_SIGNAL_MSI).

Both follow one rule for messages the guest programmed (an MSI-X table entry is
guest-written): a message KVM refuses is not an error of the VMM. The vector logs it
and drops its interrupts until the guest writes a message KVM takes; the guest only
loses its own interrupts.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from pyvmm.io.eventfd import EventFd
from pyvmm.irq.errors import InterruptError, require
from pyvmm.irq.routing import GsiAllocator
from pyvmm.kvm import Cap, KvmError, KvmIoctlError, Vm

log = logging.getLogger(__name__)

_ADDRESS_LIMIT = 1 << 64
_DATA_LIMIT = 1 << 32


@dataclass(frozen=True)
class MsiMessage:
    """What an MSI writes, and where (PCI 3.0 §6.8: a 64-bit address, 32 bits of data
    here as in kvm_msi; the data register of MSI-X is 32 bits)."""

    address: int
    data: int

    def __post_init__(self) -> None:
        if not 0 <= self.address < _ADDRESS_LIMIT:
            raise InterruptError(f"an MSI address is 64 bits, not {self.address:#x}")
        if not 0 <= self.data < _DATA_LIMIT:
            raise InterruptError(f"MSI data is 32 bits, not {self.data:#x}")


class MsiVector(Protocol):
    """An MSI a device can trigger from any thread."""

    @property
    def message(self) -> MsiMessage | None: ...

    def trigger(self) -> None:
        """Send the message (nothing when there is none)."""
        ...

    def update(self, message: MsiMessage | None) -> None:
        """The guest reprogrammed the vector (None: masked or disabled)."""
        ...

    def close(self) -> None: ...


class SignalledMsi:
    """An MSI sent with KVM_SIGNAL_MSI."""

    def __init__(self, vm: Vm, message: MsiMessage | None = None) -> None:
        require(vm, Cap.SIGNAL_MSI, "KVM_SIGNAL_MSI")
        self.vm = vm
        # Replaced whole by update(): a reader in another thread sees the old message or
        # the new one, never half of each, without a lock.
        self.message = message
        self.delivered = 0  # messages KVM reported delivered (for tests and statistics)

    def trigger(self) -> None:
        message = self.message
        if message is None:
            return
        try:
            if self.vm.signal_msi(message.address, message.data) > 0:
                self.delivered += 1
        except KvmIoctlError as exc:
            if exc.errno != errno.EINVAL:
                raise
            log.warning("KVM refused the MSI %s (%s); it is dropped", message, exc)

    def update(self, message: MsiMessage | None) -> None:
        self.message = message

    def close(self) -> None:
        self.message = None


class RoutedMsi:
    """An MSI on a GSI route of its own, sent by writing the irqfd's eventfd."""

    def __init__(self, vm: Vm, gsis: GsiAllocator, message: MsiMessage | None = None) -> None:
        require(vm, Cap.IRQFD, "an MSI route's irqfd")
        self.vm = vm
        self.gsis = gsis
        self.message: MsiMessage | None = None
        self.gsi = gsis.allocate_msi(None)
        self.trigger_fd = EventFd()
        self._lock = threading.Lock()  # orders update() against close()
        try:
            vm.irqfd(self.trigger_fd.fileno(), self.gsi)
        except KvmError as exc:
            self.trigger_fd.close()
            gsis.free_msi(self.gsi)
            raise InterruptError(f"cannot attach an irqfd to MSI GSI {self.gsi}: {exc}") from None
        self.update(message)

    def trigger(self) -> None:
        # With no route on the GSI, KVM drops what the irqfd sends: no check needed here.
        self.trigger_fd.signal()

    def update(self, message: MsiMessage | None) -> None:
        with self._lock:
            if self.trigger_fd.closed or message == self.message:
                return
            try:
                self.gsis.set_msi(self.gsi, message)
                self.message = message
            except InterruptError as exc:
                log.warning("MSI GSI %d: %s; its interrupts are dropped", self.gsi, exc)
                self.gsis.set_msi(self.gsi, None)
                self.message = None

    def close(self) -> None:
        with self._lock:
            if self.trigger_fd.closed:
                return
            if self.vm.fd >= 0:
                self.vm.irqfd(self.trigger_fd.fileno(), self.gsi, deassign=True)
            self.trigger_fd.close()
            self.gsis.free_msi(self.gsi)
            self.message = None


def can_route(vm: Vm) -> bool:
    """KVM_CHECK_EXTENSION: can this KVM send an MSI through a GSI route and an irqfd?"""
    return bool(vm.kvm.check_extension(Cap.IRQ_ROUTING) and vm.kvm.check_extension(Cap.IRQFD))


def can_signal(vm: Vm) -> bool:
    """KVM_CHECK_EXTENSION: does this KVM have KVM_SIGNAL_MSI?"""
    return bool(vm.kvm.check_extension(Cap.SIGNAL_MSI))


def msi_vector(
    vm: Vm, gsis: GsiAllocator, message: MsiMessage | None = None, *, prefer_signal: bool = False
) -> MsiVector:
    """An MSI vector by what this KVM offers: a GSI route and an irqfd when it can
    (unless `prefer_signal`), else KVM_SIGNAL_MSI; also KVM_SIGNAL_MSI when every MSI
    route is taken. `InterruptError` when this KVM can send no MSI at all."""
    signal = can_signal(vm)
    if can_route(vm) and not (prefer_signal and signal):
        try:
            return RoutedMsi(vm, gsis, message)
        except InterruptError as exc:
            if not signal:
                raise
            log.warning("%s; this MSI goes by KVM_SIGNAL_MSI instead", exc)
    if signal:
        return SignalledMsi(vm, message)
    raise InterruptError(
        "this host's KVM can send no MSI: it lacks KVM_CAP_SIGNAL_MSI and"
        " KVM_CAP_IRQ_ROUTING with KVM_CAP_IRQFD"
    )
