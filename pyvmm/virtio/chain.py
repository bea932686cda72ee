"""Walking one descriptor chain, with every check done before a device sees it
(virtio 1.2 §2.7.4, §2.7.5, §2.7.5.3).

The rules follow rust-vmm's virtio-queue: a chain is walked with a time-to-live equal
to the length of the table it is in (the queue size, or an indirect table's entry
count), so a loop ends after at most that many steps (§2.7.5.3.1: "A driver MUST NOT
create a descriptor chain longer than the Queue Size"); an indirect table is never
nested and its length is a nonzero multiple of 16. Unlike virtio-queue, which ends a
bad chain silently, every broken rule raises `VirtqueueError` naming it.

The device gets the buffers as memoryviews straight into guest RAM (no copy): the
device-readable ones read-only (§2.7.5.1: the device MUST NOT write them), the
device-writable ones writable. Each view lies inside one RAM region, because
`GuestMemory.view` refuses anything else (a buffer crossing out of a region, e.g.
into the MMIO hole, is a fault).
"""

from __future__ import annotations

from typing import NamedTuple

from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory
from pyvmm.virtio.errors import Fault, VirtqueueError
from pyvmm.virtio.spec import DESC, DESC_SIZE, DescFlag

# Plain ints on the hot path: an IntEnum operation costs far more than an int one.
_NEXT = int(DescFlag.NEXT)
_WRITE = int(DescFlag.WRITE)
_INDIRECT = int(DescFlag.INDIRECT)

MAX_CHAIN_BYTES = 1 << 32  # §2.7.5.2: no chain longer than 2**32 bytes in total
# An indirect table may be longer than the queue (Linux sizes it by the request), but
# its ttl has to stay bounded: 32768 entries (512 KiB) is the largest queue's table,
# and no driver asks for more (virtio-queue's bound, u16::MAX, is about the same).
MAX_INDIRECT_ENTRIES = 32768


class Buffer(NamedTuple):
    """Where one buffer of a chain is in guest RAM, for diagnostics and tests."""

    addr: int
    length: int
    writable: bool


