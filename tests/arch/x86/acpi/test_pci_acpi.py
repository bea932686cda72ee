"""MCFG (PCI Firmware Specification 3.2 §4.1.2) and the ``\\_SB.PCI0`` host bridge
AML, byte by byte and as Intel's iasl reads them (iasl from acpica-tools: a missing
iasl fails, as in test_iasl.py)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from iasl_tools import disassemble, run

from pyvmm.arch.x86.acpi.aml import Scope, definition_block
from pyvmm.arch.x86.acpi.errors import AcpiError
from pyvmm.arch.x86.acpi.mcfg import EcamRegion, build_mcfg
from pyvmm.arch.x86.acpi.pci_host import (
    PciWindows,
    ecam_reservation_device,
    gsi_for,
    host_bridge_device,
    routing_table,
)
from pyvmm.arch.x86.acpi.sdt import table

WINDOWS = PciWindows(mmio32=(0xC000_0000, 0x3000_0000), mmio64=(0x80_0000_0000, 0x80_0000_0000))


def test_mcfg_layout() -> None:
    data = build_mcfg([EcamRegion(0xB000_0000), EcamRegion(0xE010_0000, start_bus=1, end_bus=3, segment=1)])
    signature, length, revision = struct.unpack_from("<4sIB", data)
    assert (signature, length, revision) == (b"MCFG", 36 + 8 + 2 * 16, 1)
    assert sum(data) % 256 == 0
    assert data[36:44] == bytes(8)
    assert struct.unpack_from("<QHBB4s", data, 44) == (0xB000_0000, 0, 0, 0, bytes(4))
    # The base field is that of bus 0 of the segment, even for a window from bus 1.
    assert struct.unpack_from("<QHBB", data, 60) == (0xE000_0000, 1, 1, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0xB000_8000},
        {"base": 0, "start_bus": 1},
        {"base": 0xB000_0000, "start_bus": 2, "end_bus": 1},
        {"base": 0xB000_0000, "end_bus": 256},
        {"base": 0xB000_0000, "segment": 0x10000},
    ],
)
def test_ecam_regions_mcfg_cannot_describe(kwargs: dict[str, int]) -> None:
    with pytest.raises(AcpiError):
        EcamRegion(**kwargs)


def test_mcfg_needs_a_window() -> None:
    with pytest.raises(AcpiError):
        build_mcfg([])


def test_mcfg_disassembles_cleanly(iasl: str, tmp_path: Path) -> None:
    dsl = disassemble(iasl, build_mcfg([EcamRegion(0xB000_0000, end_bus=0)]), "mcfg", tmp_path)
    assert "[Memory Mapped Configuration table]" in dsl
    assert re.search(r"Base Address : 00000000B0000000", dsl)
    assert re.search(r"Segment Group Number : 0000", dsl)
    assert re.search(r"Start Bus Number : 00", dsl)
    assert re.search(r"End Bus Number : 00", dsl)


def test_swizzle() -> None:
    assert [gsi_for(0, pin) for pin in range(4)] == [16, 17, 18, 19]
    assert [gsi_for(slot, 0) for slot in range(6)] == [16, 17, 18, 19, 16, 17]
    assert gsi_for(3, 2) == 17


def test_prt_has_every_slot_and_pin() -> None:
    encoded = routing_table(slots=32).encode()
    assert encoded[0] == 0x12  # PackageOp
    assert encoded[1] >> 6 == 1  # a 2-byte PkgLength ...
    assert encoded[3] == 128  # ... then NumElements: 32 slots x 4 pins
    assert routing_table(slots=2).encode()[3] == 8


@pytest.mark.parametrize(
    "windows",
    [
        {"mmio32": (0xC000_0000, 0x4000_0001)},
        {"mmio32": (0xC000_0000, 0x1000), "mmio64": (0xF000_0000, 0x1000)},
        {"mmio32": (0xC000_0000, 0x1000), "io": [(0xC00, 0x100)]},
        {"mmio32": (0xC000_0000, 0x1000), "io": [(0xF000, 0x1001)]},
        {"mmio32": (0xC000_0000, 0x1000), "buses": 0},
    ],
)
def test_windows_a_bridge_cannot_have(windows: dict[str, object]) -> None:
    with pytest.raises(AcpiError):
        PciWindows(**windows)  # type: ignore[arg-type]


@pytest.mark.parametrize("gsis", [(16, 17, 18), (16, 17, 18, 1 << 32)])
def test_routing_needs_four_gsis(gsis: tuple[int, ...]) -> None:
    with pytest.raises(AcpiError):
        routing_table(gsis)


def dsdt_with(*devices: object) -> bytes:
    return table(b"DSDT", 2, definition_block([Scope("\\_SB_", list(devices))]))  # type: ignore[arg-type]


def test_host_bridge_disassembles_to_what_was_meant_and_compiles_back(iasl: str, tmp_path: Path) -> None:
    dsdt = dsdt_with(host_bridge_device(WINDOWS), ecam_reservation_device(0xB000_0000, 1 << 20))
    dsl = disassemble(iasl, dsdt, "dsdt", tmp_path)

    bridge = dsl.split("Device (PCI0)", 1)[1].split("Device (PCIR)", 1)[0]
    assert 'Name (_HID, EisaId ("PNP0A03")' in bridge
    for name in ("_UID", "_SEG", "_BBN"):
        assert f"Name ({name}, Zero)" in bridge
    crs = bridge.split("Name (_CRS", 1)[1].split("Name (_PRT", 1)[0]
    assert re.search(r"WordBusNumber \(ResourceProducer,.*?0x0000,\s*// Range Minimum\s*0x0000,", crs, re.S)
    assert re.search(r"IO \(Decode16,\s*0x0CF8,\s*// Range Minimum\s*0x0CF8,.*?0x08,\s*// Length", crs, re.S)
    assert re.search(r"WordIO \(ResourceProducer,.*?0x0000,\s*// Range Minimum\s*0x0CF7,", crs, re.S)
    assert re.search(r"0x0D00,\s*// Range Minimum\s*0xFFFF,\s*// Range Maximum", crs)
    assert re.search(
        r"DWordMemory \(ResourceProducer,.*?0xC0000000,\s*// Range Minimum\s*0xEFFFFFFF,", crs, re.S
    )
    assert re.search(r"QWordMemory \(ResourceProducer,.*?0x0000008000000000,\s*// Range Minimum", crs, re.S)
    assert re.search(r"0x000000FFFFFFFFFF,\s*// Range Maximum", crs)

    prt = bridge.split("Name (_PRT", 1)[1]
    entries = re.findall(
        r"Package \(0x04\)\s*\{\s*(0x[0-9A-F]+|Zero|One),\s*(0x[0-9A-F]+|Zero|One),"
        r"\s*(Zero),\s*(0x[0-9A-F]+)\s*\}",
        prt,
    )
    assert len(entries) == 128

    def number(text: str) -> int:
        return {"Zero": 0, "One": 1}[text] if text in ("Zero", "One") else int(text, 16)

    for address, pin, _, gsi in entries:
        slot = number(address) >> 16
        assert number(address) & 0xFFFF == 0xFFFF
        assert number(gsi) == gsi_for(slot, number(pin))

    reservation = dsl.split("Device (PCIR)", 1)[1]
    assert 'EisaId ("PNP0C02")' in reservation
    assert re.search(r"Memory32Fixed \(ReadWrite,\s*0xB0000000,\s*// Address Base\s*0x00100000,", reservation)

    output = run(iasl, tmp_path / "dsdt.dsl", cwd=tmp_path)
    assert "Compilation successful. 0 Errors, 0 Warnings, 0 Remarks" in output, output


def test_bridge_without_a_64_bit_window_and_a_high_ecam(iasl: str, tmp_path: Path) -> None:
    windows = PciWindows(mmio32=(0xC000_0000, 0x1000_0000), io=[(0xC000, 0x4000)], buses=4)
    dsdt = dsdt_with(host_bridge_device(windows, slots=4), ecam_reservation_device(0x1_0000_0000, 4 << 20))
    dsl = disassemble(iasl, dsdt, "small", tmp_path)
    assert "QWordMemory (ResourceProducer" not in dsl
    assert re.search(r"0x0000,\s*// Range Minimum\s*0x0003,\s*// Range Maximum", dsl)  # buses 0-3
    assert "QWordMemory (ResourceConsumer" in dsl  # the reservation above 4 GiB
    output = run(iasl, tmp_path / "small.dsl", cwd=tmp_path)
    assert "Compilation successful. 0 Errors, 0 Warnings, 0 Remarks" in output, output
