"""The PC platform's power row and the ACPI tables agree: a guest that follows the FADT
and ``\\_S5_`` reaches the registers the row put on the port bus (the tables take
their port numbers from the platform, `pyvmm.platform.pc.ACPI_POWER`, not from devices)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from pyvmm.arch.x86.acpi import build_acpi_tables
from pyvmm.memory import GuestMemory
from pyvmm.outcome import ExitKind, GuestExit
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pc import ACPI_POWER, PlatformContext, power
from pyvmm.platform.resources import ResourceAllocator

MEMORY = 16 << 20
SLP_EN = 1 << 5  # sleep control register (ACPI 6.4 §4.8.3.7)
SLP_TYP_SHIFT = 2


class NoLine:
    def set_level(self, high: bool) -> None:
        pass


@contextmanager
def power_row() -> Iterator[tuple[DeviceManager, list[GuestExit]]]:
    stops: list[GuestExit] = []
    memory = GuestMemory([(0, MEMORY)])
    manager = DeviceManager(ResourceAllocator(MEMORY))
    context = PlatformContext(memory, 1, stops.append, lambda irq: NoLine(), lambda data: None)
    try:
        manager.add(power(context))
        yield manager, stops
    finally:
        manager.close()
        memory.close()


def _fadt_port(fadt: bytes, offset: int) -> int:
    space, width, _, access, address = struct.unpack_from("<BBBBQ", fadt, offset)
    assert (space, width, access) == (1, 8, 1)  # one byte in system I/O space
    return int(address)


def _s5_sleep_type(dsdt: bytes) -> int:
    # Name(_S5_, Package(2) {BytePrefix n, Zero})
    at = dsdt.index(b"\x08_S5_\x12")
    assert dsdt[at + 7 : at + 9] == b"\x02\x0a"
    return dsdt[at + 9]


def test_writing_s5_where_the_fadt_says_powers_off() -> None:
    tables = build_acpi_tables(1, power=ACPI_POWER)
    fadt = tables.table("FACP").data
    control = _fadt_port(fadt, 244)  # SLEEP_CONTROL_REG
    sleep_type = _s5_sleep_type(tables.table("DSDT").data)
    with power_row() as (manager, stops):
        manager.ports.write(control, 1, (sleep_type << SLP_TYP_SHIFT) | SLP_EN)
    assert [stop.kind for stop in stops] == [ExitKind.POWEROFF]


def test_the_fadt_reset_register_and_value_reset() -> None:
    fadt = build_acpi_tables(1, power=ACPI_POWER).table("FACP").data
    with power_row() as (manager, stops):
        manager.ports.write(_fadt_port(fadt, 256), 1, 0x80)  # SLEEP_STATUS_REG: clears WAK_STS
        assert stops == []
        assert manager.ports.find(_fadt_port(fadt, 256), 1).name == "acpi-sleep"
        manager.ports.write(_fadt_port(fadt, 116), 1, fadt[128])  # RESET_REG, RESET_VALUE
    assert [stop.kind for stop in stops] == [ExitKind.REBOOT]
