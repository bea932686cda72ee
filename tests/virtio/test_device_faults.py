"""The device-fault rule and the lock order (docs/architecture.md "Device faults",
"Lock order"), on real devices, real eventfds, a real I/O thread and a real TAP:

- a fault on the I/O thread puts only that device in DEVICE_NEEDS_RESET, is counted,
  and the device works again after the driver resets it (nothing reaches the VM's
  error report, which would stop the VM);
- a device that reports a fault with its own lock held never waits for the core's
  lock, which a vCPU thread resetting the device holds while it takes the device's;
- a TAP deleted on the host takes the card's link down; the VM goes on;
- what a guest can repeat at will is logged a few times a second at most.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time

import pytest
from net.netns import namespace
from virtio.driver import WRITE, Driver
from virtio.handshake import ACK, DRIVER, DRIVER_OK, FEATURES_OK, negotiate, program_queue, start
from virtio.interrupts import Interrupts
from virtio.test_net import BASE, Card, card, header

from pyvmm.memory import GuestMemory
from pyvmm.virtio import DeviceStatus
from pyvmm.virtio.console import ConsoleDevice
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.net import LINK_UP

__all__ = ["card", "namespace"]  # fixtures, imported for pytest
WAIT = 5.0  # generous: two cores shared by everyone
NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)


def wait_for(condition: object, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def test_driver_ok_before_the_receive_queue_is_ready_needs_reset_and_the_card_recovers(card: Card) -> None:
    """Issue: DRIVER_OK with receiveq never enabled stopped the whole VM (the I/O
    thread's error report). Now the card needs a reset, and after one it works."""
    tx = Driver(card.memory, 256, desc=0x8000, data=0x800000)
    negotiate(card.core, BASE)
    program_queue(card.core, tx, 1)  # transmitq only: receiveq is never made ready
    card.core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    wait_for(lambda: card.core.status & NEEDS_RESET, "DEVICE_NEEDS_RESET")
    assert card.interrupts.config == 1  # §2.1.2: the driver is told
    assert card.core.faults == 1
    card.works_after_a_reset()
    # The card fixture checks at teardown that nothing reached the VM's error report.


def test_an_rx_fault_reported_while_a_vcpu_resets_the_card_does_not_deadlock(card: Card) -> None:
    """Issue: the core's lock (held by a vCPU thread resetting the card, which then
    needs the card's rx lock) against the rx lock (held by the I/O thread reporting
    the fault, which then needed the core's lock)."""
    card.start()
    assert card.rx is not None
    card.rx.write_desc(0, 0x100000, 2048, WRITE | 1, 0)  # a loop: 0 -> 0
    card.rx.publish(0)
    with card.core._lock:  # a vCPU thread inside write_status(0), before device.reset()
        card.core.notify(0)  # the I/O thread finds the loop and reports it
        wait_for(lambda: card.core.status & NEEDS_RESET, "the fault reported while the core is locked")
        card.core.reset()  # takes the rx lock: free again
    assert card.core.status == 0
    card.works_after_a_reset(payload=b"still alive")


def test_a_console_fault_found_by_feed_while_a_vcpu_resets_does_not_deadlock() -> None:
    """The same shape in virtio-console: feed() (the terminal thread) finds receiveq
    broken and reports it with the console's rx lock held."""
    memory = GuestMemory([(0, 1 << 20)])
    try:
        console = ConsoleDevice(lambda data: None)
        core = VirtioCore(console, memory, Interrupts())
        rx = Driver(memory, 64, desc=0x1000, data=0x10000)
        tx = Driver(memory, 64, desc=0x4000, data=0x20000)
        start(core, BASE, [rx, tx])
        rx.write_desc(0, 0x30000, 64, WRITE | 1, 0)  # a loop: 0 -> 0
        rx.publish(0)
        fed = threading.Thread(target=console.feed, args=(b"typed",), daemon=True)
        with core._lock:  # a vCPU thread resetting the console
            fed.start()
            fed.join(WAIT)
            assert not fed.is_alive(), "feed() waited for the core's lock"
            assert core.status & NEEDS_RESET
            core.reset()
        assert core.status == 0
    finally:
        memory.close()


def test_a_fault_from_before_a_reset_does_not_touch_the_next_session(card: Card) -> None:
    card.start()
    stale = card.device._needs_reset  # what the first activation was given
    card.core.write_status(0)
    card.start()
    stale("too late")
    assert not card.core.status & NEEDS_RESET
    assert card.core.faults == 0


def test_a_tap_deleted_on_the_host_takes_the_link_down_and_the_vm_goes_on(card: Card) -> None:
    card.start()
    card.post_rx(2048, 2048)  # the TAP is polled
    subprocess.run(["ip", "-n", card.namespace.name, "link", "del", "ptap0"], check=True)
    wait_for(lambda: not card.device.link_up, "the link going down")
    assert card.interrupts.config == 1  # §5.1.4: the driver learns the new status
    status = int.from_bytes(card.core.device.config()[6:8], "little")
    assert not status & LINK_UP
    assert not card.core.status & NEEDS_RESET  # not the guest's fault
    card.transmit(header() + bytes(60))  # sending on a dead link: dropped, no error
    card.post_rx(2048)
    time.sleep(0.3)
    # The card fixture checks at teardown that nothing reached the VM's error report.


def test_twenty_thousand_bad_status_sequences_log_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Issue: one "needs reset" warning per guest reset, 10,000 lines a second."""
    memory = GuestMemory([(0, 1 << 20)])
    try:
        core = VirtioCore(ConsoleDevice(lambda data: None), memory, Interrupts())
        caplog.set_level(logging.WARNING)
        started = time.monotonic()
        for _ in range(20_000):
            core.write_status(0)
            core.write_status(ACK | DRIVER | DRIVER_OK)  # DRIVER_OK without FEATURES_OK
            assert core.status & NEEDS_RESET
        seconds = time.monotonic() - started
        lines = [record for record in caplog.records if "needs reset" in record.getMessage()]
        assert 1 <= len(lines) <= 3 + seconds + 1, (len(lines), seconds)
        assert core.faults == 20_000  # each one counted
    finally:
        memory.close()
