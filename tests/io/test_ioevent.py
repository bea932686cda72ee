"""IoEventNotifier: a guest's doorbell write reaches the device's eventfd in the I/O
thread, through KVM_IOEVENTFD or through the exit handler, with the same device code."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from guest_code import MMIO_ADDRESS, MMIO_WRITES, PORT_WRITES, real_mode_guest

from pyvmm.io.eventfd import EventFd
from pyvmm.io.ioevent import IoEventNotifier, QueueDoorbells
from pyvmm.io.thread import IoThread
from pyvmm.kvm import ExitReason, Vcpu

pytestmark = pytest.mark.kvm
WAIT = 5.0


def run_to_hlt(vcpu: Vcpu, doorbell: IoEventNotifier) -> list[tuple[int, int]]:
    """The exit handler: every write exit goes to the bus; the doorbell's to the notifier."""
    exits = []
    while (reason := vcpu.run()) != ExitReason.HLT:
        if reason == ExitReason.IO:
            io = vcpu.run_state.io
            address, size, value = io.port, io.size, vcpu.run_mapping[io.data_offset]
        else:
            assert reason == ExitReason.MMIO
            mmio = vcpu.run_state.mmio
            address, size = mmio.phys_addr, mmio.len
            value = int.from_bytes(bytes(mmio.data[:size]), "little")
        exits.append((address, value))
        if address == doorbell.address:
            doorbell.guest_wrote(size, value)
    return exits


class Device:
    """What a device does with its notifier: wait for it in the I/O thread."""

    def __init__(self, io: IoThread, doorbell: IoEventNotifier) -> None:
        self.notified = 0
        self.event = threading.Event()
        self.doorbell = doorbell
        io.register(doorbell, self.on_notify, "test device")

    def on_notify(self) -> None:
        self.notified += self.doorbell.consume()
        self.event.set()


@pytest.fixture
def io() -> Iterator[IoThread]:
    thread = IoThread(lambda source, error: pytest.fail(f"{source}: {error}"))
    thread.start()
    yield thread
    thread.stop()


@pytest.mark.parametrize("in_kernel", [True, False], ids=["ioeventfd", "exit-handler"])
def test_port_doorbell(io: IoThread, in_kernel: bool) -> None:
    with real_mode_guest(PORT_WRITES) as (vm, vcpu):
        doorbell = IoEventNotifier(vm, 0x42, 1, pio=True, in_kernel=in_kernel)
        assert doorbell.in_kernel is in_kernel
        device = Device(io, doorbell)
        exits = run_to_hlt(vcpu, doorbell)
        assert device.event.wait(WAIT)
        assert device.notified == 1
        # Through KVM the doorbell write never became an exit.
        assert exits == ([(0x43, 0x7A)] if in_kernel else [(0x42, 0x7A), (0x43, 0x7A)])
        io.unregister(doorbell)
        doorbell.close()


@pytest.mark.parametrize("in_kernel", [True, False], ids=["ioeventfd", "exit-handler"])
def test_mmio_doorbell_with_datamatch(io: IoThread, in_kernel: bool) -> None:
    with real_mode_guest(MMIO_WRITES) as (vm, vcpu):
        doorbell = IoEventNotifier(vm, MMIO_ADDRESS, 2, datamatch=0x1234, in_kernel=in_kernel)
        device = Device(io, doorbell)
        exits = run_to_hlt(vcpu, doorbell)
        assert device.event.wait(WAIT)
        assert device.notified == 1  # 0x5678 did not match, either way
        expected = [(MMIO_ADDRESS, 0x5678)] if in_kernel else [(MMIO_ADDRESS, 0x1234), (MMIO_ADDRESS, 0x5678)]
        assert exits == expected
        io.unregister(doorbell)
        doorbell.close()
        doorbell.close()


def test_widths_and_values_are_checked() -> None:
    with real_mode_guest(PORT_WRITES) as (vm, _vcpu):
        with pytest.raises(ValueError, match="1, 2, 4 or 8"):
            IoEventNotifier(vm, 0x42, 3, pio=True)
        with pytest.raises(ValueError, match="does not fit"):
            IoEventNotifier(vm, 0x42, 1, pio=True, datamatch=0x100)


def test_a_doorbell_moves_with_its_register(io: IoThread) -> None:
    """Placed nowhere first, then at 0x40, then where the guest writes (0x42): KVM
    takes the write there and nothing is left at the old address."""
    with real_mode_guest(PORT_WRITES) as (vm, vcpu):
        doorbell = IoEventNotifier(vm, None, 1, pio=True)
        assert doorbell.address is None
        doorbell.move(0x40)
        doorbell.move(0x42)
        device = Device(io, doorbell)
        assert run_to_hlt(vcpu, doorbell) == [(0x43, 0x7A)]  # 0x42's write never exited
        assert device.event.wait(WAIT) and device.notified == 1
        with EventFd() as probe:  # 0x40 is free again: KVM takes another eventfd there
            vm.ioeventfd(probe.fileno(), 0x40, 1, pio=True)
            vm.ioeventfd(probe.fileno(), 0x40, 1, pio=True, deassign=True)
        io.unregister(doorbell)
        doorbell.close()


def test_queue_doorbells_kvm_refuses_fall_back_to_the_exit_path(
    io: IoThread, caplog: pytest.LogCaptureFixture
) -> None:
    notified: list[tuple[int, str]] = []
    ran = threading.Event()

    def notify(queue: int) -> None:
        notified.append((queue, threading.current_thread().name))
        ran.set()

    with real_mode_guest(PORT_WRITES) as (vm, _vcpu), EventFd() as other:
        vm.ioeventfd(other.fileno(), MMIO_ADDRESS + 2, 2)  # queue 1's address is taken
        doorbells = QueueDoorbells(vm, io, "dev", 2, notify, length=2, datamatch=False)
        try:
            with caplog.at_level(logging.WARNING, logger="pyvmm.io.ioevent"):
                doorbells.place([MMIO_ADDRESS, MMIO_ADDRESS + 2])
            assert doorbells.addresses == [None, None]  # all or none in the kernel
            assert "dev: queue notifications at" in caplog.text
            doorbells.place([MMIO_ADDRESS + 0x10, MMIO_ADDRESS + 0x12])  # somewhere free: taken
            assert doorbells.addresses == [MMIO_ADDRESS + 0x10, MMIO_ADDRESS + 0x12]
            doorbells.guest_wrote(1)  # a write that exited anyway
            doorbells.guest_wrote(2)  # no such queue
            assert ran.wait(WAIT)
            assert notified == [(1, io.name)]
        finally:
            doorbells.close()
        assert all(doorbell.eventfd.closed for doorbell in doorbells.doorbells)
        vm.ioeventfd(other.fileno(), MMIO_ADDRESS + 2, 2, deassign=True)
