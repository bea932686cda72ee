"""MSI-X vectors as the PCI platform delivers them (pyvmm/irq/msix_routing.py `MsixRoute`
over pyvmm/pci/msix.py and pyvmm/irq/msi.py), to a real guest: a GSI route and an
irqfd per unmasked vector, re-routed when the guest rewrites it, dropped while it is
masked (PCI 3.0 §6.8.2.9: pending, then sent at unmask), at most one GSI per table
entry, and KVM_SIGNAL_MSI where routes are missing or all taken."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator

import pytest
from irq.conftest import LAPIC_BASE, WAIT, InterruptGuest

import pyvmm.irq.msi
from pyvmm.irq import GsiAllocator, RoutedMsi, SignalledMsi, irqchip_routes, msi_vector
from pyvmm.irq.msix_routing import MsixRoute
from pyvmm.kvm import Cap, uapi
from pyvmm.pci import MsixTable
from pyvmm.pci.msix import ENTRY_CONTROL, ENTRY_DATA, ENTRY_MASKED, ENTRY_SIZE

pytestmark = pytest.mark.kvm

COUNT = 4


class Function:
    """An MSI-X table wired to the platform's sink, programmed as a driver does."""

    def __init__(self, guest: InterruptGuest, gsis: GsiAllocator) -> None:
        self.gsis = gsis
        self.table = MsixTable(COUNT)
        self.route = MsixRoute("test", functools.partial(msi_vector, guest.vm, gsis), COUNT)
        self.table.sink = self.route

    def program(self, index: int, vector: int, *, masked: bool = False) -> None:
        """Linux's order: mask, address, data, then the Mask bit as asked."""
        base = index * ENTRY_SIZE
        self.set_mask(index, True)
        self.table.table.write(base, 8, LAPIC_BASE)  # physical destination APIC 0
        self.table.table.write(base + ENTRY_DATA, 4, vector)  # fixed delivery, edge
        self.set_mask(index, masked)

    def set_mask(self, index: int, masked: bool) -> None:
        self.table.table.write(index * ENTRY_SIZE + ENTRY_CONTROL, 4, ENTRY_MASKED if masked else 0)

    def routed(self) -> dict[int, int]:
        """KVM's MSI routes as the allocator sends them: GSI -> data."""
        return {
            entry.gsi: entry.msi.data
            for entry in self.gsis.entries()
            if entry.type == uapi.KVM_IRQ_ROUTING_MSI
        }

    def pba(self) -> int:
        return self.table.pba.read(0, 8)

    def signal_from_a_device_thread(self, index: int) -> bool:
        result: list[bool] = []
        worker = threading.Thread(target=lambda: result.append(self.table.signal(index)))
        worker.start()
        worker.join(WAIT)
        return result[0]


@pytest.fixture
def function(guest: InterruptGuest) -> Iterator[Function]:
    made = Function(guest, GsiAllocator(guest.vm))
    yield made
    made.route.close()


