"""Saved state of a PCI function and its MSI-X table (pyvmm/pci/state.py): the bytes
round-trip; a restore moves BARs through `on_bar_change` as a guest's writes do and
drives INTx and MSI-X from the restored registers; every bad state is refused and
changes nothing."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.errors import StateError
from pyvmm.pci.bar import BarKind, BarRange, BarSpec, Space
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.pci.msix import ENTRY_CONTROL, ENTRY_SIZE, MsixCapability, MsixTable, MsixVector
from pyvmm.pci.registers import COMMAND, INTERRUPT_LINE, STATUS, Command, InterruptPin, Status
from pyvmm.pci.state import MsixState, PciFunctionState

IDS = PciIds(0x1B36, 0x0005, 0xFF, 0x00)
BARS = {0: BarSpec(BarKind.MEMORY64, 0x4000), 2: BarSpec(BarKind.IO, 0x40)}
ENABLE = 1 << 15
Change = tuple[int, BarRange | None, BarRange | None]


class Line:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)


class Sink:
    def __init__(self) -> None:
        self.changed: list[tuple[int, MsixVector]] = []
        self.delivered: list[int] = []

    def vector_changed(self, index: int, vector: MsixVector) -> None:
        self.changed.append((index, vector))

    def deliver(self, index: int, vector: MsixVector) -> None:
        self.delivered.append(index)


class Placed:
    """A function with two BARs, INTx, and MSI-X of 4 vectors, wired to recorders."""

    def __init__(self) -> None:
        self.function = PciFunction(IDS, bars=BARS, interrupt_pin=InterruptPin.INTA)
        self.table = MsixTable(4)
        self.capability = MsixCapability(
            self.function.capabilities, self.table, table_bar=0, table_offset=0, pba_bar=0, pba_offset=0x800
        )
        self.changes: list[Change] = []
        self.function.bars.on_bar_change = lambda index, old, new: self.changes.append((index, old, new))
        self.line = Line()
        self.function.intx_line = self.line
        self.sink = Sink()
        self.table.sink = self.sink

    def program(self) -> None:
        """What firmware and a driver leave: BARs placed, decoding, MSI-X on."""
        write = self.function.config_write
        write(0x10, 4, 0xC000_0000)
        write(0x14, 4, 0x1)  # BAR 0 at 0x1_c000_0000
        write(0x18, 4, 0xC040)
        write(INTERRUPT_LINE, 1, 16)
        write(COMMAND, 2, Command.MEMORY_SPACE | Command.IO_SPACE | Command.BUS_MASTER)
        self.table.table.write(0, 8, 0xFEE0_0000)
        self.table.table.write(8, 4, 0x41)
        self.table.table.write(ENTRY_CONTROL, 4, 0)  # vector 0 unmasked
        write(self.capability.offset + 2, 2, ENABLE)

    def save(self) -> tuple[PciFunctionState, MsixState]:
        return self.function.save(), self.table.save()


def test_a_restored_function_decodes_where_the_saved_one_did() -> None:
    source = Placed()
    source.program()
    function_state, msix_state = source.save()

    target = Placed()
    target.table.restore(msix_state)
    target.function.restore(function_state)
    assert target.save() == (function_state, msix_state)
    # The BARs went on the buses through the same reports a guest's writes give.
    assert sorted(target.changes, key=lambda change: change[0]) == [
        (0, None, BarRange(Space.MEMORY, 0x1_C000_0000, 0x4000)),
        (2, None, BarRange(Space.IO, 0xC040, 0x40)),
    ]
    assert target.function.bars.decoded(0) == source.function.bars.decoded(0)
    assert target.table.enabled and not target.table.vector(0).masked
    assert (0, MsixVector(0xFEE0_0000, 0x41, False)) in target.sink.changed
    assert target.table.signal(0) and target.sink.delivered == [0]
    # And the guest moves it on from there as usual.
    target.function.config_write(0x10, 4, 0xD000_0000)
    assert target.changes[-1][2] == BarRange(Space.MEMORY, 0x1_D000_0000, 0x4000)


def test_restoring_a_fresh_state_takes_the_bars_off_the_bus() -> None:
    placed = Placed()
    fresh = placed.function.save()
    placed.program()
    placed.changes.clear()
    placed.function.restore(fresh)
    assert {index for index, _old, new in placed.changes if new is None} == {0, 2}
    assert placed.function.bars.decoded(0) is None
    assert not placed.table.enabled  # Message Control's Enable went back to 0


def test_an_asserted_intx_is_restored_and_drives_the_line() -> None:
    source = Placed()
    source.program()
    source.function.set_intx(True)
    state = source.function.save()
    assert state.intx_asserted and state.config[STATUS] & Status.INTERRUPT

    target = Placed()
    target.function.restore(state)
    assert target.line.levels[-1] is True
    target.function.set_intx(False)
    assert target.line.levels[-1] is False


def test_a_pending_vector_restored_masked_is_sent_when_unmasked() -> None:
    source = Placed()
    source.program()
    source.table.table.write(ENTRY_CONTROL, 4, 1)  # mask vector 0
    assert not source.table.signal(0) and source.table.pending(0)
    state = source.table.save()
    target = Placed()
    target.program()
    target.table.restore(state)
    assert target.table.pending(0) and target.sink.delivered == []
    target.table.table.write(ENTRY_CONTROL, 4, 0)
    assert target.sink.delivered == [0] and not target.table.pending(0)


def flip(data: bytes, offset: int, mask: int) -> bytes:
    image = bytearray(data)
    image[offset] ^= mask
    return bytes(image)


@pytest.mark.parametrize(
    ("offset", "mask", "why"),
    [
        (0x00, 0x01, "read-only"),  # the vendor ID: another device's space
        (0x0E, 0x80, "read-only"),  # header type
        (0x10, 0x08, "read-only"),  # a BAR's type bits
        (0x10, 0x10, "read-only"),  # an address bit below BAR 0's size (0x4000)
        (0x34, 0x04, "read-only"),  # the capabilities pointer
        (STATUS, Status.INTERRUPT, "disagrees with intx_asserted"),
    ],
)
def test_a_configuration_space_that_is_not_this_functions_is_refused(
    offset: int, mask: int, why: str
) -> None:
    placed = Placed()
    placed.program()
    before = placed.save()
    placed.changes.clear()
    bad = dataclasses.replace(before[0], config=flip(before[0].config, offset, mask))
    with pytest.raises(StateError, match=why):
        placed.function.restore(bad)
    assert placed.save() == before and placed.changes == []


@pytest.mark.parametrize(
    "change",
    [
        {"config": b"\0" * 256},
        {"config": bytearray(4096)},
        {"config": None},
        {"intx_asserted": 1},
    ],
)
def test_bad_function_state_fields_are_refused(change: dict[str, object]) -> None:
    placed = Placed()
    placed.program()
    before = placed.save()
    with pytest.raises(StateError):
        placed.function.restore(dataclasses.replace(before[0], **change))
    assert placed.save() == before
    with pytest.raises(StateError):
        placed.function.restore(before[1])  # an MSI-X state is not a function's


@settings(max_examples=80, deadline=None)
@given(offset=st.integers(0, 4095), mask=st.integers(1, 0xFF))
def test_any_change_is_either_a_guest_writable_one_or_refused(offset: int, mask: int) -> None:
    placed = Placed()
    placed.program()
    state = placed.function.save()
    bad = dataclasses.replace(state, config=flip(state.config, offset, mask))
    config = placed.function.config
    allowed = config._writable[offset] | config._w1c[offset]
    if mask & ~allowed:
        with pytest.raises(StateError):
            placed.function.restore(bad)
        assert placed.function.save() == state
    else:
        placed.function.restore(bad)
        assert placed.function.save() == bad


@pytest.mark.parametrize(
    "change",
    [
        {"entries": bytes(4 * ENTRY_SIZE - 1)},
        {"entries": flip(bytes(4 * ENTRY_SIZE), 0, 0x01)},  # address bits 1:0 read 0
        {"entries": flip(bytes(4 * ENTRY_SIZE), ENTRY_CONTROL, 0x02)},  # reserved control bit
        {"pending": bytes(16)},
        {"pending": b"\x10" + bytes(7)},  # vector 4 of 4
        {"pending": b"\x01" + bytes(7)},  # vector 0, unmasked and enabled: it would have been sent
        {"enabled": 1},
        {"function_masked": None},
    ],
)
def test_bad_msix_states_are_refused(change: dict[str, object]) -> None:
    placed = Placed()
    placed.program()
    before = placed.table.save()
    placed.sink.changed.clear()
    with pytest.raises(StateError):
        placed.table.restore(dataclasses.replace(before, **change))
    assert placed.table.save() == before and placed.sink.changed == []
