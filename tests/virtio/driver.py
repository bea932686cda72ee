"""A virtio driver for tests: posts buffers into guest memory the way Linux's
drivers/virtio/virtio_ring.c does for a split ring (virtqueue_add_split and friends),
so that a test reads like a driver talking to the device under test.

- Free descriptors form a list linked through `next` (vring_alloc_queue_split sets
  desc[i].next = i + 1); a request takes them from the head of that list.
- Out (device-readable) elements first, then in (device-writable) ones, NEXT on all
  but the last (§2.7.13.1). With indirect descriptors negotiated and more than one
  element, the elements go into a separate table and the ring gets one INDIRECT
  descriptor (virtqueue_add_split's `vq->indirect && total_sg > 1`).
- The head goes to avail->ring[avail_idx % size], then avail->idx is bumped
  (§2.7.13.2, §2.7.13.3); `kick_prepare` is virtqueue_kick_prepare_split (§2.7.10).
- `get_used` is virtqueue_get_buf_ctx_split: it reads used->idx and the elements and
  frees their descriptors; `enable_cb` / `disable_cb` move used_event or the flag.

Buffers come from a bump allocator in a data area; tests can also poke any raw field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pyvmm.memory import GuestMemory
from pyvmm.virtio.spec import (
    DESC,
    AvailFlag,
    DescFlag,
    UsedFlag,
    avail_event_offset,
    used_event_offset,
    vring_need_event,
)

NEXT, WRITE, INDIRECT = int(DescFlag.NEXT), int(DescFlag.WRITE), int(DescFlag.INDIRECT)


@dataclass
class Driver:
    memory: GuestMemory
    size: int
    desc: int = 0x1000
    avail: int = 0x0  # placed after the table when 0
    used: int = 0x0  # placed after the available ring (4-aligned) when 0
    data: int = 0x10000  # where buffers and indirect tables are allocated
    indirect: bool = False
    event_idx: bool = False
    avail_idx: int = 0
    last_used: int = 0
    free_head: int = 0
    num_free: int = 0
    _next_data: int = 0
    chains: dict[int, list[int]] = field(default_factory=dict)  # head -> descriptors used

    def __post_init__(self) -> None:
        if not self.avail:
            self.avail = self.desc + 16 * self.size
        if not self.used:
            self.used = (self.avail + 6 + 2 * self.size + 3) & ~3
        self.memory.fill(self.desc, 16 * self.size)
        self.memory.fill(self.avail, 6 + 2 * self.size)
        self.memory.fill(self.used, 6 + 8 * self.size)  # §2.7.10.1: flags start at 0
        for i in range(self.size):  # the free list: desc[i].next = i + 1
            self.write_desc(i, 0, 0, 0, (i + 1) & 0xFFFF)
        self.num_free = self.size
        self._next_data = self.data

    # Raw access, for tests that break a rule on purpose.
    def write_desc(self, index: int, addr: int, length: int, flags: int, next_: int, table: int = -1) -> None:
        base = self.desc if table < 0 else table
        self.memory.write(base + 16 * index, DESC.pack(addr, length, flags, next_))

    def read_desc(self, index: int) -> tuple[int, int, int, int]:
        return DESC.unpack(self.memory.read(self.desc + 16 * index, 16))

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.memory.write_u16(self.avail + 2, self.avail_idx)

    def set_ring(self, slot: int, head: int) -> None:
        self.memory.write_u16(self.avail + 4 + 2 * (slot % self.size), head)

    def publish(self, head: int) -> None:
        """Put a chain head in the ring and expose it (§2.7.13.2, §2.7.13.3)."""
        self.set_ring(self.avail_idx, head)
        self.set_avail_idx(self.avail_idx + 1)

    def alloc(self, length: int, content: bytes = b"") -> int:
        addr = self._next_data
        self._next_data = (addr + max(length, 1) + 15) & ~15
        if content:
            self.memory.write(addr, content)
        return addr

    def add(self, out: list[bytes], in_lens: list[int]) -> int:
        """Post one request: device-readable `out` buffers, then writable ones of
        `in_lens` bytes. Returns the head index (virtqueue_add_split)."""
        elements = [(self.alloc(len(b), b), len(b), 0) for b in out]
        elements += [(self.alloc(n), n, WRITE) for n in in_lens]
        return self.add_elements(elements)

    def add_elements(self, elements: list[tuple[int, int, int]]) -> int:
        """Post (addr, len, flags) elements as one chain; NEXT/next are filled in."""
        if self.indirect and len(elements) > 1:
            table = self.alloc(16 * len(elements))
            for i, (addr, length, flags) in enumerate(elements):
                last = i == len(elements) - 1
                self.write_desc(i, addr, length, flags | (0 if last else NEXT), 0 if last else i + 1, table)
            elements = [(table, 16 * len(elements), INDIRECT)]
        if len(elements) > self.num_free:
            raise RuntimeError("test driver: ring full")
        head = self.free_head
        index = head
        taken = []
        for i, (addr, length, flags) in enumerate(elements):
            taken.append(index)
            nxt = self.read_desc(index)[3]
            last = i == len(elements) - 1
            self.write_desc(index, addr, length, flags | (0 if last else NEXT), nxt)
            if not last:
                index = nxt
        self.free_head = self.read_desc(taken[-1])[3]
        self.num_free -= len(taken)
        self.chains[head] = taken
        self.publish(head)
        return head

    def kick_prepare(self, old_idx: int) -> bool:
        """Would Linux notify the device after exposing old_idx .. avail_idx? (§2.7.10)"""
        if self.event_idx:
            avail_event = self.memory.read_u16(self.used + avail_event_offset(self.size))
            return vring_need_event(avail_event, self.avail_idx, old_idx)
        return not self.memory.read_u16(self.used) & UsedFlag.NO_NOTIFY

    def used_idx(self) -> int:
        return self.memory.read_u16(self.used + 2)

    def get_used(self) -> list[tuple[int, int]]:
        """(id, len) of every element the device added since the last call; frees
        their descriptors onto the free list (detach_buf_split)."""
        result = []
        while self.last_used != self.used_idx():
            slot = self.last_used % self.size
            head, length = struct.unpack("<II", self.memory.read(self.used + 4 + 8 * slot, 8))
            result.append((head, length))
            taken = self.chains.pop(head)
            self.write_desc(taken[-1], *self.read_desc(taken[-1])[:3], self.free_head)
            self.free_head = head
            self.num_free += len(taken)
            self.last_used = (self.last_used + 1) & 0xFFFF
        return result

    def set_used_event(self, value: int) -> None:
        self.memory.write_u16(self.avail + used_event_offset(self.size), value)

    def disable_cb(self) -> None:
        """virtqueue_disable_cb_split without event idx: VRING_AVAIL_F_NO_INTERRUPT."""
        self.memory.write_u16(self.avail, AvailFlag.NO_INTERRUPT)

    def enable_cb(self) -> None:
        """virtqueue_enable_cb_prepare_split: clear the flag, used_event = last_used."""
        self.memory.write_u16(self.avail, 0)
        if self.event_idx:
            self.set_used_event(self.last_used)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used + avail_event_offset(self.size))

    def used_flags(self) -> int:
        return self.memory.read_u16(self.used)
