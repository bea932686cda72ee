"""GsiAllocator: the GSI plan of the PC platform and a routing table that keeps the
irqchip routes KVM_CREATE_IRQCHIP installed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from irq.conftest import InterruptGuest

from pyvmm.irq import (
    FIRST_MSI_GSI,
    GsiAllocator,
    InterruptError,
    KvmIrqLine,
    MsiMessage,
    irqchip_routes,
)
from pyvmm.kvm import Kvm, Vm, uapi

pytestmark = pytest.mark.kvm

MESSAGE = MsiMessage(0xFEE0_0000, 0x41)


@pytest.fixture
def vm() -> Iterator[Vm]:
    with Kvm() as kvm, kvm.create_vm() as machine:
        machine.create_irqchip()
        yield machine


def test_irqchip_routes_are_those_of_kvm_create_irqchip() -> None:
    routes = {(e.gsi, e.irqchip.irqchip, e.irqchip.pin) for e in irqchip_routes()}
    assert len(routes) == 16 * 2 + 8
    assert all(e.type == uapi.KVM_IRQ_ROUTING_IRQCHIP for e in irqchip_routes())
    assert (4, uapi.KVM_IRQCHIP_IOAPIC, 4) in routes and (4, uapi.KVM_IRQCHIP_PIC_MASTER, 4) in routes
    assert (12, uapi.KVM_IRQCHIP_PIC_SLAVE, 4) in routes
    assert (20, uapi.KVM_IRQCHIP_IOAPIC, 20) in routes
    assert not any(gsi == 20 and chip != uapi.KVM_IRQCHIP_IOAPIC for gsi, chip, _pin in routes)


def test_isa_irqs_are_their_own_gsis() -> None:
    assert GsiAllocator.isa(4) == 4
    with pytest.raises(InterruptError, match="ISA IRQs are 0-15"):
        GsiAllocator.isa(16)


def test_msi_gsis_from_24_lowest_free_first(vm: Vm) -> None:
    gsis = GsiAllocator(vm)
    assert [gsis.allocate_msi(MESSAGE) for _ in range(3)] == [24, 25, 26]
    gsis.free_msi(25)
    assert gsis.allocate_msi(None) == 25
    msi = [e for e in gsis.entries() if e.type == uapi.KVM_IRQ_ROUTING_MSI]
    assert [e.gsi for e in msi] == [24, 26]  # 25 has no message: no route
    assert msi[0].msi.address_lo == 0xFEE0_0000 and msi[0].msi.data == 0x41


def test_msi_routes_are_bounded_by_kvms_table_size(vm: Vm) -> None:
    gsis = GsiAllocator(vm)
    assert gsis.max_routes > FIRST_MSI_GSI
    gsis.max_routes = len(irqchip_routes()) + 2  # as a KVM with a small table would say
    gsis.allocate_msi(MESSAGE)
    gsis.allocate_msi(MESSAGE)
    with pytest.raises(InterruptError, match="all 2 MSI routes"):
        gsis.allocate_msi(MESSAGE)


def test_without_routing_support_msi_routes_are_refused(vm: Vm) -> None:
    gsis = GsiAllocator(vm)
    gsis.max_routes = 0  # KVM_CAP_IRQ_ROUTING absent
    with pytest.raises(InterruptError, match="KVM_CAP_IRQ_ROUTING"):
        gsis.allocate_msi(MESSAGE)
    assert len(gsis.entries()) == len(irqchip_routes())  # the irqchip's own routes stay


def test_a_refused_table_leaves_the_allocator_unchanged(vm: Vm) -> None:
    gsis = GsiAllocator(vm)
    gsis.allocate_msi(MESSAGE)
    vm.close()  # every later KVM_SET_GSI_ROUTING fails
    with pytest.raises(InterruptError, match="KVM refused"):
        gsis.allocate_msi(MESSAGE)
    assert [e.gsi for e in gsis.entries() if e.type == uapi.KVM_IRQ_ROUTING_MSI] == [24]


def test_isa_lines_still_work_after_msi_routes_are_added(guest: InterruptGuest) -> None:
    """KVM_SET_GSI_ROUTING replaces the whole table: without the irqchip routes in it,
    this pin would be disconnected."""
    gsis = GsiAllocator(guest.vm)
    gsis.allocate_msi(MESSAGE)
    guest.route_ioapic_pin(17, 0x43, level=False)
    KvmIrqLine(guest.vm, 17).pulse()
    guest.expect(0x43)
