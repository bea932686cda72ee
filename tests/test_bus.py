"""Buses: range lookup, overlap refusal, unclaimed accesses, counters."""

from __future__ import annotations

import pytest

from pyvmm.bus import MmioBus, PortBus
from pyvmm.errors import ConfigError


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return offset + 0x40

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_port_bus_routes_by_offset_and_counts() -> None:
    bus, device = PortBus(), Recorder()
    bus.insert(0x3F8, 8, device, "uart")
    bus.write(0x3FB, 1, 0x80)
    assert device.writes == [(3, 1, 0x80)]
    assert bus.read(0x3FD, 1) == 0x45
    uart = bus.stats().ranges[0]
    assert (uart.reads, uart.writes) == (1, 1)


def test_unclaimed_reads_all_ones_and_writes_are_counted() -> None:
    bus = PortBus()
    assert bus.read(0x1234, 1) == 0xFF
    assert bus.read(0x1234, 2) == 0xFFFF
    assert bus.read(0x1234, 4) == 0xFFFF_FFFF
    bus.write(0x1234, 1, 0)
    assert (bus.unclaimed.reads, bus.unclaimed.writes) == (3, 1)


def test_access_straddling_the_end_of_a_range_is_unclaimed() -> None:
    bus, device = PortBus(), Recorder()
    bus.insert(0xF4, 4, device, "debug-exit")
    assert bus.read(0xF6, 4) == 0xFFFF_FFFF
    bus.write(0xF7, 2, 1)
    assert device.writes == []


def test_overlaps_are_refused() -> None:
    bus = MmioBus()
    bus.insert(0x1000, 0x1000, Recorder(), "a")
    with pytest.raises(ConfigError, match="overlaps a"):
        bus.insert(0x1800, 0x1000, Recorder(), "b")
    with pytest.raises(ConfigError):
        bus.insert(0x0800, 0x1000, Recorder(), "c")
    bus.insert(0x2000, 0x10, Recorder(), "d")  # adjacent is fine
    assert bus.read(0x2008, 8) == 0x48
    assert bus.read(0x3000, 8) == (1 << 64) - 1
