"""Buses: map guest port and MMIO address ranges to devices.

A device only sees "read `size` bytes at `offset`" and "write `value` (`size` bytes)
at `offset`", offsets relative to the start of its range. An access must lie wholly
inside one range to reach a device; anything else is unclaimed: reads return all
ones (as on a PC with nothing on the bus), writes are counted and dropped.

Each range keeps its own read/write counters for `--stats`. Counters are plain
integers bumped from vCPU threads; a lost increment under contention is acceptable
for statistics and keeps a lock off the exit path.

Ranges change while the guest runs (a PCI BAR moves, a device is added): writers take
the bus's lock and publish a new immutable lookup (a tuple of starts and ranges for
the MMIO bus, one slice assignment of the 64 Ki port table, which the GIL makes
atomic), so a vCPU thread looking a range up never takes a lock and never sees a
half-made table: it finds the range as it was before the change or after it.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Protocol

from pyvmm.errors import ConfigError

PORT_SPACE = 0x10000


class BusDevice(Protocol):
    """What a bus needs of a device. `size` is 1, 2, 4 or 8 bytes."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


def all_ones(size: int) -> int:
    """The value of `size` bytes with every bit set: an empty bus read, and a width mask."""
    return (1 << (8 * size)) - 1


@dataclass(eq=False)
class BusRange:
    """One device's window on a bus, with its access counters."""

    base: int
    length: int
    device: BusDevice
    name: str
    reads: int = 0
    writes: int = 0
    end: int = field(init=False)  # base + length, kept as a field for the exit path

    def __post_init__(self) -> None:
        self.end = self.base + self.length

    def read(self, address: int, size: int) -> int:
        self.reads += 1
        return self.device.read(address - self.base, size)

    def write(self, address: int, size: int, value: int) -> None:
        self.writes += 1
        self.device.write(address - self.base, size, value)


class _Unclaimed:
    """Stands for "nothing here": all-ones reads, dropped writes."""

    def read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        pass


@dataclass
class BusStats:
    """Counters of one bus, for `--stats` and the Python API."""

    ranges: list[BusRange]
    unclaimed: BusRange


class BusConflictError(ConfigError):
    """A range that would overlap another, or does not fit the bus."""


@dataclass(frozen=True)
class _Lookup:
    """One published state of a bus: ranges sorted by base, and their bases."""

    starts: tuple[int, ...] = ()
    ranges: tuple[BusRange, ...] = ()


class Bus:
    """A sorted set of non-overlapping ranges over one address space."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.unclaimed = BusRange(0, limit, _Unclaimed(), "unclaimed")
        # Counters of removed ranges, one entry per name however often a guest moves a
        # BAR (a list of every retired range would grow without bound).
        self._retired: dict[str, BusRange] = {}
        self._lookup = _Lookup()
        self._lock = threading.Lock()  # serialises writers; readers take none

    def insert(self, base: int, length: int, device: BusDevice, name: str) -> BusRange:
        """Claim [base, base + length) for `device`; ranges may not overlap."""
        entry = BusRange(base, length, device, name)
        with self._lock:
            self._publish(self._with(self._lookup.ranges, entry))
        return entry

    def remove(self, entry: BusRange) -> None:
        """Give `entry`'s addresses back to the unclaimed range."""
        with self._lock:
            ranges = self._lookup.ranges
            if entry not in ranges:
                raise BusConflictError(f"{self.name} range {entry.name} is not on the bus")
            self._publish(tuple(other for other in ranges if other is not entry))
            self._retire(entry)

    def move(self, entry: BusRange, base: int) -> BusRange:
        """Move `entry` to `base` in one step (a BAR the guest reprogrammed): the new
        range, with the same device and name; on a conflict nothing changes."""
        moved = BusRange(base, entry.length, entry.device, entry.name)
        with self._lock:
            ranges = self._lookup.ranges
            if entry not in ranges:
                raise BusConflictError(f"{self.name} range {entry.name} is not on the bus")
            self._publish(self._with(tuple(other for other in ranges if other is not entry), moved))
            self._retire(entry)
        return moved

    def _retire(self, entry: BusRange) -> None:
        """With the lock held: fold a removed range's counters into its name's total."""
        total = self._retired.get(entry.name)
        if total is None:
            total = self._retired[entry.name] = BusRange(entry.base, entry.length, _Unclaimed(), entry.name)
        total.reads += entry.reads
        total.writes += entry.writes

    def _with(self, ranges: tuple[BusRange, ...], entry: BusRange) -> tuple[BusRange, ...]:
        """`ranges` plus `entry`, sorted, after checking it fits and overlaps nothing."""
        base, length = entry.base, entry.length
        if length <= 0 or base < 0 or base + length > self.limit:
            raise BusConflictError(f"{self.name} range {base:#x}+{length:#x} for {entry.name} is invalid")
        starts = [other.base for other in ranges]
        index = bisect.bisect_right(starts, base)
        for other in ranges[max(index - 1, 0) : index + 1]:
            if base < other.end and other.base < base + length:
                raise BusConflictError(
                    f"{self.name} range {base:#x}+{length:#x} for {entry.name} overlaps {other.name}"
                )
        return (*ranges[:index], entry, *ranges[index:])

    def _publish(self, ranges: tuple[BusRange, ...]) -> None:
        self._lookup = _Lookup(tuple(entry.base for entry in ranges), ranges)

    def find(self, address: int, size: int) -> BusRange:
        """The range an access falls in, or the unclaimed range."""
        lookup = self._lookup  # one read: the lookup is never changed in place
        index = bisect.bisect_right(lookup.starts, address) - 1
        if index >= 0:
            entry = lookup.ranges[index]
            if address + size <= entry.end:
                return entry
        return self.unclaimed

    def read(self, address: int, size: int) -> int:
        return self.find(address, size).read(address, size)

    def write(self, address: int, size: int, value: int) -> None:
        self.find(address, size).write(address, size, value)

    def stats(self) -> BusStats:
        return BusStats([*self._lookup.ranges, *self._retired.values()], self.unclaimed)


class PortBus(Bus):
    """The 64 KiB x86 I/O port space, with an O(1) port → range table for the hot path."""

    def __init__(self) -> None:
        super().__init__("port", PORT_SPACE)
        # port -> range, read by vCPU threads without a lock; the list object never
        # changes (the exit loop keeps a reference), each changed range's slice is
        # replaced whole.
        self.table: list[BusRange] = [self.unclaimed] * PORT_SPACE

    def _publish(self, ranges: tuple[BusRange, ...]) -> None:
        # Only the ports whose range changed are rewritten (a full 64 Ki-entry table
        # per insert made building a machine take milliseconds): freed ranges first,
        # then the new ones, each one slice assignment, atomic under the GIL. A reader
        # between the two sees a moved range briefly unclaimed, never a stale one.
        old = self._lookup.ranges
        kept = {id(entry) for entry in old}
        staying = {id(entry) for entry in ranges}
        super()._publish(ranges)
        table = self.table
        for entry in old:
            if id(entry) not in staying:
                table[entry.base : entry.end] = [self.unclaimed] * entry.length
        for entry in ranges:
            if id(entry) not in kept:
                table[entry.base : entry.end] = [entry] * entry.length

    def find(self, address: int, size: int) -> BusRange:
        entry = self.table[address & 0xFFFF]
        if address + size <= entry.end:
            return entry
        return self.unclaimed


class MmioBus(Bus):
    """Guest physical addresses that are not RAM."""

    def __init__(self) -> None:
        super().__init__("mmio", 1 << 64)
