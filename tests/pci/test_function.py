"""A function's header registers: IDs, Command and Status bits, INTx (PCI 3.0 §6.2)."""

from __future__ import annotations

import pytest
from device_fakes import FakeLine

from pyvmm.pci.errors import PciError
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.pci.registers import COMMAND, STATUS, Command, InterruptPin, Status

IDS = PciIds(0x1AF4, 0x1000, 0x02, 0x00, prog_if=0, revision=3, subsystem_vendor=0x1AF4, subsystem=1)


def test_identity_registers() -> None:
    device = PciFunction(IDS, interrupt_pin=InterruptPin.INTA)
    assert device.config_read(0x00, 4) == 0x1000_1AF4
    assert device.config_read(0x08, 4) == 0x0200_0003
    assert device.config_read(0x2C, 4) == 0x0001_1AF4
    assert device.config_read(0x3D, 1) == 1
    device.config_write(0x00, 4, 0)
    device.config_write(0x08, 4, 0)
    device.config_write(0x3C, 4, 0xFFFF_FFFF)
    assert device.config_read(0x00, 4) == 0x1000_1AF4
    assert device.config_read(0x08, 4) == 0x0200_0003
    assert device.config_read(0x3C, 4) == 0x0000_01FF  # line is scratch, pin is not


def test_command_keeps_only_the_implemented_bits() -> None:
    device = PciFunction(IDS)
    device.config_write(COMMAND, 2, 0xFFFF)
    assert device.config_read(COMMAND, 2) == 0x0547


def test_status_error_bits_are_write_one_to_clear() -> None:
    device = PciFunction(IDS)
    device.config.set(STATUS, 2, Status.RECEIVED_MASTER_ABORT | Status.DETECTED_PARITY_ERROR)
    device.config_write(STATUS, 2, Status.RECEIVED_MASTER_ABORT)
    assert device.config_read(STATUS, 2) == Status.DETECTED_PARITY_ERROR
    device.config_write(COMMAND, 4, 0xFFFF_0000)  # a dword write of Command+Status
    assert device.config_read(STATUS, 2) == 0


def test_intx_follows_interrupt_disable() -> None:
    device = PciFunction(IDS, interrupt_pin=InterruptPin.INTA)
    line = FakeLine()
    device.intx_line = line
    device.set_intx(True)
    assert line.levels == [True]
    assert device.config_read(STATUS, 2) & Status.INTERRUPT
    device.config_write(COMMAND, 2, Command.INTX_DISABLE)
    assert line.levels == [True, False]
    assert device.config_read(STATUS, 2) & Status.INTERRUPT  # still pending in the function
    device.set_intx(False)
    device.set_intx(True)
    assert line.levels == [True, False]
    device.config_write(COMMAND, 2, 0)
    assert line.levels == [True, False, True]
    device.config_write(STATUS, 2, 0xFFFF)  # Interrupt Status is read-only
    assert device.config_read(STATUS, 2) & Status.INTERRUPT


@pytest.mark.parametrize(
    "kwargs", [{"vendor": 0xFFFF}, {"vendor": 0x10000}, {"base_class": 0x100}, {"subsystem": -1}]
)
def test_ids_pci_cannot_express(kwargs: dict[str, int]) -> None:
    fields = {"vendor": 0x1AF4, "device": 0x1000, "base_class": 2, "subclass": 0} | kwargs
    with pytest.raises(PciError):
        PciIds(**fields)


def test_bar_handlers_only_for_declared_bars() -> None:
    device = PciFunction(IDS)
    with pytest.raises(PciError):
        device.bar_handler(0)
    with pytest.raises(PciError):
        device.set_bar_handler(0, device.config)
