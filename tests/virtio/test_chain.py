"""Descriptor chains (virtio 1.2 §2.7.4, §2.7.5, §2.7.5.3): what a device is handed,
and every rule a malformed chain breaks. Each test posts buffers as a driver would
(tests/virtio/driver.py) into a real GuestMemory."""

from __future__ import annotations

import pytest
from virtio.conftest import QueueFactory, program
from virtio.driver import INDIRECT, NEXT, WRITE

from pyvmm.memory import GuestMemory
from pyvmm.virtio import Fault, Virtqueue, VirtqueueError


def pop_fault(queue: Virtqueue) -> Fault:
    with pytest.raises(VirtqueueError) as info:
        queue.pop()
    return info.value.fault


def test_a_block_style_request_arrives_as_views_into_guest_ram(make_queue: QueueFactory) -> None:
    driver, queue = make_queue()
    head = driver.add([b"HEADER16bytes..."], [512, 1])
    chain = queue.pop()
    assert chain is not None and chain.head == head
    assert chain.readable_len == 16 and chain.writable_len == 513
    assert chain.read() == b"HEADER16bytes..."
    # Zero copy: a write through the chain is at once in guest memory.
    chain.write(b"\x00", offset=512)
    status_addr = chain.buffers[2].addr
    driver.memory.write_u8(status_addr, 0x55)
    assert bytes(chain.writable[1]) == b"\x55"
    assert [b.writable for b in chain.buffers] == [False, True, True]


def test_readable_buffers_are_read_only_views(make_queue: QueueFactory) -> None:
    """§2.7.5.1: a device MUST NOT write to a device-readable buffer."""
    driver, queue = make_queue()
    driver.add([b"abc"], [])
    chain = queue.pop()
    assert chain is not None
    assert chain.readable[0].readonly
    with pytest.raises(TypeError):
        chain.readable[0][0] = 1


def test_read_and_write_span_buffers(make_queue: QueueFactory) -> None:
    """§2.7.4.1: the device MUST NOT assume a framing: the streams cross descriptors."""
    driver, queue = make_queue()
    driver.add([b"ab", b"", b"cdef"], [3, 2])
    chain = queue.pop()
    assert chain is not None
    assert chain.read() == b"abcdef"
    assert chain.read(1, 3) == b"bcd"
    assert chain.write(b"VWXYZ") == 5
    assert bytes(chain.writable[0]) + bytes(chain.writable[1]) == b"VWXYZ"
    chain.write(b"q", offset=4)
    assert bytes(chain.writable[1]) == b"Yq"


def test_reads_and_writes_past_the_buffers_are_faults(make_queue: QueueFactory) -> None:
    driver, queue = make_queue()
    driver.add([b"ab"], [1])
    chain = queue.pop()
    assert chain is not None
    for action in (lambda: chain.read(1, 2), lambda: chain.write(b"xy"), lambda: chain.write(b"", offset=2)):
        with pytest.raises(VirtqueueError) as info:
            action()
        assert info.value.fault is Fault.BUFFER_TOO_SMALL


def test_next_index_out_of_range(make_queue: QueueFactory) -> None:
    """§2.7.5: next is an index into the same table (here the queue's 8 entries)."""
    driver, queue = make_queue(8)
    driver.write_desc(0, 0x10000, 4, NEXT, 8)
    driver.publish(0)
    assert pop_fault(queue) is Fault.NEXT_INDEX


@pytest.mark.parametrize("loop", [[0], [0, 1], [3, 5, 7, 1]])
def test_a_loop_ends_after_queue_size_descriptors(make_queue: QueueFactory, loop: list[int]) -> None:
    """§2.7.5.2: loops are forbidden; the ttl (queue size) finds them in <= size steps."""
    driver, queue = make_queue(8)
    for here, there in zip(loop, loop[1:] + loop[:1], strict=True):
        driver.write_desc(here, 0x10000, 4, NEXT, there)
    driver.publish(loop[0])
    assert pop_fault(queue) is Fault.CHAIN_TOO_LONG


def test_a_chain_of_exactly_queue_size_is_fine(make_queue: QueueFactory) -> None:
    """The longest legal chain uses every descriptor once (§2.7.5.3.1)."""
    driver, queue = make_queue(8)
    driver.add([b"x"] * 8, [])
    chain = queue.pop()
    assert chain is not None and len(chain.readable) == 8


