"""VirtioCore: feature negotiation, device status, queue enabling, activation, reset
and DEVICE_NEEDS_RESET (virtio 1.2 §2.1, §2.2, §3.1), with a small echo device."""

from __future__ import annotations

import pytest
from virtio.driver import Driver
from virtio.echo import ECHO_FEATURE, Echo
from virtio.handshake import ACK, DRIVER, DRIVER_OK, FEATURES_OK, negotiate, program_queue
from virtio.interrupts import Interrupts

from pyvmm.memory import GuestMemory
from pyvmm.virtio import DeviceStatus, Feature
from pyvmm.virtio.core import TRANSPORT_FEATURES, VirtioCore

NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)


@pytest.fixture
def core(memory: GuestMemory) -> VirtioCore:
    return VirtioCore(Echo(), memory, Interrupts())


def test_offered_features_come_in_two_windows(core: VirtioCore) -> None:
    core.device_feature_select = 0
    low = core.device_features_window()
    core.device_feature_select = 1
    high = core.device_features_window()
    core.device_feature_select = 7
    assert core.device_features_window() == 0
    assert low | high << 32 == ECHO_FEATURE | TRANSPORT_FEATURES
    assert high & 1  # VERSION_1 is bit 32


def test_a_legacy_driver_is_refused(core: VirtioCore) -> None:
    """Without VERSION_1 FEATURES_OK does not stick (§3.1.1 step 6)."""
    negotiate(core, ECHO_FEATURE)
    assert not core.status & FEATURES_OK


def test_unoffered_features_are_refused(core: VirtioCore) -> None:
    negotiate(core, int(Feature.VERSION_1) | 1 << 5)
    assert not core.status & FEATURES_OK


def test_features_are_fixed_after_features_ok(core: VirtioCore) -> None:
    negotiate(core, int(Feature.VERSION_1))
    assert core.status & FEATURES_OK
    core.driver_feature_select = 0
    core.write_driver_features(ECHO_FEATURE)
    assert core.accepted == Feature.VERSION_1


def test_a_full_handshake_moves_data_and_interrupts(core: VirtioCore, memory: GuestMemory) -> None:
    negotiate(core, int(Feature.VERSION_1 | Feature.EVENT_IDX))
    driver = Driver(memory, 8, event_idx=True)
    program_queue(core, driver)
    core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    echo = core.device
    assert isinstance(echo, Echo) and len(echo.activations) == 1
    head = driver.add([b"ping"], [4])
    core.notify(0)
    [(used_head, length)] = driver.get_used()
    assert (used_head, length) == (head, 4)
    assert isinstance(core.interrupt, Interrupts) and core.interrupt.used == [0]
    core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert len(echo.activations) == 1  # activated once


def test_status_bits_only_clear_on_reset(core: VirtioCore) -> None:
    negotiate(core, int(Feature.VERSION_1))
    core.write_status(ACK)
    assert core.status == ACK | DRIVER | FEATURES_OK
    core.write_status(0)
    assert core.status == 0 and core.accepted == 0
    assert isinstance(core.device, Echo) and core.device.resets >= 2  # construction + reset


def test_a_queue_outside_ram_needs_reset(core: VirtioCore, memory: GuestMemory) -> None:
    negotiate(core, int(Feature.VERSION_1))
    driver = Driver(memory, 8)
    driver.used = 1 << 40  # beyond RAM
    program_queue(core, driver)
    core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert core.status & NEEDS_RESET and not core.active
    # §2.1.2: the notification is owed only once DRIVER_OK was set: it was not yet
    assert isinstance(core.interrupt, Interrupts) and core.interrupt.config == 0
    assert isinstance(core.device, Echo) and not core.device.activations
    core.notify(0)  # ignored: nothing active


def test_a_malformed_chain_needs_reset_and_a_reset_recovers(core: VirtioCore, memory: GuestMemory) -> None:
    negotiate(core, int(Feature.VERSION_1))
    driver = Driver(memory, 8)
    program_queue(core, driver)
    core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    driver.write_desc(0, 0x20000, 4, 1, 0)  # NEXT pointing at itself: a loop
    driver.publish(0)
    core.notify(0)
    assert core.status & NEEDS_RESET and not core.active
    assert isinstance(core.interrupt, Interrupts) and core.interrupt.config == 1
    core.write_status(0)
    negotiate(core, int(Feature.VERSION_1))
    driver = Driver(memory, 8)
    program_queue(core, driver)
    core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    head = driver.add([b"ok"], [2])
    core.notify(0)
    assert driver.get_used() == [(head, 2)]


def test_configuration_space_bounds(core: VirtioCore) -> None:
    assert core.read_config(0, 4) == 0x44332211
    assert core.read_config(2, 2) == 0x4433
    assert core.read_config(3, 4) == 0  # past the end
    core.write_config(1, 1, 0x1FF)
    core.write_config(4, 1, 0)  # past the end: dropped
    assert isinstance(core.device, Echo) and core.device.config_writes == [(1, b"\xff")]


def test_notifications_for_unknown_queues_are_ignored(core: VirtioCore) -> None:
    core.notify(0)
    core.notify(99)
    core.notify(-1)


def test_a_device_reports_a_fault_found_off_the_notify_path(core: VirtioCore, memory: GuestMemory) -> None:
    negotiate(core, int(Feature.VERSION_1))
    program_queue(core, Driver(memory, 8))
    core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert isinstance(core.device, Echo)
    core.device.activations[-1].needs_reset("a receive ring went bad")
    assert core.status & NEEDS_RESET and not core.active
    assert isinstance(core.interrupt, Interrupts) and core.interrupt.config == 1


def test_a_device_side_config_change_is_a_new_generation(core: VirtioCore, memory: GuestMemory) -> None:
    negotiate(core, int(Feature.VERSION_1))
    program_queue(core, Driver(memory, 8))
    core.write_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert isinstance(core.device, Echo)
    before = core.config_generation
    core.device.activations[-1].interrupt.config_changed()  # e.g. a console resized
    assert core.config_generation == (before + 1) & 0xFF
    assert isinstance(core.interrupt, Interrupts) and core.interrupt.config == 1
