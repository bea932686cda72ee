"""The tables as Intel's ACPICA sees them: `iasl -d` disassembles every table without
a diagnostic, the disassembly says what pyvmm meant, it compiles back cleanly, and
pyvmm's AML encoder produces the same bytes iasl compiles from the same ASL.

iasl comes from the Debian package acpica-tools (scripts/setup.sh installs it). A
missing iasl fails these tests rather than skipping them: skipped, they would let a
broken table through unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from iasl_tools import disassemble, run
from pc_platform import pc_devices

from pyvmm.arch.x86.acpi import build_acpi_tables
from pyvmm.arch.x86.acpi.aml import Device, EisaId, Method, Name, Package, Return, Scope, definition_block
from pyvmm.arch.x86.acpi.madt import TIMER_GSI_PC
from pyvmm.arch.x86.acpi.resources import (
    IO,
    Cacheability,
    DWordMemory,
    FixedIO,
    Interrupt,
    Irq,
    IrqNoFlags,
    Memory32Fixed,
    QWordMemory,
    ResourceTemplate,
    WordBusNumber,
    WordIO,
)
from pyvmm.arch.x86.acpi.sdt import table
from pyvmm.platform.pc import ACPI_POWER

DATA_TABLES = ("XSDT", "RSDT", "FACP", "APIC")


def virtio_mmio(index: int, base: int, gsi: int) -> Device:
    """What a virtio-mmio device will look like when the machine adds them."""
    return Device(
        f"VR{index:02X}",
        [
            Name("_HID", "LNRO0005"),
            Name("_UID", index),
            Name(
                "_CRS",
                ResourceTemplate([Memory32Fixed(base, 0x200), Interrupt([gsi], edge=True, active_low=False)]),
            ),
        ],
    )


@pytest.mark.parametrize("cpus", [1, 8, 64])
def test_data_tables_disassemble_cleanly(iasl: str, tmp_path: Path, cpus: int) -> None:
    built = build_acpi_tables(cpus, power=ACPI_POWER, timer_gsi=TIMER_GSI_PC)
    dsl = {name: disassemble(iasl, built.table(name).data, name.lower(), tmp_path) for name in DATA_TABLES}

    fadt_address = f"{built.table('FACP').address:016X}"
    madt_address = f"{built.table('APIC').address:016X}"
    assert f"ACPI Table Address   0 : {fadt_address}" in dsl["XSDT"]
    assert f"ACPI Table Address   1 : {madt_address}" in dsl["XSDT"]
    assert f"ACPI Table Address   1 : {madt_address[8:]}" in dsl["RSDT"]

    fadt = dsl["FACP"]
    assert re.search(r"Hardware Reduced \(V5\) : 1", fadt)
    assert re.search(r"Reset Register Supported \(V2\) : 1", fadt)
    assert re.search(r"8042 Present on ports 60/64 \(V2\) : 1", fadt)
    assert re.search(r"VGA Not Present \(V4\) : 1", fadt)
    assert re.search(r"CMOS RTC Not Present \(V5\) : 0", fadt)
    assert "RTC Century Index : 32" in fadt
    assert f"DSDT Address : {built.table('DSDT').address:016X}" in fadt
    for register, port in (("Sleep Control Register", 0x600), ("Sleep Status Register", 0x601)):
        block = fadt.split(register, 1)[1]
        assert "Space ID : 01 [SystemIO]" in block[:400]
        assert f"Address : {port:016X}" in block[:400]

    madt = dsl["APIC"]
    assert madt.count("[Processor Local APIC]") == cpus
    assert madt.count("Processor Enabled : 1") == cpus
    assert madt.count("[I/O APIC]") == 1
    assert f"I/O Apic ID : {cpus:02X}" in madt
    assert "Address : FEC00000" in madt
    assert "PC-AT Compatibility : 1" in madt
    override = madt.split("[Interrupt Source Override]", 1)[1][:400]
    assert "Source : 00" in override and "Interrupt : 00000002" in override
    assert "[Local APIC NMI]" in madt


def test_x2apic_madt_disassembles_cleanly(iasl: str, tmp_path: Path) -> None:
    madt = disassemble(iasl, build_acpi_tables(260, power=ACPI_POWER).table("APIC").data, "apic", tmp_path)
    assert madt.count("[Processor Local APIC]") == 255
    assert madt.count("[Processor Local x2APIC]") == 5
    assert "[Local x2APIC NMI]" in madt


@pytest.mark.parametrize("cpus", [1, 8, 64])
def test_dsdt_disassembles_to_the_devices_and_compiles_back(iasl: str, tmp_path: Path, cpus: int) -> None:
    extra = [virtio_mmio(0, 0xD000_0000, 5), virtio_mmio(1, 0xD000_0200, 6)]
    with pc_devices() as platform:
        devices = [*platform.aml(), *extra]
    dsdt = build_acpi_tables(cpus, power=ACPI_POWER, devices=devices).table("DSDT").data
    dsl = disassemble(iasl, dsdt, "dsdt", tmp_path)

    assert re.search(r"Name \(_S5, Package \(0x02\).*?\{\s*0x05,\s*Zero\s*\}", dsl, re.DOTALL)
    assert "Scope (\\_SB)" in dsl
    assert dsl.count('Name (_HID, "ACPI0007"') == cpus
    for cpu in range(cpus):
        assert f"Device (C{cpu:03X})" in dsl

    com1 = dsl.split("Device (COM1)", 1)[1].split("Device (", 1)[0]
    assert 'EisaId ("PNP0501")' in com1
    assert re.search(
        r"IO \(Decode16,\s*0x03F8,\s*// Range Minimum\s*0x03F8,.*?0x08,\s*// Length", com1, re.DOTALL
    )
    assert re.search(r"IRQNoFlags \(\)\s*\{4\}", com1)

    rtc = dsl.split("Device (RTC)", 1)[1].split("Device (", 1)[0]
    assert 'EisaId ("PNP0B00")' in rtc
    assert re.search(
        r"IO \(Decode16,\s*0x0070,\s*// Range Minimum\s*0x0070,.*?0x02,\s*// Length", rtc, re.DOTALL
    )
    assert re.search(r"IRQNoFlags \(\)\s*\{8\}", rtc)

    keyboard = dsl.split("Device (KBD)", 1)[1].split("Device (", 1)[0]
    assert 'EisaId ("PNP0303")' in keyboard
    assert "0x0060" in keyboard and "0x0064" in keyboard
    assert re.search(r"IRQNoFlags \(\)\s*\{1\}", keyboard)

    fw_cfg = dsl.split("Device (FWCF)", 1)[1].split("Device (", 1)[0]
    assert 'Name (_HID, "QEMU0002")' in fw_cfg
    assert "Name (_STA, 0x0B)" in fw_cfg
    assert re.search(
        r"IO \(Decode16,\s*0x0510,\s*// Range Minimum\s*0x0510,.*?0x0C,\s*// Length", fw_cfg, re.DOTALL
    )

    power = dsl.split("Device (PWRR)", 1)[1].split("Device (", 1)[0]
    assert 'EisaId ("PNP0C02")' in power
    assert "0x0600" in power and "0x0604" in power

    ged = dsl.split("Device (GED0)", 1)[1].split("Device (", 1)[0]
    assert 'Name (_HID, "ACPI0013"' in ged
    assert re.search(
        r"Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x00000009,", ged
    )
    assert "OperationRegion (EREG, SystemIO, 0x0608, 0x04)" in ged
    assert re.search(r"Field \(EREG, DWordAcc, NoLock, WriteAsZeros\)\s*\{\s*ESEL,\s*32", ged)
    assert "Method (_EVT, 1, Serialized)" in ged
    assert re.search(r"If \(\(\(Local0 & One\) == One\)\)\s*\{\s*Notify \(\\_SB.PWRB, 0x80\)", ged)
    assert re.search(r"If \(\(\(Local0 & 0x02\) == 0x02\)\)\s*\{\s*Notify \(\\_SB.VGEN, 0x80\)", ged)
    button = dsl.split("Device (PWRB)", 1)[1].split("Device (", 1)[0]
    assert 'EisaId ("PNP0C0C")' in button
    generation = dsl.split("Device (VGEN)", 1)[1].split("Device (", 1)[0]
    assert re.search(
        r'Name \(_CID, Package \(0x02\).*?"VM_GEN_COUNTER",\s*"VM_Gen_Counter"', generation, re.DOTALL
    )
    assert re.search(
        r"Method \(ADDR, 0, NotSerialized\)\s*\{\s*Return \(Package \(0x02\)\s*\{\s*0x000FF000,\s*Zero",
        generation,
    )

    assert dsl.count('Name (_HID, "LNRO0005")') == 2
    assert "Memory32Fixed (ReadWrite,\n                    0xD0000200," in dsl
    assert re.search(
        r"Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x00000006,", dsl
    )

    source = tmp_path / "dsdt.dsl"
    output = run(iasl, source, cwd=tmp_path)
    assert "Compilation successful. 0 Errors, 0 Warnings, 0 Remarks" in output, output


REFERENCE_ASL = r"""
DefinitionBlock ("reference.aml", "DSDT", 2, "PYVMM ", "PYVMM   ", 1)
{
    Name (_S5, Package () {5, Zero})  // -oa keeps a literal 0 as ByteConst; Zero is ZeroOp
    Scope (\_SB)
    {
        Device (PCI0)
        {
            Name (_HID, EisaId ("PNP0A08"))
            Name (_UID, 0x1234)
            Name (_CRS, ResourceTemplate ()
            {
                WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,
                    0x0000, 0x0000, 0x00FF, 0x0000, 0x0100)
                WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
                    0x0000, 0x0D00, 0xFFFF, 0x0000, 0xF300)
                DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
                    0x00000000, 0xC0000000, 0xFEBFFFFF, 0x00000000, 0x3EC00000)
                QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite,
                    0x0, 0x8000000000, 0xFFFFFFFFFF, 0x0, 0x8000000000)
            })
            Method (_STA, 0, NotSerialized) { Return (0x0F) }
        }
        Device (DEV0)
        {
            Name (_HID, "LNRO0005")
            Name (_CRS, ResourceTemplate ()
            {
                Memory32Fixed (ReadWrite, 0xD0000000, 0x00000200)
                Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {5, 6}
                IRQ (Level, ActiveLow, Shared) {10, 11}
                IRQNoFlags () {4}
                IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
                FixedIO (0x0060, 0x01)
            })
            Method (GET, 2, Serialized) { Return (0xFFFFFFFFFF) }
        }
    }
}
"""


def reference_terms() -> list[Name | Scope]:
    """REFERENCE_ASL written with pyvmm's encoder (iasl writes no resource checksum)."""
    host_bridge = ResourceTemplate(
        [
            WordBusNumber(0, 0x100, producer=True),
            WordIO(0xD00, 0xF300, producer=True),
            DWordMemory(0xC000_0000, 0x3EC0_0000, producer=True),
            QWordMemory(
                0x80_0000_0000, 0x80_0000_0000, producer=True, cacheability=Cacheability.PREFETCHABLE
            ),
        ],
        checksum=False,
    )
    device = ResourceTemplate(
        [
            Memory32Fixed(0xD000_0000, 0x200),
            Interrupt([5, 6], edge=True, active_low=False),
            Irq([10, 11], edge=False, active_low=True, shared=True),
            IrqNoFlags([4]),
            IO(0x3F8, 0x3F8, 1, 8),
            FixedIO(0x60, 1),
        ],
        checksum=False,
    )
    return [
        Name("_S5", Package([5, 0])),
        Scope(
            "\\_SB",
            [
                Device(
                    "PCI0",
                    [
                        Name("_HID", EisaId("PNP0A08")),
                        Name("_UID", 0x1234),
                        Name("_CRS", host_bridge),
                        Method("_STA", 0, [Return(0x0F)]),
                    ],
                ),
                Device(
                    "DEV0",
                    [
                        Name("_HID", "LNRO0005"),
                        Name("_CRS", device),
                        Method("GET", 2, [Return(0xFF_FFFF_FFFF)], serialized=True),
                    ],
                ),
            ],
        ),
    ]


def test_encoder_matches_iasl_byte_for_byte(iasl: str, tmp_path: Path) -> None:
    (tmp_path / "reference.asl").write_text(REFERENCE_ASL)
    run(iasl, "-oa", "reference.asl", cwd=tmp_path)  # -oa: no optimizations, AML as written
    compiled = (tmp_path / "reference.aml").read_bytes()
    ours = definition_block(reference_terms())
    assert ours.hex() == compiled[36:].hex()  # the body after the table header


def test_dsdt_resource_checksums_do_not_bother_iasl(iasl: str, tmp_path: Path) -> None:
    # pyvmm writes real End Tag checksums; iasl disassembles them like zero ones.
    template = ResourceTemplate([IO(0x3F8, 0x3F8, 1, 8), IrqNoFlags([4])])
    dsdt = table(b"DSDT", 2, definition_block([Scope("\\_SB", [Device("COM1", [Name("_CRS", template)])])]))
    dsl = disassemble(iasl, dsdt, "checksummed", tmp_path)
    assert "IRQNoFlags ()" in dsl
