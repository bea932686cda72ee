"""Interrupt lines into the in-kernel IOAPIC, delivered to a real guest (tests/irq/
conftest.py): edges, levels held across the guest's EOI, irqfds, resampling."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from irq.conftest import WAIT, InterruptGuest

from pyvmm.io.thread import IoThread
from pyvmm.irq import InterruptError, IrqfdEdgeLine, KvmIrqLine, NoIrqLine, ResampledIrqfdLine
from pyvmm.kvm import Cap, Kvm

pytestmark = pytest.mark.kvm

PIN = 17  # an IOAPIC-only GSI: the PIC (and its ExtINT path) stays out of the picture


@pytest.fixture
def io() -> Iterator[IoThread]:
    errors: list[BaseException] = []
    thread = IoThread(lambda source, error: errors.append(error), name="test-io")
    thread.start()
    yield thread
    thread.stop()
    assert errors == []


def test_kvm_line_pulse_is_one_edge(guest: InterruptGuest) -> None:
    guest.route_ioapic_pin(PIN, 0x41, level=False)
    line = KvmIrqLine(guest.vm, PIN)
    line.pulse()
    guest.expect(0x41)
    guest.assert_quiet()
    assert line.level is False


def test_kvm_line_level_holds_the_pin_until_lowered(guest: InterruptGuest) -> None:
    guest.route_ioapic_pin(PIN, 0x42, level=True)
    line = KvmIrqLine(guest.vm, PIN)
    line.set_level(True)
    assert guest.pin_asserted(PIN)
    guest.expect(0x42)
    assert guest.pin_asserted(PIN)  # the guest's EOI does not lower a KVM_IRQ_LINE level
    line.set_level(False)
    assert not guest.pin_asserted(PIN)
    guest.settle(0x42)


def test_kvm_line_is_usable_from_many_threads(guest: InterruptGuest) -> None:
    guest.route_ioapic_pin(PIN, 0x43, level=False)
    line = KvmIrqLine(guest.vm, PIN)
    workers = [threading.Thread(target=lambda: [line.pulse() for _ in range(50)]) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert line.level is False  # every pulse ended low, whatever the interleaving
    guest.expect(0x43)  # edges while the first is in service coalesce, as on hardware
    guest.settle(0x43, most=200)


def test_kvm_line_edge_in_service_is_taken_after_the_eoi(guest: InterruptGuest) -> None:
    """COM1's pattern on an edge-triggered pin: inside the guest's handler the UART's
    line falls (Linux reads IIR) and rises again (it writes THR, or a key arrives);
    that edge is taken once the handler has EOIed, not lost. Raising a pin that is
    high already is no edge."""
    guest.route_ioapic_pin(PIN, 0x46, level=False)
    line = KvmIrqLine(guest.vm, PIN)
    line.set_level(True)
    assert guest.next_report() == 0x46  # in the handler, before its EOI
    line.set_level(True)  # high already
    line.set_level(False)
    line.set_level(True)  # a new edge while 0x46 is in service
    guest.proceed()
    guest.expect(0x46)  # that edge, after the EOI
    guest.assert_quiet()  # and only that one: the repeated raise was none
    line.set_level(True)
    guest.assert_quiet()
    line.set_level(False)
    line.set_level(True)
    guest.expect(0x46)
    guest.assert_quiet()


def test_irqfd_edge_line_raises_through_the_eventfd(guest: InterruptGuest) -> None:
    guest.route_ioapic_pin(PIN, 0x44, level=False)
    line = IrqfdEdgeLine(guest.vm, PIN)
    try:
        threading.Thread(target=line.pulse).start()  # any thread: one eventfd write
        guest.expect(0x44)
        line.set_level(True)  # a rising edge
        guest.expect(0x44)
        line.set_level(True)  # no edge: nothing
        guest.assert_quiet()
        line.set_level(False)
        guest.assert_quiet()
    finally:
        line.close()
    line.close()  # twice is harmless


def test_resampled_line_is_raised_again_while_high(guest: InterruptGuest, io: IoThread) -> None:
    if not guest.vm.kvm.check_extension(Cap.IRQFD_RESAMPLE):
        pytest.skip("this host's KVM lacks KVM_CAP_IRQFD_RESAMPLE")
    guest.route_ioapic_pin(PIN, 0x45, level=True)
    line = ResampledIrqfdLine(guest.vm, PIN, io)
    try:
        line.set_level(True)
        wait_for(lambda: guest.pin_asserted(PIN))  # irqfds inject from a kernel worker
        # The guest EOIs: KVM deasserts and signals the resample fd, and the I/O thread,
        # seeing the device still high, asserts the pin again.
        guest.expect(0x45)
        wait_for(lambda: line.resamples >= 1)
        wait_for(lambda: guest.pin_asserted(PIN))
        line.set_level(False)
        guest.settle(0x45)  # the next EOI deasserts for good
        wait_for(lambda: not guest.pin_asserted(PIN))
        line.pulse()  # one assertion, until the next EOI
        guest.expect(0x45)
        guest.settle(0x45)
        wait_for(lambda: not guest.pin_asserted(PIN))
    finally:
        line.close()


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_irqfd_lines_need_an_irqchip() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm, pytest.raises(InterruptError, match="GSI 5"):
        IrqfdEdgeLine(vm, 5)


def test_no_irq_line_does_nothing() -> None:
    line = NoIrqLine()
    line.set_level(True)
    line.pulse()
    assert line.level is False
