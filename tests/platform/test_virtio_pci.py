"""virtio-pci's doorbells: eventfds served on the I/O thread, KVM ioeventfds that
follow BAR 0 when the guest moves it, and the exit path when KVM did not take a write."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from virtio.echo import Echo

from pyvmm.io.eventfd import EventFd
from pyvmm.io.thread import IoThread
from pyvmm.kvm import Kvm, KvmError, Vm
from pyvmm.memory import GuestMemory
from pyvmm.pci import BarRange, Space
from pyvmm.platform.virtio_pci import NOTIFY_WIDTH, PciDoorbells
from pyvmm.virtio.pci import BAR_SIZE, VirtioPciFunction

pytestmark = pytest.mark.kvm


@pytest.fixture
def vm() -> Iterator[Vm]:
    kvm = Kvm()
    machine = kvm.create_vm()
    yield machine
    machine.close()
    kvm.close()


@pytest.fixture
def io() -> Iterator[IoThread]:
    loop = IoThread(lambda source, error: None)
    loop.start()
    yield loop
    loop.stop()


def taken(vm: Vm, address: int) -> bool:
    """Does KVM already have an ioeventfd of this width at `address`? (It refuses a
    second one with EEXIST.)"""
    probe = EventFd()
    try:
        vm.ioeventfd(probe.fileno(), address, NOTIFY_WIDTH)
    except KvmError:
        return True
    finally:
        if not probe.closed:
            try:
                vm.ioeventfd(probe.fileno(), address, NOTIFY_WIDTH, deassign=True)
            except KvmError:
                pass
            probe.close()
    return False


def test_ioeventfds_follow_bar_0(vm: Vm, io: IoThread) -> None:
    memory = GuestMemory([(0, 1 << 20)])
    transport = VirtioPciFunction(Echo(), memory)
    doorbells = PciDoorbells(vm, io, transport)
    try:
        first, second = 0xC000_0000, 0xC001_0000
        notify = transport.notify_offset(0)
        doorbells.bar_changed(0, BarRange(Space.MEMORY, first, BAR_SIZE))
        # Without KVM_CAP_IOEVENTFD nothing is registered: notifications exit instead.
        assert taken(vm, first + notify) is doorbells.in_kernel
        doorbells.bar_changed(0, BarRange(Space.MEMORY, second, BAR_SIZE))
        assert taken(vm, second + notify) is doorbells.in_kernel and not taken(vm, first + notify)
        doorbells.bar_changed(0, None)  # decoding off, or the BAR refused
        assert not taken(vm, second + notify)
        doorbells.bar_changed(1, BarRange(Space.MEMORY, first, BAR_SIZE))  # not BAR 0: nothing
        assert not taken(vm, first + notify)
    finally:
        doorbells.close()
        memory.close()


def test_a_write_kvm_did_not_take_still_reaches_the_device_on_the_io_thread(vm: Vm, io: IoThread) -> None:
    memory = GuestMemory([(0, 1 << 20)])
    echo = Echo()
    transport = VirtioPciFunction(echo, memory)
    seen: list[tuple[int, str]] = []
    ran = threading.Event()

    def notify(queue: int) -> None:
        seen.append((queue, threading.current_thread().name))
        ran.set()

    transport.core.notify = notify  # type: ignore[method-assign]
    doorbells = PciDoorbells(vm, io, transport, in_kernel=False)
    try:
        transport.on_notify(0)  # what the notify region does for a write that exited
        transport.on_notify(7)  # no such queue: ignored
        assert ran.wait(5)
        assert seen == [(0, io.name)]
    finally:
        doorbells.close()
        memory.close()
