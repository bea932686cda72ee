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
from pyvmm.io.ioevent import QueueDoorbells, Registrar
from pyvmm.kvm import Vm
from pyvmm.memory import GuestMemory
from pyvmm.pci import BarRange
from pyvmm.platform.pci import PciPlatform
from pyvmm.virtio.device import VirtioDevice
from pyvmm.virtio.pci import BAR_INDEX, VirtioPciFunction

log = logging.getLogger(__name__)

NOTIFY_WIDTH = 2  # the driver writes the 16-bit queue index (§4.1.5.2)


class PciDoorbells(QueueDoorbells):
    """The device's `QueueDoorbells` at BAR 0's notify addresses, following the BAR."""

    def __init__(
        self, vm: Vm, io: Registrar, transport: VirtioPciFunction, *, in_kernel: bool = True
    ) -> None:
        queues, name = len(transport.core.queues), transport.device.name
        super().__init__(
            vm, io, name, queues, transport.core.notify, length=NOTIFY_WIDTH, datamatch=False,
            fault=transport.core.device_fault,
            in_kernel=in_kernel,
        )  # fmt: skip
        self.transport = transport
        transport.on_notify = self.guest_wrote

    def bar_changed(self, index: int, mapped: BarRange | None) -> None:
        """The PCI platform's observer: BAR 0 is now at `mapped` (or off the bus)."""
        if index != BAR_INDEX:
            return
        offsets = [self.transport.notify_offset(queue) for queue in range(len(self.doorbells))]
        self.place(None if mapped is None else [mapped.base + offset for offset in offsets])


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
    log.info("virtio-pci 00:%02x.0 (%s)", slot, device.name)

    def close() -> None:
        doorbells.close()  # no notification reaches the device past this point
        device.close()

    # Named by its place and type only: the name keys the saved state, and a restore
    # may give the device another disk file or TAP.
    return PlacedDevice(f"virtio-pci 00:{slot:02x}.0 ({device.kind})", transport, (), on_close=close)
