"""`PlacedDevice.save()` / `restore()` of the virtio devices as the machine places them
(pyvmm/platform/virtio.py, pyvmm/platform/virtio_pci.py), on real VMs: a device
placed on a second machine takes the first one's state and carries on; on PCI the
restored BAR 0 is where the first machine's guest had moved it, on the MMIO bus and
for KVM's ioeventfds, and no longer where the second machine's firmware put it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest
from pc_platform import MEMORY, pc_devices
from virtio import test_mmio as mmio_driver
from virtio.driver import WRITE, Driver
from virtio.handshake import ACK, DRIVER, DRIVER_OK, FEATURES_OK

from pyvmm.devices.device import DeviceState, PlacedDevice
from pyvmm.io.eventfd import EventFd
from pyvmm.io.thread import IoThread
from pyvmm.irq import NoIrqLine
from pyvmm.kvm import Cap, Kvm, KvmError, Vm
from pyvmm.memory import GuestMemory
from pyvmm.outcome import InterruptLine
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pci import PciPlatform
from pyvmm.platform.resources import ResourceAllocator
from pyvmm.platform.virtio import VirtioContext, place_on_mmio
from pyvmm.platform.virtio_pci import NOTIFY_WIDTH, place_on_pci
from pyvmm.virtio import Feature
from pyvmm.virtio.mmio import Reg, VirtioMmio
from pyvmm.virtio.pci import COMMON_OFFSET, NOTIFY_OFFSET, Common, VirtioPciFunction
from pyvmm.virtio.rng import EntropyDevice
from pyvmm.virtio.transport_state import VirtioMmioState, VirtioPciState

pytestmark = pytest.mark.kvm
FEATURES = int(Feature.VERSION_1)
MOVED = 0x1_8000_0000  # where the first machine's guest puts BAR 0


def no_line(gsi: int) -> InterruptLine:
    return NoIrqLine()


@dataclass
class Machine:
    vm: Vm
    memory: GuestMemory
    io: IoThread
    manager: DeviceManager | None = None
    pci: PciPlatform | None = None


@contextmanager
def machines() -> Iterator[list[Machine]]:
    """Two VMs with their I/O threads, closed in order. They share one guest memory:
    the second machine's RAM is the first one's, as a snapshot's restore makes it."""
    with ExitStack() as stack:
        made = []
        memory = GuestMemory([(0, MEMORY)])
        stack.callback(memory.close)
        for _ in range(2):
            kvm = stack.enter_context(Kvm())
            vm = stack.enter_context(kvm.create_vm())
            io = IoThread(lambda source, error: None)
            io.start()
            stack.callback(io.stop)
            made.append(Machine(vm, memory, io))
        yield made


def request(ring: Driver, memory: GuestMemory) -> int:
    buffer = ring.alloc(64)
    memory.fill(buffer, 64, 0)
    return ring.add_elements([(buffer, 64, WRITE)])


def wait_used(ring: Driver, count: int) -> None:
    deadline = time.monotonic() + 5
    while ring.used_idx() != count:
        assert time.monotonic() < deadline, f"used idx {ring.used_idx()}, not {count}"
        time.sleep(0.005)


def test_a_placed_mmio_device_saves_and_a_second_machine_restores_it() -> None:
    with machines() as (first, second):
        placed = []
        for machine in (first, second):
            context = VirtioContext(
                machine.memory, machine.vm, machine.io, ResourceAllocator(MEMORY), no_line, lambda data: None
            )
            (device,) = place_on_mmio([EntropyDevice()], context, acpi=True)
            placed.append(device)
        try:
            transport = placed[0].model
            assert isinstance(transport, VirtioMmio)
            ring = Driver(first.memory, 16)
            assert mmio_driver.negotiate(transport, FEATURES) & FEATURES_OK
            mmio_driver.setup_queue(transport, 0, ring)
            mmio_driver.write(transport, Reg.STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
            request(ring, first.memory)
            transport.write(Reg.QUEUE_NOTIFY, 4, 0)  # the exit path rings the doorbell too
            wait_used(ring, 1)

            first.io.pause()
            state = placed[0].save()
            first.io.resume()
            assert isinstance(state, DeviceState) and isinstance(state.models[0], VirtioMmioState)

            placed[1].restore(state)
            assert placed[1].save() == state
            restored = placed[1].model
            assert isinstance(restored, VirtioMmio) and restored.core.active
            request(ring, second.memory)
            restored.write(Reg.QUEUE_NOTIFY, 4, 0)  # served on the second machine's I/O thread
            wait_used(ring, 2)
            assert restored.interrupt_status == 1
        finally:
            for device in placed:
                device.close()


def ioeventfd_taken(vm: Vm, address: int) -> bool:
    """Does KVM already hold an ioeventfd of the notify width at `address`?"""
    probe = EventFd()
    try:
        vm.ioeventfd(probe.fileno(), address, NOTIFY_WIDTH)
    except KvmError:
        return True
    else:
        vm.ioeventfd(probe.fileno(), address, NOTIFY_WIDTH, deassign=True)
        return False
    finally:
        probe.close()


def test_a_placed_pci_device_restores_bar_0_where_the_guest_had_moved_it() -> None:
    with machines() as (first, second), ExitStack() as stack:
        placed: list[PlacedDevice] = []
        for machine in (first, second):
            machine.manager = stack.enter_context(pc_devices())
            machine.pci = PciPlatform(machine.manager, [(0, MEMORY)], no_line)
            machine.manager.add(machine.pci)
            (device,) = place_on_pci([EntropyDevice()], machine.memory, machine.vm, machine.io, machine.pci)
            stack.callback(device.close)
            placed.append(device)
        transports = [device.model for device in placed]
        assert all(isinstance(transport, VirtioPciFunction) for transport in transports)
        source, target = transports
        assert isinstance(source, VirtioPciFunction) and isinstance(target, VirtioPciFunction)
        firmware = target.function.bars.address(0)
        # The first machine's guest moves BAR 0 (both halves, as Linux does).
        source.function.config_write(0x10, 4, MOVED & 0xFFFF_FFFF | 0x4)
        source.function.config_write(0x14, 4, MOVED >> 32)
        assert first.manager is not None and second.manager is not None
        assert first.manager.mmio.read(MOVED + COMMON_OFFSET + Common.NUM_QUEUES, 2) == 1

        state = placed[0].save()
        assert isinstance(state.models[0], VirtioPciState)
        placed[1].restore(state)
        assert placed[1].save() == state
        assert target.function.bars.address(0) == MOVED
        # On the second machine's bus at the saved address, gone from the firmware's.
        assert second.manager.mmio.read(MOVED + COMMON_OFFSET + Common.NUM_QUEUES, 2) == 1
        assert second.manager.mmio.read(firmware + COMMON_OFFSET + Common.NUM_QUEUES, 2) == 0xFFFF
        # And the doorbells followed it (where KVM has ioeventfds).
        if second.vm.kvm.check_extension(Cap.IOEVENTFD):
            assert ioeventfd_taken(second.vm, MOVED + NOTIFY_OFFSET)
            assert not ioeventfd_taken(second.vm, firmware + NOTIFY_OFFSET)
