"""Saving and restoring a virtqueue: a saved state is untrusted input, so every field is
checked, alone and against the others, before the queue takes it."""

from __future__ import annotations

import dataclasses

import pytest
from virtio.conftest import QueueFactory

from pyvmm.memory import GuestMemory
from pyvmm.virtio import Fault, QueueState, Virtqueue, VirtqueueError


def test_a_saved_queue_carries_on_after_restore(make_queue: QueueFactory, memory: GuestMemory) -> None:
    driver, queue = make_queue(8, event_idx=True, indirect=True)
    for _ in range(3):
        driver.add([b"a", b"b"], [2])
    first = queue.pop()
    assert first is not None
    queue.add_used(first.head, 2)
    state = queue.save()
    assert state.next_avail == 1 and state.next_used == 1 and state.unsignalled == 1

    other = Virtqueue(memory, 256)
    other.restore(state)
    assert other.save() == state
    assert other.needs_interrupt()  # used_event 0 was passed by the element saved unsignalled
    chain = other.pop()
    assert chain is not None and chain.read() == b"ab"
    other.add_used(chain.head, 2)
    assert [h for h, _ in driver.get_used()] == [first.head, chain.head]


def test_a_queue_that_was_never_enabled(memory: GuestMemory) -> None:
    queue = Virtqueue(memory, 64)
    queue.restore(queue.save())
    assert not queue.ready


def good_state(make_queue: QueueFactory) -> QueueState:
    driver, queue = make_queue(8)
    driver.add([b"x"], [])
    assert queue.pop() is not None
    return queue.save()


@pytest.mark.parametrize(
    "change",
    [
        {"max_size": 128},  # not this device's
        {"size": 6},
        {"size": 512},
        {"size": True},
        {"desc_table": 1 << 64},
        {"desc_table": -16},
        {"desc_table": 0x1008},  # misaligned: the rings are checked like a driver's
        {"used_ring": (1 << 20) - 8},  # outside RAM
        {"next_avail": 0x10000},
        {"next_used": 0x10000},
        {"next_used": 2},  # more returned than taken
        {"next_avail": 9, "next_used": 0},  # more in flight than the ring holds
        {"unsignalled": -1},
        {"unsignalled": (1 << 16) + 1},
        {"ready": 1},
        {"event_idx": "yes"},
        {"ready": False},  # not ready, yet with ring positions
    ],
)
def test_bad_states_are_refused(
    make_queue: QueueFactory, memory: GuestMemory, change: dict[str, object]
) -> None:
    state = dataclasses.replace(good_state(make_queue), **change)  # type: ignore[arg-type]
    queue = Virtqueue(memory, 256)
    with pytest.raises(VirtqueueError) as info:
        queue.restore(state)
    assert info.value.fault is Fault.STATE
    assert not queue.ready  # nothing half-restored


def test_not_a_state(memory: GuestMemory) -> None:
    with pytest.raises(VirtqueueError):
        Virtqueue(memory).restore({"size": 8})


def test_a_broken_queue_stays_broken(make_queue: QueueFactory, memory: GuestMemory) -> None:
    driver, queue = make_queue(8)
    driver.publish(9)
    with pytest.raises(VirtqueueError):
        queue.pop()
    state = queue.save()
    assert state.broken
    other = Virtqueue(memory, 256)
    other.restore(state)
    with pytest.raises(VirtqueueError) as info:
        other.pop()
    assert info.value.fault is Fault.BROKEN
