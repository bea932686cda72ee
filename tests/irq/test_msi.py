"""MSI vectors delivered to a real guest: KVM_SIGNAL_MSI, and a GSI route + irqfd
written from the I/O thread; reprogramming, masking, freeing."""

from __future__ import annotations

import threading

import pytest
from irq.conftest import LAPIC_BASE, WAIT, InterruptGuest

from pyvmm.io.eventfd import EventFd
from pyvmm.io.thread import IoThread
from pyvmm.irq import (
    FIRST_MSI_GSI,
    GsiAllocator,
    InterruptError,
    MsiMessage,
    RoutedMsi,
    SignalledMsi,
    msi_vector,
)
from pyvmm.kvm import Cap, Kvm

pytestmark = pytest.mark.kvm


def to_cpu0(vector: int) -> MsiMessage:
    """Fixed delivery, edge, physical destination APIC 0 (SDM vol. 3 §11.11)."""
    return MsiMessage(LAPIC_BASE, vector)


def test_signalled_msi_reaches_the_guest(guest: InterruptGuest) -> None:
    vector = SignalledMsi(guest.vm, to_cpu0(0x46))
    sender = threading.Thread(target=vector.trigger)
    sender.start()
    guest.expect(0x46)
    sender.join(5)  # the guest can take the interrupt before the sender counts it
    assert vector.delivered == 1
    vector.update(to_cpu0(0x47))
    vector.trigger()
    guest.expect(0x47)
    vector.update(None)  # masked: nothing is sent
    vector.trigger()
    guest.assert_quiet()


def test_routed_msi_from_the_io_thread(guest: InterruptGuest) -> None:
    gsis = GsiAllocator(guest.vm)
    vector = RoutedMsi(guest.vm, gsis, to_cpu0(0x44))
    assert vector.gsi == FIRST_MSI_GSI
    errors: list[BaseException] = []
    io = IoThread(lambda source, error: errors.append(error))
    io.start()
    try:
        with EventFd() as doorbell:
            # A device's queue notification arrives in the I/O thread, which answers
            # with an interrupt: one eventfd write, no vCPU thread involved.
            def on_notify() -> None:
                doorbell.consume()
                vector.trigger()

            io.register(doorbell, on_notify, "device")
            doorbell.signal()
            guest.expect(0x44)
            vector.update(to_cpu0(0x45))  # the guest reprogrammed the MSI-X entry
            doorbell.signal()
            guest.expect(0x45)
            vector.update(None)
            doorbell.signal()
            guest.assert_quiet()
            io.unregister(doorbell)
    finally:
        io.stop()
        vector.close()
    assert errors == []
    assert all(entry.gsi != vector.gsi for entry in gsis.entries())  # freed
    assert gsis.allocate_msi(None) == FIRST_MSI_GSI  # and reusable


def test_msi_vector_picks_by_capability(guest: InterruptGuest) -> None:
    gsis = GsiAllocator(guest.vm)
    if guest.vm.kvm.check_extension(Cap.SIGNAL_MSI):
        assert isinstance(msi_vector(guest.vm, gsis, to_cpu0(0x40), prefer_signal=True), SignalledMsi)
    routed = msi_vector(guest.vm, gsis, to_cpu0(0x41))  # a route and an irqfd by default
    assert isinstance(routed, RoutedMsi)
    routed.trigger()
    guest.expect(0x41)
    routed.close()


def test_msi_without_an_irqchip_is_an_interrupt_error() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm, pytest.raises(InterruptError, match="routing table"):
        RoutedMsi(vm, GsiAllocator(vm), to_cpu0(0x41))


@pytest.mark.parametrize(("address", "data"), [(-1, 0), (1 << 64, 0), (LAPIC_BASE, 1 << 32)])
def test_message_fields_are_checked(address: int, data: int) -> None:
    with pytest.raises(InterruptError, match="MSI"):
        MsiMessage(address, data)


def test_many_threads_trigger_one_vector(guest: InterruptGuest) -> None:
    vector = SignalledMsi(guest.vm, to_cpu0(0x42))
    workers = [threading.Thread(target=lambda: [vector.trigger() for _ in range(25)]) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    guest.expect(0x42)
    guest.settle(0x42, most=200)
