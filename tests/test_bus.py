"""Buses: range lookup, overlap refusal, unclaimed accesses, counters."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.bus import BusConflictError, BusRange, MmioBus, PortBus
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


@pytest.mark.parametrize("bus_type", [PortBus, MmioBus])
def test_a_range_moves_and_goes(bus_type: type[PortBus] | type[MmioBus]) -> None:
    bus, device = bus_type(), Recorder()
    entry = bus.insert(0x100, 8, device, "bar")
    bus.write(0x104, 1, 1)
    moved = bus.move(entry, 0x200)
    assert bus.read(0x104, 1) == 0xFF  # the old place is empty
    bus.write(0x204, 1, 2)
    assert device.writes == [(4, 1, 1), (4, 1, 2)]
    bus.remove(moved)
    assert bus.read(0x204, 1) == 0xFF
    names = [(r.name, r.writes) for r in bus.stats().ranges]
    assert names == [("bar", 2)]  # the counters of retired ranges stay, summed by name


def test_a_bar_moved_in_a_loop_keeps_one_counter() -> None:
    """A guest moving a BAR forever must not grow the VMM's memory."""
    bus = MmioBus()
    entry = bus.insert(0x1000, 0x10, Recorder(), "bar")
    for round_ in range(1000):
        entry = bus.move(entry, 0x1000 + 0x10 * (round_ % 7 + 1))
    assert len(bus.stats().ranges) == 2  # the live range and one retired total


@pytest.mark.parametrize("bus_type", [PortBus, MmioBus])
def test_a_move_onto_another_range_changes_nothing(bus_type: type[PortBus] | type[MmioBus]) -> None:
    bus = bus_type()
    entry = bus.insert(0x100, 8, Recorder(), "a")
    bus.insert(0x200, 8, Recorder(), "b")
    with pytest.raises(BusConflictError, match="overlaps b"):
        bus.move(entry, 0x204)
    assert bus.find(0x100, 1) is entry
    with pytest.raises(BusConflictError):
        bus.remove(BusRange(0x300, 1, Recorder(), "never inserted"))


@pytest.mark.parametrize("bus_type", [PortBus, MmioBus])
def test_lookups_during_moves_see_the_range_before_or_after(bus_type: type[PortBus] | type[MmioBus]) -> None:
    """A vCPU thread looking up while another thread moves a BAR back and forth, with a
    neighbour inserted and removed meanwhile: every lookup finds a whole range."""
    bus = bus_type()
    entry = bus.insert(0x1000, 0x10, Recorder(), "bar")
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []

    def look() -> None:
        try:
            while not stop.is_set():
                for address in (0x1008, 0x2008):
                    found = bus.find(address, 4)
                    assert found.base <= address and address + 4 <= found.end
                    seen.add(found.name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=look)
    thread.start()
    try:
        for round_ in range(200):
            entry = bus.move(entry, 0x2000 if round_ % 2 == 0 else 0x1000)
            neighbour = bus.insert(0x3000, 0x10, Recorder(), "neighbour")
            bus.remove(neighbour)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert seen == {"bar", "unclaimed"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["insert", "remove", "move"]), st.integers(0, 63), st.integers(1, 8)))
)
def test_the_port_table_always_agrees_with_the_ranges(operations: list[tuple[str, int, int]]) -> None:
    """The O(1) port table, updated range by range, says what the sorted ranges say."""
    bus = PortBus()
    entries: list[BusRange] = []
    for operation, slot, length in operations:
        try:
            if operation == "insert":
                entries.append(bus.insert(slot * 8, length, Recorder(), f"r{slot}"))
            elif entries and operation == "remove":
                bus.remove(entries.pop(slot % len(entries)))
            elif entries:
                index = slot % len(entries)
                entries[index] = bus.move(entries[index], (slot * 5 % 64) * 8)
        except BusConflictError:
            continue
    for port in range(0, 64 * 8 + 8):
        owner = next((entry for entry in entries if entry.base <= port < entry.end), bus.unclaimed)
        assert bus.table[port] is owner, port
