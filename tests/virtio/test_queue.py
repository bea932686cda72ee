"""The split virtqueue, device side (virtio 1.2 §2.7): configuration, the available and
used rings, 16-bit wraparound, and notification suppression both ways (§2.7.7, §2.7.10),
against a real GuestMemory and the Linux-like test driver."""

from __future__ import annotations

import pytest
from virtio.conftest import QueueFactory
from virtio.driver import Driver

import pyvmm.virtio.queue as queue_module
from pyvmm.memory import GuestMemory
from pyvmm.virtio import Fault, Feature, Virtqueue, VirtqueueError
from pyvmm.virtio.spec import USED_ELEM


def configured(memory: GuestMemory, size: int, desc: int, avail: int, used: int) -> Virtqueue:
    queue = Virtqueue(memory, 256)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = size, desc, avail, used
    return queue


@pytest.mark.parametrize(
    ("size", "desc", "avail", "used", "why"),
    [
        (3, 0x1000, 0x2000, 0x3000, "size not a power of 2 (§2.7)"),
        (0, 0x1000, 0x2000, 0x3000, "size 0"),
        (512, 0x1000, 0x4000, 0x8000, "size above the device's maximum"),
        (8, 0x1008, 0x2000, 0x3000, "descriptor table not 16-aligned (§2.7.1)"),
        (8, 0x1000, 0x2001, 0x3000, "available ring not 2-aligned"),
        (8, 0x1000, 0x2000, 0x3002, "used ring not 4-aligned"),
        (8, (1 << 20) - 64, 0x2000, 0x3000, "descriptor table runs past RAM"),
        (8, 0x1000, (1 << 20) - 20, 0x3000, "available ring (with used_event) runs past RAM"),
        (8, 0x1000, 0x2000, (1 << 20) - 68, "used ring (with avail_event) runs past RAM"),
    ],
)
def test_bad_configurations_are_refused(
    memory: GuestMemory, size: int, desc: int, avail: int, used: int, why: str
) -> None:
    queue = configured(memory, size, desc, avail, used)
    with pytest.raises(VirtqueueError) as info:
        queue.enable(0)
    assert info.value.fault is Fault.CONFIG, why
    assert not queue.ready


def test_the_largest_queue_fits_exactly(memory: GuestMemory) -> None:
    """Sizes from the §2.7 table: 16*N, 6+2*N, 6+8*N; the used ring ends 2 bytes before
    the end of RAM (6+8*N is not a multiple of 4), and 4 bytes further is too far."""
    big = GuestMemory([(0, 1 << 20)])
    n = 32768
    used = ((1 << 20) - (6 + 8 * n)) & ~3
    queue = Virtqueue(big, n)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = n, 0, 16 * n, used
    queue.enable(0)
    assert queue.ready and queue.pop() is None
    queue.reset()
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = n, 0, 16 * n, used + 4
    with pytest.raises(VirtqueueError):
        queue.enable(0)
    big.close()


def test_not_enabled_queue_is_not_used(memory: GuestMemory) -> None:
    queue = configured(memory, 8, 0x1000, 0x2000, 0x3000)
    with pytest.raises(VirtqueueError) as info:
        queue.pop()
    assert info.value.fault is Fault.NOT_READY


def test_pop_and_add_used_round_trip(make_queue: QueueFactory) -> None:
    driver, queue = make_queue(8)
    assert queue.pop() is None
    heads = [driver.add([b"req%d" % i], [4]) for i in range(3)]
    chains = [queue.pop() for _ in range(3)]
    assert queue.pop() is None
    assert [c.head for c in chains if c] == heads
    for chain in reversed(chains):  # the device may complete out of order (§2.7.8)
        assert chain is not None
        chain.write(b"done")
        queue.add_used(chain.head, 4)
    assert driver.get_used() == [(heads[2], 4), (heads[1], 4), (heads[0], 4)]


def test_indices_wrap_at_65536(make_queue: QueueFactory) -> None:
    """§2.7.13.3: idx always increments and wraps naturally at 65536; ring slots are
    idx mod size. Start a few entries before the wrap on both rings."""
    driver, queue = make_queue(4)
    start = 0xFFFE
    queue.next_avail = queue.next_used = start
    driver.avail_idx = driver.last_used = start
    driver.set_avail_idx(start)
    driver.memory.write_u16(driver.used + 2, start)
    for i in range(6):
        head = driver.add([b"%d" % i], [1])
        chain = queue.pop()
        assert chain is not None and chain.head == head and chain.read() == b"%d" % i
        queue.add_used(chain.head, 1)
        assert driver.get_used() == [(head, 1)]
    assert queue.next_avail == queue.next_used == 4 == driver.used_idx()


