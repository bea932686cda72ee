"""BAR sizing and placement (PCI Local Bus Specification 3.0 §6.2.5.1), and the
`on_bar_change` reports the platform moves bus ranges by."""

from __future__ import annotations

import pytest

from pyvmm.pci.bar import BarKind, BarRange, BarSpec, Space
from pyvmm.pci.errors import PciError
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.pci.registers import COMMAND, Command

IDS = PciIds(0x1B36, 0x0005, 0xFF, 0x00)
Change = tuple[int, BarRange | None, BarRange | None]


def function(bars: dict[int, BarSpec]) -> tuple[PciFunction, list[Change]]:
    device = PciFunction(IDS, bars=bars)
    changes: list[Change] = []
    device.bars.on_bar_change = lambda index, old, new: changes.append((index, old, new))
    return device, changes


def size_bar(device: PciFunction, register: int) -> int:
    """What Linux does: save, write all ones, read the mask back, restore."""
    saved = device.config_read(register, 4)
    device.config_write(register, 4, 0xFFFF_FFFF)
    mask = device.config_read(register, 4)
    device.config_write(register, 4, saved)
    return mask


def test_sizing_reads_back_the_size_and_type_bits() -> None:
    device, _ = function(
        {
            0: BarSpec(BarKind.MEMORY32, 0x1000),
            1: BarSpec(BarKind.IO, 0x100),
            2: BarSpec(BarKind.MEMORY64, 1 << 33, prefetchable=True),
            4: BarSpec(BarKind.MEMORY32, 0x10, prefetchable=True),
        }
    )
    assert size_bar(device, 0x10) == 0xFFFF_F000
    assert size_bar(device, 0x14) == 0x0000_FF01  # I/O: bit 0, 16 address bits
    assert size_bar(device, 0x18) == 0x0000_000C  # 64-bit prefetchable, low half all size
    assert size_bar(device, 0x1C) == 0xFFFF_FFFE  # high half: 8 GiB
    assert size_bar(device, 0x20) == 0xFFFF_FFF8
    assert size_bar(device, 0x24) == 0  # not implemented
    assert size_bar(device, 0x30) == 0  # no expansion ROM


def test_bar_holds_only_addresses_aligned_to_its_size() -> None:
    device, _ = function({0: BarSpec(BarKind.MEMORY32, 0x1000)})
    device.config_write(0x10, 4, 0xFEBF_1234)
    assert device.config_read(0x10, 4) == 0xFEBF_1000
    assert device.bars.address(0) == 0xFEBF_1000


def test_decode_follows_the_command_register() -> None:
    device, changes = function({0: BarSpec(BarKind.MEMORY32, 0x1000), 1: BarSpec(BarKind.IO, 0x100)})
    device.config_write(0x10, 4, 0xFEBF_0000)
    device.config_write(0x14, 4, 0xC001)
    assert changes == []  # assigned, but decode is off
    device.config_write(COMMAND, 2, Command.MEMORY_SPACE)
    memory = BarRange(Space.MEMORY, 0xFEBF_0000, 0x1000)
    assert changes == [(0, None, memory)]
    device.config_write(COMMAND, 2, Command.MEMORY_SPACE | Command.IO_SPACE)
    io = BarRange(Space.IO, 0xC000, 0x100)
    assert changes[1:] == [(1, None, io)]
    device.config_write(COMMAND, 2, Command.IO_SPACE)
    assert changes[2:] == [(0, memory, None)]
    assert device.bars.decoded(0) is None and device.bars.decoded(1) == io


def test_moving_a_decoding_bar_reports_old_and_new() -> None:
    device, changes = function({0: BarSpec(BarKind.MEMORY32, 0x1000)})
    device.config_write(0x10, 4, 0xFEBF_0000)
    device.config_write(COMMAND, 2, Command.MEMORY_SPACE)
    device.config_write(0x10, 4, 0xFEA0_0000)
    old, new = BarRange(Space.MEMORY, 0xFEBF_0000, 0x1000), BarRange(Space.MEMORY, 0xFEA0_0000, 0x1000)
    assert changes[-1] == (0, old, new)
    device.config_write(0x10, 4, 0xFEA0_0000)  # same place: no report
    assert len(changes) == 2