def test_readable_after_writable(make_queue: QueueFactory) -> None:
    """§2.7.4.2: device-writable elements come after every device-readable one."""
    driver, queue = make_queue()
    driver.add_elements([(0x10000, 4, 0), (0x10010, 4, WRITE), (0x10020, 4, 0)])
    assert pop_fault(queue) is Fault.READABLE_AFTER_WRITABLE


@pytest.mark.parametrize(
    ("addr", "length"),
    [
        (1 << 20, 1),  # just past RAM
        ((1 << 20) - 4, 8),  # crosses RAM's end
        ((1 << 64) - 8, 16),  # wraps the address space
        ((1 << 64) - 1, 0),  # empty, but does not start in RAM
    ],
)
def test_every_buffer_is_inside_ram(make_queue: QueueFactory, addr: int, length: int) -> None:
    """§2.7.5: addr is a guest-physical address: the whole buffer must be RAM."""
    driver, queue = make_queue()
    driver.add_elements([(0x10000, 4, 0), (addr, length, WRITE)])
    assert pop_fault(queue) is Fault.BUFFER_RAM


def test_a_buffer_crossing_from_one_region_into_the_hole() -> None:
    """GuestMemory is split around the MMIO hole: a buffer must lie in one region."""
    memory = GuestMemory([(0, 1 << 20), (2 << 20, 1 << 20)])
    driver, queue = program(memory, 4)
    driver.add_elements([((2 << 20) + 16, 32, 0)])  # in the second region: fine
    chain = queue.pop()
    assert chain is not None and chain.read() == bytes(32)
    queue.add_used(chain.head, 0)
    driver.add_elements([((1 << 20) - 16, 32, 0)])  # runs into the hole
    assert pop_fault(queue) is Fault.BUFFER_RAM
    memory.close()


def test_zero_length_buffers_are_empty_views(make_queue: QueueFactory) -> None:
    driver, queue = make_queue()
    driver.add_elements([(0x10000, 0, 0), (0x10000, 0, WRITE)])
    chain = queue.pop()
    assert chain is not None
    assert chain.readable_len == chain.writable_len == 0 and len(chain.buffers) == 2


def test_total_length_is_bounded_by_2_pow_32() -> None:
    """§2.7.5.2: no chain longer than 2**32 bytes. Nine descriptors naming the same
    512 MiB are 4.5 GiB: refused; eight are exactly 2**32: allowed."""
    memory = GuestMemory([(0, 512 << 20)])
    driver, queue = program(memory, 16)
    driver.add_elements([(0, 512 << 20, 0)] * 8)
    chain = queue.pop()
    assert chain is not None and chain.readable_len == 1 << 32
    queue.add_used(chain.head, 0)
    driver.get_used()
    driver.add_elements([(0, 512 << 20, 0)] * 8 + [(0, 1, 0)])
    assert pop_fault(queue) is Fault.CHAIN_TOO_BIG
    memory.close()


def test_the_device_limits_bytes_and_descriptors(make_queue: QueueFactory) -> None:
    """§2.7.4.1: a device MAY have a reasonable limit on a chain."""
    driver, queue = make_queue(8, max_chain_bytes=100)
    driver.add([bytes(60)], [40])
    assert queue.pop() is not None
    driver.add([bytes(60)], [41])
    assert pop_fault(queue) is Fault.CHAIN_TOO_BIG
    driver, queue = make_queue(8, max_chain_descriptors=3)
    driver.add([b"a", b"b"], [1])
    assert queue.pop() is not None
    driver.add([b"a", b"b"], [1, 1])
    assert pop_fault(queue) is Fault.TOO_MANY_DESCRIPTORS


# Indirect descriptors (§2.7.5.3)


def test_an_indirect_request_reads_like_a_direct_one(make_queue: QueueFactory) -> None:
    driver, queue = make_queue(4, indirect=True)
    head = driver.add([b"hdr", b"data"], [1])
    assert driver.read_desc(head)[2] == INDIRECT  # one ring descriptor for three buffers
    chain = queue.pop()
    assert chain is not None and chain.head == head
    assert chain.read() == b"hdrdata" and chain.writable_len == 1


def test_an_indirect_table_may_be_longer_than_the_queue(make_queue: QueueFactory) -> None:
    """Linux sizes an indirect table by the request, not by the queue (its ttl is its
    own length)."""
    driver, queue = make_queue(2, indirect=True)
    driver.add([b"x"] * 20, [])
    chain = queue.pop()
    assert chain is not None and len(chain.readable) == 20


