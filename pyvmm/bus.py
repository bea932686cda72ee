"""Buses: map guest port and MMIO address ranges to devices.

A device only sees "read `size` bytes at `offset`" and "write `value` (`size` bytes)
at `offset`", offsets relative to the start of its range. An access must lie wholly
inside one range to reach a device; anything else is unclaimed: reads return all
ones (as on a PC with nothing on the bus), writes are counted and dropped.

Each range keeps its own read/write counters for `--stats`. Counters are plain
integers bumped from vCPU threads; a lost increment under contention is acceptable
for statistics and keeps a lock off the exit path.
"""

from __future__ import annotations

import bisect
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


@dataclass
class Bus:
    """A sorted set of non-overlapping ranges over one address space."""

    name: str
    limit: int
    _ranges: list[BusRange] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.unclaimed = BusRange(0, self.limit, _Unclaimed(), "unclaimed")

    def insert(self, base: int, length: int, device: BusDevice, name: str) -> BusRange:
        """Claim [base, base + length) for `device`; ranges may not overlap."""
        if length <= 0 or base < 0 or base + length > self.limit:
            raise ConfigError(f"{self.name} range {base:#x}+{length:#x} for {name} is invalid")
        index = bisect.bisect_right(self._starts, base)
        neighbours = self._ranges[max(index - 1, 0) : index + 1]
        for other in neighbours:
            if base < other.end and other.base < base + length:
                raise ConfigError(
                    f"{self.name} range {base:#x}+{length:#x} for {name} overlaps {other.name}"
                )
        entry = BusRange(base, length, device, name)
        self._ranges.insert(index, entry)
        self._starts.insert(index, base)
        return entry

    def find(self, address: int, size: int) -> BusRange:
        """The range an access falls in, or the unclaimed range."""
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0:
            entry = self._ranges[index]
            if address + size <= entry.end:
                return entry
        return self.unclaimed

    def read(self, address: int, size: int) -> int:
        return self.find(address, size).read(address, size)

    def write(self, address: int, size: int, value: int) -> None:
        self.find(address, size).write(address, size, value)

    def stats(self) -> BusStats:
        return BusStats(list(self._ranges), self.unclaimed)


class PortBus(Bus):
    """The 64 KiB x86 I/O port space, with an O(1) port → range table for the hot path."""

    def __init__(self) -> None:
        super().__init__("port", PORT_SPACE)
        self.table: list[BusRange] = [self.unclaimed] * PORT_SPACE  # port -> range, read by vCPUs

    def insert(self, base: int, length: int, device: BusDevice, name: str) -> BusRange:
        entry = super().insert(base, length, device, name)
        self.table[base : base + length] = [entry] * length
        return entry

    def find(self, address: int, size: int) -> BusRange:
        entry = self.table[address & 0xFFFF]
        if address + size <= entry.end:
            return entry
        return self.unclaimed


class MmioBus(Bus):
    """Guest physical addresses that are not RAM."""

    def __init__(self) -> None:
        super().__init__("mmio", 1 << 64)