def test_avail_idx_more_than_size_ahead_is_a_fault(make_queue: QueueFactory) -> None:
    """§2.7.13.3 / §2.7.6: the driver adds at most size chains, never decrements idx."""
    driver, queue = make_queue(8)
    driver.set_avail_idx(9)
    with pytest.raises(VirtqueueError) as info:
        queue.pop()
    assert info.value.fault is Fault.AVAIL_IDX
    driver2, queue2 = make_queue(8)
    driver2.set_avail_idx(0xFFFF)  # "decremented" from 0
    with pytest.raises(VirtqueueError):
        queue2.pop()


def test_avail_idx_exactly_size_ahead_is_fine(make_queue: QueueFactory) -> None:
    driver, queue = make_queue(4)
    for _ in range(4):
        driver.add([b"x"], [])
    assert all(queue.pop() is not None for _ in range(4))


def test_head_index_out_of_range(make_queue: QueueFactory) -> None:
    """§2.7.6: each ring entry is the index of a chain head in the table."""
    driver, queue = make_queue(8)
    driver.publish(8)
    with pytest.raises(VirtqueueError) as info:
        queue.pop()
    assert info.value.fault is Fault.HEAD_INDEX


def test_a_fault_breaks_the_queue_until_reset(make_queue: QueueFactory) -> None:
    """§2.1.2: after a fault the device needs a reset; the queue keeps refusing, and
    nothing else is disturbed (the ring positions stay)."""
    driver, queue = make_queue(8)
    driver.add([b"ok"], [])
    driver.publish(9)
    assert queue.pop() is not None
    with pytest.raises(VirtqueueError) as first:
        queue.pop()
    for action in (queue.pop, lambda: queue.add_used(0, 0), queue.needs_interrupt):
        with pytest.raises(VirtqueueError) as again:
            action()
        assert again.value.fault is Fault.BROKEN
    assert queue.fault is first.value and queue.next_avail == 1
    queue.reset()
    assert not queue.ready and queue.fault is None and queue.next_avail == 0


def test_add_used_checks_its_arguments(make_queue: QueueFactory) -> None:
    """Its arguments come from the device, never from the guest: a head not in flight
    or a length over 32 bits is a device bug (AssertionError), and nothing is written."""
    driver, queue = make_queue(4)
    with pytest.raises(AssertionError, match="not in flight"):  # nothing popped yet
        queue.add_used(0, 0)
    driver.add([b"x"], [])
    assert queue.pop() is not None
    for head, length in ((1, 0), (4, 0), (-1, 0), (-4, 0), (0, 1 << 32), (0, -1)):
        with pytest.raises(AssertionError):
            queue.add_used(head, length)
        assert driver.used_idx() == 0 and queue.next_used == 0
    queue.add_used(0, 0)
    with pytest.raises(AssertionError, match="not in flight"):  # used already
        queue.add_used(0, 0)
    assert driver.get_used() == [(0, 0)]