def test_direct_descriptors_then_one_indirect(make_queue: QueueFactory) -> None:
    """§2.7.5.3.2: the device MUST handle normal descriptors followed by an indirect one;
    and it ignores the WRITE flag of the descriptor naming the table."""
    driver, queue = make_queue(4, indirect=True)
    table = driver.alloc(32)
    driver.write_desc(0, driver.alloc(2, b"in"), 2, NEXT, 1, table=table)
    driver.write_desc(1, driver.alloc(4), 4, WRITE, 0, table=table)
    driver.write_desc(0, driver.alloc(2, b"rd"), 2, NEXT, 1)
    driver.write_desc(1, table, 32, INDIRECT | WRITE, 0)
    driver.publish(0)
    chain = queue.pop()
    assert chain is not None
    assert chain.read() == b"rdin" and chain.writable_len == 4


def test_indirect_without_the_feature(make_queue: QueueFactory) -> None:
    """§2.7.5.3.1: no INDIRECT unless VIRTIO_F_INDIRECT_DESC was negotiated."""
    driver, queue = make_queue(4, indirect=False)
    driver.indirect = True  # a driver that ignores the negotiation
    driver.add([b"a", b"b"], [])
    assert pop_fault(queue) is Fault.INDIRECT_NOT_NEGOTIATED


def test_indirect_with_next(make_queue: QueueFactory) -> None:
    """§2.7.5.3.1: a driver MUST NOT set both INDIRECT and NEXT."""
    driver, queue = make_queue(4, indirect=True)
    table = driver.alloc(16)
    driver.write_desc(0, 0x10000, 1, 0, 0, table=table)
    driver.write_desc(0, table, 16, INDIRECT | NEXT, 1)
    driver.write_desc(1, 0x10000, 1, 0, 0)
    driver.publish(0)
    assert pop_fault(queue) is Fault.INDIRECT_WITH_NEXT


def test_nested_indirect_tables(make_queue: QueueFactory) -> None:
    """§2.7.5.3.1: no INDIRECT inside an indirect table (only one table per descriptor)."""
    driver, queue = make_queue(4, indirect=True)
    inner = driver.alloc(16)
    driver.write_desc(0, 0x10000, 1, 0, 0, table=inner)
    outer = driver.alloc(16)
    driver.write_desc(0, inner, 16, INDIRECT, 0, table=outer)
    driver.write_desc(0, outer, 16, INDIRECT, 0)
    driver.publish(0)
    assert pop_fault(queue) is Fault.INDIRECT_NESTED


@pytest.mark.parametrize("length", [0, 8, 24, 33, 16 * 32768 + 16])
def test_indirect_table_length(make_queue: QueueFactory, length: int) -> None:
    """§2.7.5.3: the table is desc[len / 16]: a nonzero multiple of 16, bounded."""
    driver, queue = make_queue(4, indirect=True)
    driver.write_desc(0, 0x10000, length, INDIRECT, 0)
    driver.publish(0)
    assert pop_fault(queue) is Fault.INDIRECT_TABLE_SIZE


def test_indirect_table_outside_ram(make_queue: QueueFactory) -> None:
    driver, queue = make_queue(4, indirect=True)
    driver.write_desc(0, (1 << 20) - 16, 32, INDIRECT, 0)
    driver.publish(0)
    assert pop_fault(queue) is Fault.INDIRECT_TABLE_RAM


def test_loop_inside_an_indirect_table(make_queue: QueueFactory) -> None:
    """The ttl inside a table is the table's length (rust-vmm virtio-queue's rule)."""
    driver, queue = make_queue(4, indirect=True)
    table = driver.alloc(48)
    for i in range(3):
        driver.write_desc(i, 0x10000, 1, NEXT, (i + 1) % 3, table=table)
    driver.write_desc(0, table, 48, INDIRECT, 0)
    driver.publish(0)
    assert pop_fault(queue) is Fault.CHAIN_TOO_LONG


def test_next_inside_an_indirect_table_indexes_that_table(make_queue: QueueFactory) -> None:
    driver, queue = make_queue(8, indirect=True)
    table = driver.alloc(32)
    driver.write_desc(0, 0x10000, 1, NEXT, 2, table=table)  # 2 is a queue index, not a table one
    driver.write_desc(0, table, 32, INDIRECT, 0)
    driver.publish(0)
    assert pop_fault(queue) is Fault.NEXT_INDEX