def test_64_bit_bar_moves_with_either_half() -> None:
    device, changes = function({2: BarSpec(BarKind.MEMORY64, 0x4000, prefetchable=True)})
    device.config_write(COMMAND, 2, Command.MEMORY_SPACE)
    device.config_write(0x18, 4, 0x8000_0000)
    first = BarRange(Space.MEMORY, 0x8000_0000, 0x4000, prefetchable=True)
    assert changes == [(2, None, first)]
    device.config_write(0x1C, 4, 0x10)
    second = BarRange(Space.MEMORY, 0x10_8000_0000, 0x4000, prefetchable=True)
    assert changes[1:] == [(2, first, second)]
    assert device.bars.address(2) == 0x10_8000_0000


def test_address_zero_does_not_decode() -> None:
    device, changes = function({0: BarSpec(BarKind.MEMORY32, 0x1000)})
    device.config_write(0x10, 4, 0xFEBF_0000)
    device.config_write(COMMAND, 2, Command.MEMORY_SPACE)
    device.config_write(0x10, 4, 0)
    assert changes[-1] == (0, BarRange(Space.MEMORY, 0xFEBF_0000, 0x1000), None)


def test_sizing_with_decode_on_is_reported_as_moves() -> None:
    # A guest that sizes without turning decode off moves the BAR to the top of the
    # space and back; the platform hears both (it decides what a range there means).
    device, changes = function({0: BarSpec(BarKind.MEMORY32, 0x1000)})
    device.config_write(0x10, 4, 0xFEBF_0000)
    device.config_write(COMMAND, 2, Command.MEMORY_SPACE)
    size_bar(device, 0x10)
    assert [new.base if new else None for _, _, new in changes] == [0xFEBF_0000, 0xFFFF_F000, 0xFEBF_0000]


def test_every_bar_or_command_write_is_reported_after_its_changes() -> None:
    # Even one that changes nothing: the platform retries a range it had to refuse.
    device, _ = function({0: BarSpec(BarKind.MEMORY32, 0x1000)})
    events: list[object] = []
    device.bars.on_bar_change = lambda index, old, new: events.append(new)
    device.bars.on_bar_write = lambda: events.append("write")
    device.config_write(0x10, 4, 0xFEBF_0000)
    device.config_write(COMMAND, 2, Command.MEMORY_SPACE)
    assert events == ["write", BarRange(Space.MEMORY, 0xFEBF_0000, 0x1000), "write"]
    device.config_write(0x10, 4, 0xFEBF_0000)
    device.config_write(COMMAND, 2, Command.MEMORY_SPACE)
    assert events[3:] == ["write", "write"]
    device.config_write(0x3C, 1, 5)  # Interrupt Line: not a BAR
    assert events[5:] == []


def test_reset_turns_decode_off_and_unassigns() -> None:
    device, changes = function({1: BarSpec(BarKind.IO, 0x20)})
    device.config_write(0x14, 4, 0xC000)
    device.config_write(COMMAND, 2, Command.IO_SPACE)
    device.reset()
    assert changes[-1] == (1, BarRange(Space.IO, 0xC000, 0x20), None)
    assert device.config_read(0x14, 4) == 1
    assert device.config_read(COMMAND, 2) == 0


@pytest.mark.parametrize(
    "bars",
    [
        {0: BarSpec(BarKind.MEMORY64, 0x1000), 1: BarSpec(BarKind.IO, 0x10)},  # BAR 1 is the upper half
        {5: BarSpec(BarKind.MEMORY64, 0x1000)},  # no register for the upper half
        {6: BarSpec(BarKind.IO, 0x10)},
    ],
)
def test_bar_layouts_that_do_not_fit(bars: dict[int, BarSpec]) -> None:
    with pytest.raises(PciError):
        PciFunction(IDS, bars=bars)


@pytest.mark.parametrize(
    ("kind", "size", "prefetchable"),
    [
        (BarKind.IO, 2, False),
        (BarKind.IO, 512, False),
        (BarKind.MEMORY32, 0x1800, False),
        (BarKind.MEMORY32, 8, False),
        (BarKind.MEMORY32, 1 << 32, False),
        (BarKind.IO, 16, True),
    ],
)
def test_bar_specs_pci_cannot_express(kind: BarKind, size: int, prefetchable: bool) -> None:
    with pytest.raises(PciError):
        BarSpec(kind, size, prefetchable)
