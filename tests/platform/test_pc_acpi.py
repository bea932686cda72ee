"""The PC platform's power and ACPI event rows and the ACPI tables agree: a guest that follows the FADT
and ``\\_S5_`` reaches the registers the row put on the port bus (the tables take
their port numbers from the platform, `pyvmm.platform.pc.ACPI_POWER`, not from devices)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from device_fakes import FakeLine

from pyvmm.arch.x86.acpi import build_acpi_tables
from pyvmm.arch.x86.acpi.aml import EisaId
from pyvmm.arch.x86.acpi.tables import VMGENID_ADDRESS
from pyvmm.boot.memory_map import E820Type, memory_map
from pyvmm.devices.ged import Ged
from pyvmm.devices.vmgenid import VmGenId
from pyvmm.memory import GuestMemory
from pyvmm.outcome import ExitKind, GuestExit
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pc import ACPI_POWER, PlatformContext, acpi_events, power, vmgenid
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
    context = PlatformContext(
        memory, 1, lambda outcome: stops.append(outcome), lambda irq: NoLine(), lambda data: None
    )
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


# --- the ACPI events rows: the Generic Event Device, the power button, the VM generation ID


@contextmanager
def event_rows() -> Iterator[tuple[DeviceManager, GuestMemory, dict[int, FakeLine]]]:
    """The GED and VMGENID rows (VMGENID first: the rows share one GED either way)."""
    lines: dict[int, FakeLine] = {}
    memory = GuestMemory([(0, MEMORY)])
    manager = DeviceManager(ResourceAllocator(MEMORY))
    context = PlatformContext(
        memory, 1, lambda _: None, lambda irq: lines.setdefault(irq, FakeLine()), lambda data: None
    )
    try:
        manager.add_all([vmgenid(context), acpi_events(context)])
        yield manager, memory, lines
    finally:
        manager.close()
        memory.close()


def _dsdt(manager: DeviceManager) -> bytes:
    return build_acpi_tables(1, power=ACPI_POWER, devices=manager.aml()).table("DSDT").data


def _ged_selector_port(dsdt: bytes) -> int:
    # OperationRegion(EREG, SystemIO, WordConst port, ByteConst 4)
    at = dsdt.index(b"\x5b\x80EREG\x01\x0b")
    assert dsdt[at + 10 : at + 12] == b"\x0a\x04"
    return int.from_bytes(dsdt[at + 8 : at + 10], "little")


def _ged_gsi(dsdt: bytes) -> int:
    # _CRS: Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) {gsi}
    at = dsdt.index(b"\x89\x06\x00\x03\x01")
    return int.from_bytes(dsdt[at + 5 : at + 9], "little")


def _notify_bit(dsdt: bytes, device: bytes) -> int:
    # If(LEqual(And(Local0, bit), bit)) {Notify(\_SB.<device>, 0x80)}, bit a ByteConst or One
    notify = dsdt.index(b"\x86\\\x2e_SB_" + device + b"\x0a\x80")
    test = dsdt.rindex(b"\x93\x7b\x60", 0, notify)
    operand = dsdt[test + 3 : notify]
    return 1 if operand.startswith(b"\x01") else operand[1]


def test_the_power_button_the_dsdt_describes_reaches_the_guest() -> None:
    with event_rows() as (manager, _, lines):
        dsdt = _dsdt(manager)
        port, gsi = _ged_selector_port(dsdt), _ged_gsi(dsdt)
        assert manager.ports.find(port, 4).name == "ged"
        ged = manager.model(Ged)
        assert ged is not None
        assert manager.ports.read(port, 4) == 0
        ged.press_power_button()
        assert lines[gsi].levels == [True, False]  # the edge _CRS announces
        # What _EVT reads, and the device it notifies for that bit: the power button.
        assert manager.ports.read(port, 4) == _notify_bit(dsdt, b"PWRB")
        assert manager.ports.read(port, 4) == 0
        assert b"\x08_HID\x0c" + EisaId("PNP0C0C").encode()[1:] in dsdt


def test_the_generation_id_is_where_addr_says_and_a_change_is_notified() -> None:
    with event_rows() as (manager, memory, lines):
        dsdt = _dsdt(manager)
        # Method(ADDR) {Return(Package(2) {DWordConst low, Zero})}
        at = dsdt.index(b"ADDR\x00\xa4\x12")
        low = int.from_bytes(dsdt[at + 10 : at + 14], "little")
        assert (dsdt[at + 9], dsdt[at + 14]) == (0x0C, 0x00)
        assert low == VMGENID_ADDRESS
        device = manager.model(VmGenId)
        assert device is not None
        assert memory.read(low, 16) == device.generation_id
        device.set_generation_id(bytes(range(16)))
        assert memory.read(low, 16) == bytes(range(16))
        gsi, port = _ged_gsi(dsdt), _ged_selector_port(dsdt)
        assert lines[gsi].levels == [True, False]
        assert manager.ports.read(port, 4) == _notify_bit(dsdt, b"VGEN")


def test_the_generation_id_page_is_reserved_and_clear_of_the_tables() -> None:
    with event_rows() as (_, memory, _):
        reserved = [e for e in memory_map(memory) if e.kind is E820Type.RESERVED]
        assert any(e.addr <= VMGENID_ADDRESS and e.end >= VMGENID_ADDRESS + 16 for e in reserved)
    assert build_acpi_tables(1024, power=ACPI_POWER).end <= VMGENID_ADDRESS
