"""Saved state of QEMU's test devices (pyvmm/devices/testdev_state.py): what a guest
left in pc-testdev and pci-testdev comes back on a second device, reset clears it, and
a spoiled state is refused with nothing changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from device_fakes import FakeLine

from pyvmm.bus import MmioBus, PortBus
from pyvmm.devices.pc_testdev import IOMEM_ADDRESS, IOMEM_LENGTH, IRQ_LINES, PcTestdev
from pyvmm.devices.pci_testdev import IO_BAR, MMIO_BAR, PciTestdev
from pyvmm.devices.testdev_state import PciTestdevState, PcTestdevState
from pyvmm.errors import StateError
from pyvmm.pci.registers import BAR0, COMMAND


class PcBoard:
    """A pc-testdev on its own buses, with lines that remember their levels."""

    def __init__(self) -> None:
        self.lines: dict[int, FakeLine] = {}
        self.device = PcTestdev(lambda irq: self.lines.setdefault(irq, FakeLine()))
        self.ports, self.mmio = PortBus(), MmioBus()
        for region in self.device.regions():
            bus = self.ports if region.io else self.mmio
            bus.insert(region.base, region.length, region.device, region.name)


def used_pc_testdev() -> PcBoard:
    board = PcBoard()
    board.ports.write(0xE0, 4, 0xCAFE_F00D)
    board.mmio.write(IOMEM_ADDRESS + 0x123, 8, 0x0102_0304_0506_0708)
    board.ports.write(0x2000 + 10, 1, 1)  # IRQ 10 high
    board.ports.write(0x2000 + 3, 1, 1)
    board.ports.write(0x2000 + 3, 1, 0)  # IRQ 3 raised and lowered again
    return board


def test_pc_testdev_state_goes_to_a_second_device() -> None:
    source, target = used_pc_testdev(), PcBoard()
    state = source.device.save()
    assert isinstance(state, PcTestdevState)
    assert state.data == 0xCAFE_F00D and state.lines[10] and not state.lines[3]
    target.device.restore(state)
    assert target.device.save() == state
    assert target.ports.read(0xE8, 4) == 0xCAFE_F00D
    assert target.mmio.read(IOMEM_ADDRESS + 0x123, 8) == 0x0102_0304_0506_0708
    # The restored level is driven on the second machine's line; a low one is left alone.
    assert target.lines[10].levels == [True]
    assert 3 not in target.lines


def test_pc_testdev_reset_lowers_its_lines_and_clears_its_registers() -> None:
    board = used_pc_testdev()
    board.device.reset()
    assert board.device.save() == PcBoard().device.save()
    assert board.ports.read(0xE0, 4) == 0 and board.mmio.read(IOMEM_ADDRESS + 0x123, 8) == 0
    assert board.lines[10].levels == [True, False]


PC_SPOILS: dict[str, Callable[[PcTestdevState], object]] = {
    "another type": lambda good: (good.data, good.iomem, good.lines),
    "data past 32 bits": lambda good: replace(good, data=1 << 32),
    "data a bool": lambda good: replace(good, data=True),
    "iomem short": lambda good: replace(good, iomem=good.iomem[:-1]),
    "iomem a bytearray": lambda good: replace(good, iomem=bytearray(good.iomem)),
    "a line missing": lambda good: replace(good, lines=good.lines[:-1]),
    "a line too many": lambda good: replace(good, lines=(*good.lines, False)),
    "a level that is an int": lambda good: replace(good, lines=(1, *good.lines[1:])),
    "lines in a list": lambda good: replace(good, lines=list(good.lines)),
}


@pytest.mark.parametrize("spoil", list(PC_SPOILS))
def test_a_spoiled_pc_testdev_state_changes_nothing(spoil: str) -> None:
    good = used_pc_testdev().device.save()
    assert len(good.iomem) == IOMEM_LENGTH and len(good.lines) == IRQ_LINES
    target = PcBoard()
    target.ports.write(0xE0, 4, 0x1234)
    before = target.device.save()
    with pytest.raises(StateError, match=r"^pc-testdev state: "):
        target.device.restore(PC_SPOILS[spoil](good))
    assert target.device.save() == before and target.lines == {}


# --- pci-testdev ------------------------------------------------------------------------

MMIO_BASE = 0xC000_0000
IO_BASE = 0xC100


def used_pci_testdev() -> PciTestdev:
    """BARs placed and decoding, test 4 (portio-wildcard-eventfd) selected, 3 writes."""
    device = PciTestdev()
    function = device.function
    function.config_write(BAR0 + 4 * MMIO_BAR, 4, MMIO_BASE)
    function.config_write(BAR0 + 4 * IO_BAR, 4, IO_BASE)
    function.config_write(COMMAND, 2, 0x3)
    io = function.bar_handler(IO_BAR)
    io.write(0, 1, 1)  # I/O test 1 of its kind: number 4
    offset = io.read(4, 4)
    for value in (1, 2, 3):
        io.write(offset, 1, value)
    return device


def test_pci_testdev_state_goes_to_a_second_device() -> None:
    source, target = used_pci_testdev(), PciTestdev()
    state = source.save()
    assert isinstance(state, PciTestdevState)
    assert (state.selected, state.count) == (4, 3)
    target.restore(state)
    assert target.save() == state
    io = target.function.bar_handler(IO_BAR)
    assert io.read(0, 1) == 4 and io.read(12, 4) == 3  # the test and its count
    assert target.function.config_read(BAR0, 4) == MMIO_BASE
    assert target.function.config_read(COMMAND, 2) == 0x3


def test_pci_testdev_reset_is_a_function_level_reset() -> None:
    device = used_pci_testdev()
    device.reset()
    assert device.save() == PciTestdev().save()
    assert device.function.config_read(BAR0, 4) == 0
    assert device.function.bar_handler(IO_BAR).read(0, 1) == 0  # no test selected


PCI_SPOILS: dict[str, Callable[[PciTestdevState], object]] = {
    "another type": lambda good: good.function,
    "a test past 5": lambda good: replace(good, selected=6),
    "a test that is a bool": lambda good: replace(good, selected=True),
    "a count past 32 bits": lambda good: replace(good, count=1 << 32),
    "a count with no test": lambda good: replace(good, selected=None),
    "another function": lambda good: replace(
        good, function=replace(good.function, config=b"\x86\x80" + good.function.config[2:])
    ),
    "a short configuration space": lambda good: replace(
        good, function=replace(good.function, config=good.function.config[:256])
    ),
}


@pytest.mark.parametrize("spoil", list(PCI_SPOILS))
def test_a_spoiled_pci_testdev_state_changes_nothing(spoil: str) -> None:
    good = used_pci_testdev().save()
    target = PciTestdev()
    target.function.config_write(BAR0, 4, 0xD000_0000)
    target.function.bar_handler(MMIO_BAR).write(0, 1, 2)  # MMIO test 2 selected
    before = target.save()
    with pytest.raises(StateError, match=r"^(pci-testdev|pci 1b36:0005) state: "):
        target.restore(PCI_SPOILS[spoil](good))
    assert target.save() == before