def no_ioctl_per_interrupt(guest: InterruptGuest, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(address: int, data: int) -> int:
        raise AssertionError("KVM_SIGNAL_MSI used for a routed vector")

    monkeypatch.setattr(guest.vm, "signal_msi", refuse)


def test_an_unmasked_vector_is_an_irqfd_route(
    guest: InterruptGuest, function: Function, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_ioctl_per_interrupt(guest, monkeypatch)
    function.program(1, 0x44)
    assert function.route.vectors[1] is None  # MSI-X is still off: nothing allocated
    function.table.set_control(enabled=True, function_masked=False)
    vector = function.route.vectors[1]
    assert isinstance(vector, RoutedMsi)
    assert function.routed() == {vector.gsi: 0x44}
    assert function.signal_from_a_device_thread(1)
    guest.expect(0x44)
    assert function.route.delivered == 1

    # The guest moves the interrupt (another vector, as for a new affinity): re-routed.
    function.program(1, 0x45)
    assert function.route.vectors[1] is vector and function.routed() == {vector.gsi: 0x45}
    assert function.signal_from_a_device_thread(1)
    guest.expect(0x45)
    guest.assert_quiet()


def test_a_masked_vector_pends_and_unmasking_delivers_it(guest: InterruptGuest, function: Function) -> None:
    function.program(2, 0x46)
    function.table.set_control(enabled=True, function_masked=False)
    function.set_mask(2, True)
    assert function.routed() == {}  # the route is out of KVM's table while masked
    assert not function.signal_from_a_device_thread(2)
    assert function.pba() == 1 << 2
    guest.assert_quiet()
    function.set_mask(2, False)  # §6.8.2.9: the pending message goes out now
    guest.expect(0x46)
    assert function.pba() == 0
    guest.assert_quiet()

    # The Function Mask holds it the same way.
    function.table.set_control(enabled=True, function_masked=True)
    assert not function.table.signal(2) and function.pba() == 1 << 2
    function.table.set_control(enabled=True, function_masked=False)
    guest.expect(0x46)


def test_disable_and_reset_drop_the_routes_close_frees_the_gsis(function: Function) -> None:
    function.program(0, 0x40)
    function.program(3, 0x43)
    function.table.set_control(enabled=True, function_masked=False)
    assert sorted(function.routed().values()) == [0x40, 0x43]
    function.table.set_control(enabled=False, function_masked=False)
    assert function.routed() == {}
    assert not function.table.signal(0) and function.pba() == 0  # off: not even pending
    function.table.set_control(enabled=True, function_masked=False)
    assert sorted(function.routed().values()) == [0x40, 0x43]
    function.table.reset()
    assert function.routed() == {}
    assert function.gsis.msi_in_use == 2  # kept for the next unmask
    function.route.close()
    assert function.gsis.msi_in_use == 0


def test_a_hostile_guest_gets_at_most_one_gsi_per_entry(guest: InterruptGuest, function: Function) -> None:
    function.table.set_control(enabled=True, function_masked=False)
    for round_ in range(20):
        for index in range(COUNT):
            function.program(index, 0x40 + (round_ + index) % 8)
            function.set_mask(index, round_ % 2 == 0)
        function.table.set_control(enabled=round_ % 3 != 0, function_masked=False)
    assert function.gsis.msi_in_use == COUNT
    assert len(function.gsis.entries()) <= len(irqchip_routes()) + COUNT


def test_without_routing_the_vector_is_signalled(
    guest: InterruptGuest, function: Function, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not guest.vm.kvm.check_extension(Cap.SIGNAL_MSI):
        pytest.skip("this KVM lacks KVM_CAP_SIGNAL_MSI")
    monkeypatch.setattr(pyvmm.irq.msi, "can_route", lambda vm: False)
    function.program(0, 0x47)
    function.table.set_control(enabled=True, function_masked=False)
    assert isinstance(function.route.vectors[0], SignalledMsi)
    assert function.gsis.msi_in_use == 0
    assert function.signal_from_a_device_thread(0)
    guest.expect(0x47)


def test_when_the_routes_run_out_the_next_vector_is_signalled(
    guest: InterruptGuest, function: Function
) -> None:
    if not guest.vm.kvm.check_extension(Cap.SIGNAL_MSI):
        pytest.skip("this KVM lacks KVM_CAP_SIGNAL_MSI")
    function.gsis.max_routes = len(irqchip_routes()) + 1  # room for one MSI route
    function.program(0, 0x41)
    function.program(1, 0x42)
    function.table.set_control(enabled=True, function_masked=False)
    assert isinstance(function.route.vectors[0], RoutedMsi)
    assert isinstance(function.route.vectors[1], SignalledMsi)
    function.table.signal(1)
    guest.expect(0x42)
    function.table.signal(0)
    guest.expect(0x41)


def test_a_kvm_that_can_send_no_msi_costs_the_guest_its_interrupts_only(
    guest: InterruptGuest,
    function: Function,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(pyvmm.irq.msi, "can_route", lambda vm: False)
    monkeypatch.setattr(pyvmm.irq.msi, "can_signal", lambda vm: False)
    function.program(0, 0x40)
    function.program(1, 0x41)
    with caplog.at_level(logging.DEBUG, logger="pyvmm.irq.msix_routing"):
        function.table.set_control(enabled=True, function_masked=False)
    assert function.route.vectors == (None,) * COUNT
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "can send no MSI" in warnings[0].getMessage()  # once, not per vector
    assert function.table.signal(0)  # the device goes on; the message has nowhere to go
    guest.assert_quiet()