def test_used_element_is_written_before_used_idx(
    make_queue: QueueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """§2.7.8.2: len is set before idx. The order of the two stores is recorded by
    wrapping what the queue writes them through."""
    driver, queue = make_queue(4)
    driver.add([b"x"], [8])
    chain = queue.pop()
    assert chain is not None
    order: list[str] = []
    used16 = queue._used16
    assert used16 is not None

    class IdxSpy:
        def __setitem__(self, index: int, value: int) -> None:
            order.append("idx")
            used16[index] = value

    class ElemSpy:
        def pack_into(self, buffer: memoryview, offset: int, *values: int) -> None:
            order.append("elem")
            USED_ELEM.pack_into(buffer, offset, *values)

    monkeypatch.setattr(queue, "_used16", IdxSpy())
    monkeypatch.setattr(queue_module, "USED_ELEM", ElemSpy())
    queue.add_used(chain.head, 8)
    assert order == ["elem", "idx"]
    assert driver.get_used() == [(chain.head, 8)]


# Used buffer notification suppression (§2.7.7)


def complete(driver: Driver, queue: Virtqueue, count: int) -> None:
    for _ in range(count):
        driver.add([b"x"], [])
        chain = queue.pop()
        assert chain is not None
        queue.add_used(chain.head, 0)


def test_interrupt_without_event_idx_follows_the_flag(make_queue: QueueFactory) -> None:
    """§2.7.7.2 without EVENT_IDX: flags 0 -> MUST notify, 1 -> SHOULD NOT."""
    driver, queue = make_queue(8)
    assert not queue.needs_interrupt()  # nothing used yet
    complete(driver, queue, 1)
    assert queue.needs_interrupt()
    assert not queue.needs_interrupt()  # already decided for that element
    driver.disable_cb()
    complete(driver, queue, 2)
    assert not queue.needs_interrupt()
    driver.set_used_event(0)  # ignored without EVENT_IDX
    driver.enable_cb()
    complete(driver, queue, 1)
    assert queue.needs_interrupt()


def test_interrupt_with_event_idx_follows_used_event(make_queue: QueueFactory) -> None:
    """§2.7.7.2 with EVENT_IDX: notify when the element at index used_event was written;
    the NO_INTERRUPT bit is ignored."""
    driver, queue = make_queue(8, event_idx=True)
    driver.set_used_event(2)  # "wake me when used idx reaches 3"
    driver.disable_cb()  # sets the lower bit of flags: MUST be ignored with EVENT_IDX
    driver.memory.write_u16(driver.avail, 1)
    complete(driver, queue, 1)
    assert not queue.needs_interrupt()  # idx 1
    complete(driver, queue, 1)
    assert not queue.needs_interrupt()  # idx 2
    complete(driver, queue, 1)
    assert queue.needs_interrupt()  # idx 3: element 2 was written
    complete(driver, queue, 1)
    assert not queue.needs_interrupt()


def test_event_idx_for_a_batch(make_queue: QueueFactory) -> None:
    """Several elements added before one decision: notify when used_event is among them."""
    driver, queue = make_queue(8, event_idx=True)
    driver.set_used_event(1)
    complete(driver, queue, 3)  # elements 0, 1, 2
    assert queue.needs_interrupt()
    driver.set_used_event(7)
    complete(driver, queue, 3)  # 3, 4, 5
    assert not queue.needs_interrupt()


def test_event_idx_across_the_wrap(make_queue: QueueFactory) -> None:
    """The note in §2.7.7.2: used_event 0 notifies after the first buffer and again
    after the 65536th; here used_event 0 right after the 16-bit wrap."""
    driver, queue = make_queue(4, event_idx=True)
    queue.next_avail = queue.next_used = 0xFFFE
    driver.avail_idx = driver.last_used = 0xFFFE
    driver.set_avail_idx(0xFFFE)
    driver.set_used_event(0)
    complete(driver, queue, 1)  # element 0xFFFE
    assert not queue.needs_interrupt()
    complete(driver, queue, 1)  # element 0xFFFF
    assert not queue.needs_interrupt()
    complete(driver, queue, 1)  # element 0 == used_event
    assert queue.needs_interrupt()


# Available buffer notification suppression (§2.7.10)


def test_no_notify_flag_without_event_idx(make_queue: QueueFactory) -> None:
    driver, queue = make_queue(8)
    assert driver.kick_prepare(driver.avail_idx)
    queue.disable_notifications()
    assert driver.used_flags() == 1
    old = driver.avail_idx
    driver.add([b"x"], [])
    assert not driver.kick_prepare(old)
    assert queue.enable_notifications()  # a buffer came while they were off: pop it
    assert driver.used_flags() == 0
    assert queue.pop() is not None
    assert not queue.enable_notifications()


def test_avail_event_follows_the_device_with_event_idx(make_queue: QueueFactory) -> None:
    """§2.7.10 with EVENT_IDX: flags stays 0 and avail_event names the next entry the
    device wants to hear about, so a Linux driver kicks exactly for new work."""
    driver, queue = make_queue(8, event_idx=True)
    assert driver.avail_event() == 0
    old = driver.avail_idx
    driver.add([b"x"], [])
    assert driver.kick_prepare(old)  # entry 0 == avail_event
    assert queue.pop() is not None
    assert driver.avail_event() == 1
    queue.disable_notifications()
    assert driver.used_flags() == 0  # §2.7.10.2: MUST set flags to 0 with EVENT_IDX
    old = driver.avail_idx
    driver.add([b"y"], [])
    assert driver.kick_prepare(old)  # the one notification still armed
    assert queue.pop() is not None
    assert driver.avail_event() == 1  # not moved while disabled
    old = driver.avail_idx
    driver.add([b"z"], [])
    assert not driver.kick_prepare(old)  # suppressed
    assert queue.enable_notifications()
    assert driver.avail_event() == 2
    assert queue.pop() is not None


def test_features_other_than_ring_ones_change_nothing(make_queue: QueueFactory, memory: GuestMemory) -> None:
    driver = Driver(memory, 4)
    queue = configured(memory, 4, driver.desc, driver.avail, driver.used)
    queue.enable(int(Feature.VERSION_1 | Feature.RING_RESET | Feature.ACCESS_PLATFORM))
    assert not queue.event_idx and not queue.indirect
