"""Saving and restoring a `VirtioCore` (pyvmm/virtio/core.py, state.py): a driver sets
the device up and uses it, a fresh core on the same guest memory restores the state
and the driver carries on; a saved state is untrusted input, so each field is
checked and a bad state leaves the core as it was."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtio.driver import WRITE, Driver
from virtio.echo import Echo
from virtio.handshake import ACK, DRIVER, FEATURES_OK, negotiate, start
from virtio.interrupts import Interrupts

from pyvmm.errors import StateError
from pyvmm.memory import GuestMemory
from pyvmm.virtio import DeviceStatus, Feature
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.device_state import ConsoleState, EntropyState
from pyvmm.virtio.rng import EntropyDevice
from pyvmm.virtio.state import CoreState

FEATURES = int(Feature.VERSION_1 | Feature.EVENT_IDX)


@pytest.fixture
def rngs() -> Iterator[list[EntropyDevice]]:
    made: list[EntropyDevice] = []
    yield made
    for device in made:
        device.close()


def core_of(rngs: list[EntropyDevice], memory: GuestMemory) -> tuple[VirtioCore, Interrupts]:
    device = EntropyDevice()
    rngs.append(device)
    interrupts = Interrupts()
    return VirtioCore(device, memory, interrupts), interrupts


def used_request(driver: Driver, core: VirtioCore, length: int = 16) -> tuple[int, int]:
    head = driver.add_elements([(driver.alloc(length), length, WRITE)])
    core.notify(0)
    used = driver.get_used()
    assert [h for h, _ in used] == [head]
    return used[0]


def running(rngs: list[EntropyDevice], memory: GuestMemory) -> tuple[VirtioCore, Driver]:
    core, _ = core_of(rngs, memory)
    driver = Driver(memory, 16, event_idx=True)
    start(core, FEATURES, [driver])
    for _ in range(3):
        used_request(driver, core)
    return core, driver


def test_a_restored_device_is_active_and_the_driver_carries_on(
    rngs: list[EntropyDevice], memory: GuestMemory
) -> None:
    core, driver = running(rngs, memory)
    state = core.save()
    assert state.active and state.accepted == FEATURES and state.device == EntropyState()
    assert state.queues[0].next_used == 3

    fresh, interrupts = core_of(rngs, memory)
    fresh.restore(state)
    assert fresh.save() == state
    assert fresh.active and fresh.status == state.status
    # The next request is served by the restored device, at the next used position,
    # without the driver doing anything but notify.
    memory.fill(0x20000, 64, 0)
    head = driver.add_elements([(0x20000, 64, WRITE)])
    driver.enable_cb()  # used_event = 3: an interrupt for the next element
    fresh.notify(0)
    assert driver.get_used() == [(head, 64)]
    assert driver.used_idx() == 4
    assert memory.read(0x20000, 64) != bytes(64)
    assert interrupts.used == [0]


def test_a_device_saved_before_driver_ok_is_restored_inactive(
    rngs: list[EntropyDevice], memory: GuestMemory
) -> None:
    core, _ = core_of(rngs, memory)
    negotiate(core, FEATURES)
    core.queue_select = 5
    state = core.save()
    fresh, _ = core_of(rngs, memory)
    fresh.restore(state)
    assert not fresh.active and fresh.status == ACK | DRIVER | FEATURES_OK and fresh.queue_select == 5
    assert fresh.save() == state


def test_a_reset_device_round_trips(rngs: list[EntropyDevice], memory: GuestMemory) -> None:
    core, _ = core_of(rngs, memory)
    fresh, _ = core_of(rngs, memory)
    fresh.restore(core.save())
    assert fresh.save() == core.save()


def test_a_device_without_saved_state_refuses_save(memory: GuestMemory) -> None:
    core = VirtioCore(Echo(), memory, Interrupts())
    with pytest.raises(StateError, match="echo: this device cannot be saved"):
        core.save()


STATUS = st.integers(0, 0xFF)
# Each field of a CoreState with values that are wrong on their own or against the
# others (of a running device: status DRIVER_OK, one queue of 16).
BAD = {
    "status": st.sampled_from([-1, 0x100, ACK | DRIVER | FEATURES_OK, ACK | DRIVER | 4, True]),
    "accepted": st.sampled_from([-1, 1 << 64, FEATURES | 1 << 40, 0, int(Feature.EVENT_IDX), "x"]),
    "device_feature_select": st.sampled_from([-1, 1 << 32, None, 1.0]),
    "driver_feature_select": st.sampled_from([-1, 1 << 32, False]),
    "queue_select": st.sampled_from([-1, 1 << 32, "0"]),
    "config_generation": st.sampled_from([-1, 0x100, True]),
    "active": st.sampled_from([0, 1, None, False]),
    "queues": st.sampled_from([(), [], None, "q"]),
    "device": st.sampled_from([None, ConsoleState(None, b""), 0, "rng"]),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(BAD)), data=st.data())
def test_a_bad_state_is_refused_and_changes_nothing(
    rngs: list[EntropyDevice], memory: GuestMemory, field: str, data: st.DataObject
) -> None:
    source, _ = running(rngs, memory)
    state = source.save()
    bad = dataclasses.replace(state, **{field: data.draw(BAD[field])})
    target, _ = running(rngs, memory)
    before = target.save()
    with pytest.raises(StateError):
        target.restore(bad)
    assert target.save() == before
    assert target.active


def queue_field(state: CoreState, **change: object) -> CoreState:
    return dataclasses.replace(state, queues=(dataclasses.replace(state.queues[0], **change),))


@pytest.mark.parametrize(
    "change",
    [
        {"max_size": 32},  # not this device's queue
        {"size": 3},
        {"used_ring": 1 << 40},  # the rings must be in this guest's RAM
        {"desc_table": 0x1004},  # and aligned
        {"next_avail": 100},  # more in flight than the ring holds
        {"ready": 1},
    ],
)
def test_a_bad_queue_state_is_a_state_error_and_changes_nothing(
    rngs: list[EntropyDevice], memory: GuestMemory, change: dict[str, object]
) -> None:
    core, driver = running(rngs, memory)
    state = core.save()
    with pytest.raises(StateError, match="virtio-rng state: "):
        core.restore(queue_field(state, **change))
    assert core.save() == state
    used_request(driver, core)  # still working, on the same rings


def test_a_state_of_another_device_kind_is_refused(rngs: list[EntropyDevice], memory: GuestMemory) -> None:
    core, _ = running(rngs, memory)
    state = core.save()
    with pytest.raises(StateError):
        core.restore(dataclasses.replace(state, device=ConsoleState((80, 25), b"")))
    assert core.save() == state


def test_features_ok_without_version_1_and_unoffered_features(
    rngs: list[EntropyDevice], memory: GuestMemory
) -> None:
    core, _ = core_of(rngs, memory)
    negotiate(core, FEATURES)
    state = core.save()
    for accepted, message in ((int(Feature.EVENT_IDX), "VERSION_1"), (FEATURES | 1 << 3, "never offered")):
        with pytest.raises(StateError, match=message):
            core.restore(dataclasses.replace(state, accepted=accepted))
    # Before FEATURES_OK a driver may have written anything: that is a state too.
    early = dataclasses.replace(state, status=ACK | DRIVER, accepted=(1 << 64) - 1)
    core.restore(early)
    assert core.accepted == (1 << 64) - 1


def test_needs_reset_is_kept_and_a_failed_driver_ok_is_not_activated(
    rngs: list[EntropyDevice], memory: GuestMemory
) -> None:
    core, driver = running(rngs, memory)
    driver.set_avail_idx(driver.avail_idx + 100)  # a hostile idx: the queue breaks
    core.notify(0)
    assert core.status & DeviceStatus.DEVICE_NEEDS_RESET and not core.active
    state = core.save()
    assert state.queues[0].broken
    fresh, _ = core_of(rngs, memory)
    fresh.restore(state)
    assert not fresh.active and fresh.save() == state
