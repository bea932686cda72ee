"""Mechanism #1 (ports 0xCF8-0xCFF, PCI 3.0 §3.2.2.3.2) and ECAM (PCIe base §7.2.2)
reach the same registers, through a real port bus and MMIO bus."""

from __future__ import annotations

import pytest

from pyvmm.bus import MmioBus, PortBus
from pyvmm.pci.bar import BarKind, BarSpec
from pyvmm.pci.config_access import CONFIG_IO_LENGTH, CONFIG_IO_PORT, Ecam
from pyvmm.pci.errors import PciError
from pyvmm.pci.function import PciFunction, PciIds
from pyvmm.pci.host_bridge import PciHost

ECAM_BASE = 0xB000_0000
DEVICE_IDS = PciIds(0x1B36, 0x0005, 0xFF, 0x00)


@pytest.fixture
def machine() -> tuple[PciHost, PortBus, MmioBus, PciFunction]:
    host = PciHost()
    ports, mmio = PortBus(), MmioBus()
    ports.insert(CONFIG_IO_PORT, CONFIG_IO_LENGTH, host.config_io, "pci-config")
    mmio.insert(ECAM_BASE, host.ecam.size, host.ecam, "pci-ecam")
    device = PciFunction(DEVICE_IDS, bars={0: BarSpec(BarKind.MEMORY32, 0x1000)})
    host.bus.add(device, 3)
    return host, ports, mmio, device


def cf8(slot: int, function: int, register: int, bus: int = 0, enable: bool = True) -> int:
    return (1 << 31 if enable else 0) | bus << 16 | slot << 11 | function << 8 | register & 0xFC


def io_read(ports: PortBus, slot: int, function: int, register: int, size: int, bus: int = 0) -> int:
    ports.write(0xCF8, 4, cf8(slot, function, register, bus))
    return ports.read(0xCFC + (register & 3), size)


def ecam_read(mmio: MmioBus, slot: int, function: int, register: int, size: int, bus: int = 0) -> int:
    return mmio.read(ECAM_BASE + (bus << 20 | slot << 15 | function << 12 | register), size)


def test_host_bridge_is_00_0(machine: tuple[PciHost, PortBus, MmioBus, PciFunction]) -> None:
    _, ports, mmio, _ = machine
    assert io_read(ports, 0, 0, 0, 4) == ecam_read(mmio, 0, 0, 0, 4) == 0x0008_1B36
    assert io_read(ports, 0, 0, 0x0A, 2) == ecam_read(mmio, 0, 0, 0x0A, 2) == 0x0600  # host bridge


def test_both_mechanisms_read_the_same_bytes(machine: tuple[PciHost, PortBus, MmioBus, PciFunction]) -> None:
    _, ports, mmio, _ = machine
    for slot in (0, 3):
        for register in range(0, 0x40):
            for size in (1, 2, 4):
                if (register & 3) + size > 4:
                    continue
                assert io_read(ports, slot, 0, register, size) == ecam_read(mmio, slot, 0, register, size)


def test_a_write_through_one_is_seen_through_the_other(
    machine: tuple[PciHost, PortBus, MmioBus, PciFunction],
) -> None:
    _, ports, mmio, device = machine
    ports.write(0xCF8, 4, cf8(3, 0, 0x10))
    ports.write(0xCFC, 4, 0xFEBF_0000)
    assert ecam_read(mmio, 3, 0, 0x10, 4) == 0xFEBF_0000
    mmio.write(ECAM_BASE + (3 << 15 | 0x3C), 1, 11)
    ports.write(0xCF8, 4, cf8(3, 0, 0x3C))
    assert ports.read(0xCFC, 1) == 11
    ports.write(0xCF8, 4, cf8(3, 0, 0x10))
    ports.write(0xCFE, 1, 0x55)  # register 0x12: bits 23:16 of the BAR
    assert device.bars.address(0) == 0xFE55_0000