class DescriptorChain:
    """One checked chain: its head index (for `Virtqueue.add_used`) and its buffers.

    `readable` come first in the chain and `writable` after (§2.7.4.2); `read` and
    `write` treat each group as one byte stream, which is what a device needs for
    e.g. a block request's header, data and status byte whatever the framing
    (§2.7.4.1: the device MUST NOT assume a particular arrangement of descriptors).
    """

    __slots__ = ("buffers", "head", "readable", "readable_len", "writable", "writable_len")

    def __init__(
        self, head: int, readable: list[memoryview], writable: list[memoryview], buffers: list[Buffer]
    ) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable
        self.buffers = buffers
        self.readable_len = sum(len(view) for view in readable)
        self.writable_len = sum(len(view) for view in writable)

    def __repr__(self) -> str:
        return (
            f"DescriptorChain(head={self.head}, readable={self.readable_len} bytes in "
            f"{len(self.readable)}, writable={self.writable_len} bytes in {len(self.writable)})"
        )

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """`length` bytes (default: all the rest) of the readable stream from `offset`."""
        if length is None:
            length = self.readable_len - offset
        if offset < 0 or length < 0 or offset + length > self.readable_len:
            raise VirtqueueError(
                Fault.BUFFER_TOO_SMALL,
                f"read of {length} bytes at {offset} from {self.readable_len} readable bytes",
            )
        parts: list[bytes] = []
        for view in self.readable:
            if length == 0:
                break
            if offset >= len(view):
                offset -= len(view)
                continue
            piece = view[offset : offset + length]
            parts.append(piece.tobytes())
            length -= len(piece)
            offset = 0
        return b"".join(parts)

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Copy `data` into the writable stream at `offset`; returns the bytes written."""
        source = memoryview(data).cast("B")
        if offset < 0 or offset + len(source) > self.writable_len:
            raise VirtqueueError(
                Fault.BUFFER_TOO_SMALL,
                f"write of {len(source)} bytes at {offset} into {self.writable_len} writable bytes",
            )
        done = 0
        for view in self.writable:
            if done == len(source):
                break
            if offset >= len(view):
                offset -= len(view)
                continue
            count = min(len(view) - offset, len(source) - done)
            view[offset : offset + count] = source[done : done + count]
            done += count
            offset = 0
        return done


def walk_chain(
    memory: GuestMemory,
    table: memoryview,
    queue_size: int,
    head: int,
    *,
    indirect: bool,
    max_bytes: int = MAX_CHAIN_BYTES,
    max_descriptors: int | None = None,
) -> DescriptorChain:
    """Check and collect the chain starting at `head` of the descriptor `table`.

    `table` is the queue's descriptor table (`queue_size` entries, already checked to
    be in RAM); `head` is below `queue_size` (the caller checked it, §2.7.6).
    `indirect` is whether VIRTIO_F_INDIRECT_DESC was negotiated. `max_bytes` and
    `max_descriptors` are the device's own limits (§2.7.4.1: "The device MAY have a
    reasonable limit of descriptors it will allow in a chain").
    """
    readable: list[memoryview] = []
    writable: list[memoryview] = []
    buffers: list[Buffer] = []
    total = 0
    entries = queue_size
    ttl = queue_size
    index = head
    in_indirect = False
    unpack = DESC.unpack_from
    while True:
        # The ttl bounds the walk by the table's length: a longer chain revisits an
        # entry, i.e. it loops (§2.7.5.2: "loops in the descriptor chain are forbidden").
        if ttl == 0:
            where = "indirect table" if in_indirect else "queue"
            detail = f"chain from head {head} is longer than its {where} ({entries})"
            raise VirtqueueError(Fault.CHAIN_TOO_LONG, detail)
        ttl -= 1
        addr, length, flags, next_index = unpack(table, index * DESC_SIZE)

        if flags & _INDIRECT:
            if not indirect:  # §2.7.5.3.1
                raise VirtqueueError(Fault.INDIRECT_NOT_NEGOTIATED, f"descriptor {index} is indirect")
            if in_indirect:  # §2.7.5.3.1: only one table per descriptor, never nested
                raise VirtqueueError(Fault.INDIRECT_NESTED, f"indirect descriptor {index} in a table")
            if flags & _NEXT:  # §2.7.5.3.1: not both INDIRECT and NEXT
                raise VirtqueueError(Fault.INDIRECT_WITH_NEXT, f"descriptor {index} has INDIRECT and NEXT")
            # §2.7.5.3: the table is desc[len / 16]; a partial entry means a bad length.
            if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_INDIRECT_ENTRIES:
                raise VirtqueueError(Fault.INDIRECT_TABLE_SIZE, f"indirect table of {length} bytes")
            try:
                table = memory.view(addr, length)
            except GuestMemoryError as exc:
                raise VirtqueueError(Fault.INDIRECT_TABLE_RAM, f"table {addr:#x}+{length:#x}") from exc
            # §2.7.5.3.2: the WRITE flag of the descriptor naming the table is ignored.
            # The walk restarts at entry 0 of the table with the table's own ttl.
            entries = ttl = length // DESC_SIZE
            index = 0
            in_indirect = True
            continue

        if max_descriptors is not None and len(buffers) >= max_descriptors:
            raise VirtqueueError(Fault.TOO_MANY_DESCRIPTORS, f"chain of head {head} over {max_descriptors}")
        total += length
        if total > max_bytes:
            raise VirtqueueError(Fault.CHAIN_TOO_BIG, f"chain from head {head} is over {max_bytes} bytes")
        is_writable = bool(flags & _WRITE)
        if not is_writable and writable:  # §2.7.4.2: readable elements before writable ones
            raise VirtqueueError(Fault.READABLE_AFTER_WRITABLE, f"descriptor {index} of head {head}")
        try:
            # A zero-length buffer gives an empty view but must still start in RAM,
            # so that every buffer a device is handed satisfies the same rule.
            view = memory.view(addr, length)
        except GuestMemoryError as exc:
            raise VirtqueueError(Fault.BUFFER_RAM, f"buffer {addr:#x}+{length:#x} of head {head}") from exc
        buffers.append(Buffer(addr, length, is_writable))
        if is_writable:
            writable.append(view)
        else:
            readable.append(view.toreadonly())

        if not flags & _NEXT:
            return DescriptorChain(head, readable, writable, buffers)
        if next_index >= entries:  # §2.7.5: next names an entry of the same table
            detail = f"descriptor {index} of head {head} has next {next_index} >= {entries}"
            raise VirtqueueError(Fault.NEXT_INDEX, detail)
        index = next_index
