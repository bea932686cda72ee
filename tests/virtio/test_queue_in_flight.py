"""Chains in flight (virtio 1.2 §2.7.13, §2.7.13.1, §2.7.8): a head is in flight from
the pop that hands its chain to the device until the device uses it. The driver
builds chains from free descriptors only, so a head made available again while in
flight is a guest fault, and no device ever holds more chains than the queue size,
however fast a driver posts."""

from __future__ import annotations

import dataclasses

import pytest
from virtio.conftest import QueueFactory, program

from pyvmm.memory import GuestMemory
from pyvmm.virtio import Fault, Virtqueue, VirtqueueError


def test_a_head_made_available_again_while_in_flight_is_a_fault(make_queue: QueueFactory) -> None:
    driver, queue = make_queue(8)
    head = driver.add([b"one"], [4])
    chain = queue.pop()
    assert chain is not None and chain.head == head
    queue.add_used(head, 0)
    driver.publish(head)  # used: its descriptors are free again, reposting is fine
    chain = queue.pop()
    assert chain is not None and chain.head == head
    driver.publish(head)  # not used yet: not a new request
    with pytest.raises(VirtqueueError) as info:
        queue.pop()
    assert info.value.fault is Fault.HEAD_IN_FLIGHT and queue.in_flight() == 1
    assert queue.fault is info.value and queue.next_avail == 2  # broken until reset (§2.1.2)
    with pytest.raises(VirtqueueError) as again:
        queue.pop()
    assert again.value.fault is Fault.BROKEN


def test_a_driver_posting_without_waiting_gets_at_most_size_chains(make_queue: QueueFactory) -> None:
    """The issue's driver: it keeps making heads available without waiting for them to
    be used. The device gets each head once (size chains in all), then a fault."""
    size = 16
    driver, queue = make_queue(size)
    for _ in range(size):
        driver.add([b"req"], [])
    popped = []
    with pytest.raises(VirtqueueError) as info:
        for slot in range(10 * size):
            chain = queue.pop()
            assert chain is not None
            popped.append(chain.head)
            driver.publish(slot % size)  # again, never waiting for the used ring
    assert info.value.fault is Fault.HEAD_IN_FLIGHT
    assert sorted(popped) == list(range(size)) and queue.in_flight() == size


def test_a_head_reused_inside_one_batch_is_a_fault(make_queue: QueueFactory) -> None:
    """Two ring entries naming the same head before the device got to either."""
    driver, queue = make_queue(8)
    head = driver.add([b"x"], [1])
    driver.publish(head)
    assert queue.pop() is not None
    with pytest.raises(VirtqueueError) as info:
        queue.pop()
    assert info.value.fault is Fault.HEAD_IN_FLIGHT and queue.in_flight() == 1


def test_reset_and_restore_start_with_nothing_in_flight(memory: GuestMemory) -> None:
    """A saved queue holds no popped chain: devices finish theirs or give them back
    (VirtioCore.save counts those out of next_avail, as for virtio-net's receive
    chains). The restored queue pops them again, and tracks them from there."""
    driver, queue = program(memory, 8)
    heads = [driver.add([b"%d" % i], [8]) for i in range(3)]
    first = queue.pop()
    assert first is not None
    queue.add_used(first.head, 0)
    assert [chain.head for chain in (queue.pop(), queue.pop()) if chain] == heads[1:]
    state = dataclasses.replace(queue.save(), next_avail=(queue.next_avail - 2) & 0xFFFF)  # given back
    restored = Virtqueue(memory, queue.max_size)
    restored.restore(state)
    with pytest.raises(AssertionError, match="not in flight"):
        restored.add_used(heads[1], 0)
    assert restored.in_flight() == 0
    again = [restored.pop(), restored.pop()]
    assert [chain.head for chain in again if chain] == heads[1:] and restored.in_flight() == 2
    driver.publish(heads[2])  # still in flight in the restored queue
    with pytest.raises(VirtqueueError) as info:
        restored.pop()
    assert info.value.fault is Fault.HEAD_IN_FLIGHT
    restored.reset()
    assert restored.in_flight() == 0
