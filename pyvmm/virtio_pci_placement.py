"""virtio devices on PCI (virtio 1.2 §4.1): each device a `VirtioPciFunction` on the
machine's PCI bus, its queue notifications served on the I/O thread.

A notification is a 16-bit write of the queue index at the queue's notify address in
BAR 0 (§4.1.5.2). Each queue has an eventfd the I/O thread waits on; with
KVM_CAP_IOEVENTFD, KVM_IOEVENTFD (api.rst §4.59) signals it for a 2-byte write at the
queue's address without a VM exit, and the registration follows BAR 0 when the guest
moves it (the PCI platform's observer). Without the capability, or for a write KVM did
not take, the write exits to the notify region, which signals the same eventfd. Either
way the device works on the I/O thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pyvmm.devices.device import PlacedDevice
from pyvmm.eventfd import EventFd
from pyvmm.ioevent import notification_callback
from pyvmm.kvm import Cap, KvmError, Vm
from pyvmm.memory import GuestMemory
from pyvmm.pci import BarRange
from pyvmm.pci_platform import PciPlatform
from pyvmm.virtio.device import VirtioDevice
from pyvmm.virtio.mmio import Registrar
from pyvmm.virtio.pci import BAR_INDEX, VirtioPciFunction

log = logging.getLogger(__name__)

NOTIFY_WIDTH = 2  # the driver writes the 16-bit queue index (§4.1.5.2)


class PciDoorbells:
    """One eventfd per queue, served on the I/O thread; KVM ioeventfds at BAR 0's
    current address when the host has them."""

    def __init__(
        self, vm: Vm, io: Registrar, transport: VirtioPciFunction, *, in_kernel: bool = True
    ) -> None:
        self.vm = vm
        self.io = io
        self.transport = transport
        self.in_kernel = bool(in_kernel and vm.kvm.check_extension(Cap.IOEVENTFD))
        self.base: int | None = None  # BAR 0 as KVM's ioeventfds know it
        self.eventfds: list[EventFd] = []
        name = transport.device.name
        try:
            for index in range(len(transport.core.queues)):
                eventfd = EventFd()
                self.eventfds.append(eventfd)
                serve = notification_callback(eventfd, transport.core.notify, index)
                io.register(eventfd, serve, f"{name} queue {index}")
        except BaseException:
            self.close()
            raise
        transport.on_notify = self.guest_wrote
        if not self.in_kernel:
            log.info("%s: no KVM_CAP_IOEVENTFD; queue notifications exit to the vCPU first", name)

    def guest_wrote(self, queue: int) -> None:
        """A notify write that reached the BAR (KVM did not take it)."""
        if 0 <= queue < len(self.eventfds):
            self.eventfds[queue].signal()

    def bar_changed(self, index: int, mapped: BarRange | None) -> None:
        """The PCI platform's observer: BAR 0 is now at `mapped` (or off the bus)."""
        if index != BAR_INDEX or not self.in_kernel:
            return
        base = None if mapped is None else mapped.base
        if base == self.base:
            return
        self._assign(self.base, deassign=True)
        self.base = None
        try:
            self._assign(base, deassign=False)
            self.base = base
        except KvmError as exc:  # e.g. an address KVM already has another eventfd on
            self._assign(base, deassign=True, quiet=True)
            log.warning("%s: queue notifications at %s exit to the vCPU: %s", self.transport.device.name,
                        hex(base or 0), exc)  # fmt: skip

    def _assign(self, base: int | None, *, deassign: bool, quiet: bool = False) -> None:
        if base is None:
            return
        for index, eventfd in enumerate(self.eventfds):
            address = base + self.transport.notify_offset(index)
            try:
                self.vm.ioeventfd(eventfd.fileno(), address, NOTIFY_WIDTH, deassign=deassign)
            except KvmError:
                if not quiet:
                    raise

    def close(self) -> None:
        """Unwatch and deassign every doorbell (while the VM is still open)."""
        if self.vm.fd >= 0:
            self._assign(self.base, deassign=True, quiet=True)
        self.base = None
        for eventfd in self.eventfds:
            if not eventfd.closed:
                self.io.unregister(eventfd)
                eventfd.close()



def place_on_pci(
    devices: Sequence[VirtioDevice], memory: GuestMemory, vm: Vm, io: Registrar, pci: PciPlatform
) -> list[PlacedDevice]:
    """Each device as a function on bus 0, in order (the first disk is /dev/vda)."""
    placed: list[PlacedDevice] = []
    try:
        for device in devices:
            placed.append(_place_one(device, memory, vm, io, pci))
    except BaseException:
        for entry in placed:
            entry.close()
        raise
    return placed


def _place_one(
    device: VirtioDevice, memory: GuestMemory, vm: Vm, io: Registrar, pci: PciPlatform
) -> PlacedDevice:
    transport = VirtioPciFunction(device, memory)
    doorbells = PciDoorbells(vm, io, transport)
    try:
        slot = pci.add_function(
            transport.function,
            msix=transport.msix,
            name=f"virtio-{device.name}",
            observer=doorbells.bar_changed,
        )
    except BaseException:
        doorbells.close()
        raise
    label = f"virtio-pci 00:{slot:02x}.0 ({device.name})"
    log.info("%s", label)

    def close() -> None:
        doorbells.close()  # no notification reaches the device past this point
        device.close()

    return PlacedDevice(label, transport, (), on_close=close)