def test_absent_functions_and_buses_read_all_ones(
    machine: tuple[PciHost, PortBus, MmioBus, PciFunction],
) -> None:
    _, ports, mmio, _ = machine
    assert io_read(ports, 4, 0, 0, 2) == 0xFFFF
    assert io_read(ports, 3, 1, 0, 4) == 0xFFFF_FFFF
    assert io_read(ports, 3, 0, 0, 4, bus=1) == 0xFFFF_FFFF
    assert ecam_read(mmio, 31, 7, 0, 2) == 0xFFFF
    ports.write(0xCF8, 4, cf8(4, 0, 0x04))
    ports.write(0xCFC, 2, 0x7)  # dropped, not raised


def test_config_address_register(machine: tuple[PciHost, PortBus, MmioBus, PciFunction]) -> None:
    _, ports, _, _ = machine
    ports.write(0xCF8, 4, 0xFFFF_FFFF)
    assert ports.read(0xCF8, 4) == 0x80FF_FFFC  # reserved bits 30:24 and 1:0 read 0
    ports.write(0xCF8, 2, 0)  # not a 32-bit access: not CONFIG_ADDRESS
    ports.write(0xCF9, 1, 0)
    assert ports.read(0xCF8, 4) == 0x80FF_FFFC
    assert ports.read(0xCF8, 2) == 0xFFFF
    assert ports.read(0xCFA, 1) == 0xFF


def test_data_port_with_enable_clear(machine: tuple[PciHost, PortBus, MmioBus, PciFunction]) -> None:
    _, ports, _, device = machine
    ports.write(0xCF8, 4, cf8(3, 0, 0x3C, enable=False))
    assert ports.read(0xCFC, 4) == 0xFFFF_FFFF
    ports.write(0xCFC, 1, 9)
    assert device.config_read(0x3C, 1) == 0


def test_data_port_byte_and_word_lanes(machine: tuple[PciHost, PortBus, MmioBus, PciFunction]) -> None:
    _, ports, _, _ = machine
    ports.write(0xCF8, 4, cf8(3, 0, 0x00))
    assert [ports.read(0xCFC + i, 1) for i in range(4)] == [0x36, 0x1B, 0x05, 0x00]
    assert ports.read(0xCFE, 2) == 0x0005
    assert ports.read(0xCFD, 2) == 0x051B


def test_ecam_reaches_extended_space_and_refuses_wide_accesses(
    machine: tuple[PciHost, PortBus, MmioBus, PciFunction],
) -> None:
    host, _, mmio, _ = machine
    assert ecam_read(mmio, 3, 0, 0x100, 4) == 0
    assert ecam_read(mmio, 3, 0, 0, 8) == (1 << 64) - 1
    assert ecam_read(mmio, 3, 0, 2, 4) == 0xFFFF_FFFF  # crosses a dword
    assert host.ecam.read(host.ecam.size, 4) == 0xFFFF_FFFF


def test_ecam_window_sizes() -> None:
    host = PciHost(ecam_buses=256)
    assert host.ecam.size == 256 << 20
    with pytest.raises(PciError):
        Ecam(host.bus, buses=0)
    with pytest.raises(PciError):
        Ecam(host.bus, buses=2, start_bus=255)


def test_bus_slots() -> None:
    host = PciHost()
    assert host.bus.free_slot() == 1
    with pytest.raises(PciError):
        host.bus.add(PciFunction(DEVICE_IDS), 0)
    with pytest.raises(PciError):
        host.bus.add(PciFunction(DEVICE_IDS), 32)
    second = PciFunction(DEVICE_IDS)
    host.bus.add(second, 0, 1)
    assert host.bridge.config_read(0x0E, 1) == 0x80  # function 0 says "multi-function"
    assert host.bus.remove(0, 1) is second
    assert host.bridge.config_read(0x0E, 1) == 0
    for slot in range(1, 32):
        host.bus.add(PciFunction(DEVICE_IDS), slot)
    with pytest.raises(PciError):
        host.bus.free_slot()
