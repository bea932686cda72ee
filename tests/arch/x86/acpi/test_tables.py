"""The tables as a guest reads them: checksums, lengths, pointers, one enabled local
APIC per vCPU, and the RSDP where Linux scans for it (ACPI 6.4 §5.2)."""

from __future__ import annotations

import dataclasses
import itertools
import struct
from collections.abc import Iterator

import pytest
from pc_platform import pc_devices

from pyvmm.arch.x86.acpi import (
    ACPI_AREA_END,
    ACPI_AREA_START,
    RSDP_ADDRESS,
    AcpiError,
    AcpiTables,
    PowerRegisters,
    build_acpi_tables,
)
from pyvmm.arch.x86.acpi.aml import Device, Name
from pyvmm.arch.x86.acpi.fadt import BootArch, FadtFlags
from pyvmm.arch.x86.acpi.madt import TIMER_GSI_PC, MpsIntiFlags
from pyvmm.boot.memory_map import E820Type, memory_map
from pyvmm.memory import GuestMemory
from pyvmm.platform.pc import ACPI_POWER

CPU_COUNTS = (1, 2, 8, 64)
SYSTEM_IO = 1


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    ram = GuestMemory([(0, 2 << 20)])
    yield ram
    ram.close()


def header(data: bytes) -> tuple[bytes, int, int]:
    signature, length, revision = struct.unpack_from("<4sIB", data)
    return signature, length, revision


def madt_entries(madt: bytes) -> list[tuple[int, bytes]]:
    """(type, bytes) of every interrupt controller structure after the MADT header."""
    entries = []
    offset = 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        assert length >= 2, "a zero-length MADT entry would loop an OS forever"
        entries.append((kind, madt[offset : offset + length]))
        offset += length
    assert offset == len(madt), "MADT entries must end exactly at the table's end"
    return entries


def gas(data: bytes, offset: int) -> tuple[int, int, int, int, int]:
    return struct.unpack_from("<BBBBQ", data, offset)  # type: ignore[return-value]


@pytest.mark.parametrize("cpus", CPU_COUNTS)
def test_every_table_sums_to_zero_and_has_its_length(cpus: int) -> None:
    built = build_acpi_tables(cpus, power=ACPI_POWER)
    for entry in built.tables:
        if entry.signature == "RSDP":
            continue
        signature, length, _ = header(entry.data)
        assert signature.decode() == entry.signature
        assert length == len(entry.data)
        assert sum(entry.data) % 256 == 0, entry.signature
        assert entry.data[10:16] == b"PYVMM "


@pytest.mark.parametrize("cpus", CPU_COUNTS)
def test_rsdp_revision_2_with_both_checksums(cpus: int) -> None:
    rsdp = build_acpi_tables(cpus, power=ACPI_POWER).table("RSDP").data
    assert len(rsdp) == 36
    signature, _, oem, revision, rsdt, length, xsdt = struct.unpack_from("<8sB6sBIIQ", rsdp)
    assert signature == b"RSD PTR "
    assert oem == b"PYVMM "
    assert (revision, length) == (2, 36)
    assert sum(rsdp[:20]) % 256 == 0
    assert sum(rsdp) % 256 == 0
    built = build_acpi_tables(cpus, power=ACPI_POWER)
    assert xsdt == built.table("XSDT").address
    assert rsdt == built.table("RSDT").address


def test_xsdt_and_rsdt_list_the_fadt_and_madt() -> None:
    built = build_acpi_tables(2, power=ACPI_POWER)
    expected = [built.table("FACP").address, built.table("APIC").address]
    xsdt = built.table("XSDT").data
    rsdt = built.table("RSDT").data
    assert list(struct.unpack_from("<2Q", xsdt, 36)) == expected
    assert len(xsdt) == 36 + 16
    assert list(struct.unpack_from("<2I", rsdt, 36)) == expected
    assert len(rsdt) == 36 + 8


def test_fadt_points_to_the_dsdt_and_is_hardware_reduced() -> None:
    built = build_acpi_tables(2, power=ACPI_POWER)
    fadt = built.table("FACP").data
    dsdt = built.table("DSDT").address
    signature, length, revision = header(fadt)
    assert (signature, length, revision) == (b"FACP", 276, 6)
    assert fadt[131] == 4  # FADT minor version: ACPI 6.4
    assert struct.unpack_from("<I", fadt, 40)[0] == dsdt
    assert struct.unpack_from("<Q", fadt, 140)[0] == dsdt  # X_DSDT
    assert struct.unpack_from("<IQ", fadt, 36)[0] == 0  # no FACS
    flags = FadtFlags(struct.unpack_from("<I", fadt, 112)[0])
    assert FadtFlags.HW_REDUCED_ACPI in flags
    assert FadtFlags.RESET_REG_SUP in flags
    boot_arch = BootArch(struct.unpack_from("<H", fadt, 109)[0])
    assert BootArch.I8042 in boot_arch
    assert BootArch.VGA_NOT_PRESENT in boot_arch
    assert BootArch.CMOS_RTC_NOT_PRESENT not in boot_arch
    assert fadt[108] == 0x32  # CENTURY: the RTC's century register
    assert struct.unpack_from("<H", fadt, 46)[0] == 9  # SCI_INT: not IRQ 0


# Not the PC's ports: the tables must take the registers from the value they are given.
ELSEWHERE = PowerRegisters(
    sleep_control_port=0x700, sleep_status_port=0x704, reset_port=0x708, reset_value=0x42, s5_sleep_type=3
)


def test_fadt_and_s5_announce_the_power_registers_given() -> None:
    built = build_acpi_tables(1, power=ELSEWHERE)
    fadt = built.table("FACP").data
    byte_io = (SYSTEM_IO, 8, 0, 1)
    assert gas(fadt, 244) == (*byte_io, 0x700)  # SLEEP_CONTROL_REG
    assert gas(fadt, 256) == (*byte_io, 0x704)  # SLEEP_STATUS_REG
    assert gas(fadt, 116) == (*byte_io, 0x708)  # RESET_REG
    assert fadt[128] == 0x42  # RESET_VALUE
    assert FadtFlags.RESET_REG_SUP in FadtFlags(struct.unpack_from("<I", fadt, 112)[0])
    for offset in range(148, 244, 12):  # X_PM1a_EVT_BLK .. X_GPE1_BLK: absent
        assert gas(fadt, offset) == (0, 0, 0, 0, 0)
    # Name(_S5_, Package(2) {3, 0}): NameOp, name, PackageOp, PkgLength 5, 2 elements.
    assert b"\x08_S5_\x12\x05\x02\x0a\x03\x00" in built.table("DSDT").data


def test_without_a_reset_register_the_fadt_claims_none() -> None:
    fadt = build_acpi_tables(1, power=dataclasses.replace(ELSEWHERE, reset_port=None)).table("FACP").data
    assert gas(fadt, 116) == (0, 0, 0, 0, 0) and fadt[128] == 0
    assert FadtFlags.RESET_REG_SUP not in FadtFlags(struct.unpack_from("<I", fadt, 112)[0])
    assert gas(fadt, 244)[4] == 0x700  # the sleep registers stay


@pytest.mark.parametrize(
    "change",
    [{"sleep_control_port": 0x10000}, {"reset_port": -1}, {"reset_value": 0x100}, {"s5_sleep_type": 8}],
)
def test_power_registers_that_acpi_cannot_describe_are_refused(change: dict[str, int]) -> None:
    with pytest.raises(AcpiError):
        dataclasses.replace(ELSEWHERE, **change)


@pytest.mark.parametrize("cpus", CPU_COUNTS)
def test_madt_has_one_enabled_local_apic_per_cpu(cpus: int) -> None:
    madt = build_acpi_tables(cpus, power=ACPI_POWER).table("APIC").data
    assert struct.unpack_from("<II", madt, 36) == (0xFEE0_0000, 1)  # LAPIC address, PCAT_COMPAT
    entries = madt_entries(madt)
    lapics = [struct.unpack("<BBBBI", entry) for kind, entry in entries if kind == 0]
    assert [(uid, apic_id, flags) for _, _, uid, apic_id, flags in lapics] == [
        (cpu, cpu, 1) for cpu in range(cpus)
    ]
    [ioapic] = [struct.unpack("<BBBBII", entry) for kind, entry in entries if kind == 1]
    assert ioapic[2:] == (cpus, 0, 0xFEC0_0000, 0)  # ID = cpus, address, GSI base 0
    [nmi] = [struct.unpack("<BBBHB", entry) for kind, entry in entries if kind == 4]
    assert (nmi[2], nmi[4]) == (0xFF, 1)  # every processor, LINT1
    assert not [entry for kind, entry in entries if kind not in (0, 1, 2, 4)]


@pytest.mark.parametrize("timer_gsi", [0, TIMER_GSI_PC])
def test_madt_overrides_irq0_edge_active_high(timer_gsi: int) -> None:
    madt = build_acpi_tables(2, power=ACPI_POWER, timer_gsi=timer_gsi).table("APIC").data
    overrides = [struct.unpack("<BBBBIH", entry) for kind, entry in madt_entries(madt) if kind == 2]
    assert overrides == [(2, 10, 0, 0, timer_gsi, MpsIntiFlags.EDGE | MpsIntiFlags.ACTIVE_HIGH)]


def test_madt_uses_x2apic_structures_from_apic_id_255() -> None:
    cpus = 300
    madt = build_acpi_tables(cpus, power=ACPI_POWER).table("APIC").data
    entries = madt_entries(madt)
    lapic_ids = [entry[3] for kind, entry in entries if kind == 0]
    x2apics = [struct.unpack("<BBHIII", entry) for kind, entry in entries if kind == 9]
    assert lapic_ids == list(range(255))
    assert [(apic_id, flags, uid) for *_, apic_id, flags, uid in x2apics] == [
        (cpu, 1, cpu) for cpu in range(255, cpus)
    ]
    [x2nmi] = [struct.unpack("<BBHIB3x", entry) for kind, entry in entries if kind == 0x0A]
    assert (x2nmi[3], x2nmi[4]) == (0xFFFF_FFFF, 1)
    [ioapic] = [entry for kind, entry in entries if kind == 1]
    assert ioapic[2] == 0xFE


@pytest.mark.parametrize("cpus", CPU_COUNTS)
def test_dsdt_has_a_processor_device_per_cpu_and_the_platform_devices(cpus: int) -> None:
    with pc_devices() as platform:
        dsdt = build_acpi_tables(cpus, power=ACPI_POWER, devices=platform.aml()).table("DSDT").data
    for cpu in range(cpus):
        assert f"C{cpu:03X}".encode() in dsdt
    assert f"C{cpus:03X}".encode() not in dsdt
    assert dsdt.count(b"ACPI0007") == cpus
    for name in (b"_S5_", b"COM1", b"RTC_", b"KBD_", b"FWCF", b"QEMU0002", b"PWRR"):
        assert name in dsdt


def test_without_an_rtc_the_fadt_names_no_century_register() -> None:
    boot_arch = BootArch.I8042 | BootArch.CMOS_RTC_NOT_PRESENT
    fadt = build_acpi_tables(1, power=ACPI_POWER, boot_arch=boot_arch).table("FACP").data
    assert struct.unpack_from("<H", fadt, 109)[0] == 0b100010
    assert fadt[108] == 0


def test_extra_devices_land_in_the_dsdt() -> None:
    virtio = Device("VR00", [Name("_HID", "LNRO0005"), Name("_UID", 0)])
    plain = build_acpi_tables(1, power=ACPI_POWER).table("DSDT").data
    dsdt = build_acpi_tables(1, power=ACPI_POWER, devices=[virtio]).table("DSDT").data
    assert virtio.encode() in dsdt
    assert len(dsdt) == len(plain) + len(virtio.encode())


@pytest.mark.parametrize("cpus", CPU_COUNTS)
def test_tables_are_aligned_disjoint_and_inside_the_bios_area(cpus: int) -> None:
    built = build_acpi_tables(cpus, power=ACPI_POWER)
    assert built.rsdp_address == RSDP_ADDRESS == 0xE0000
    spans = sorted((entry.address, entry.end) for entry in built.tables)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    for entry in built.tables:
        assert entry.address % 16 == 0
        assert entry.address >= ACPI_AREA_START
        assert entry.end <= ACPI_AREA_END


def linux_style_rsdp_scan(memory: GuestMemory) -> int | None:
    """What an OS without a firmware RSDP pointer does: look for "RSD PTR " with a good
    checksum on every 16-byte boundary of [0xE0000, 0xFFFFF]."""
    area = memory.read(0xE0000, 0x20000)
    for offset in range(0, len(area), 16):
        if area[offset : offset + 8] == b"RSD PTR " and sum(area[offset : offset + 20]) % 256 == 0:
            return 0xE0000 + offset
    return None


def test_write_puts_the_tables_where_a_scan_finds_them(memory: GuestMemory) -> None:
    built = build_acpi_tables(4, power=ACPI_POWER)
    address = built.write(memory)
    assert address == RSDP_ADDRESS
    assert linux_style_rsdp_scan(memory) == address
    for entry in built.tables:
        assert memory.read(entry.address, len(entry.data)) == entry.data
    xsdt = struct.unpack_from("<Q", memory.read(address, 36), 24)[0]
    fadt, madt = struct.unpack_from("<2Q", memory.read(xsdt, 52), 36)
    assert memory.read(fadt, 4) == b"FACP"
    assert memory.read(madt, 4) == b"APIC"
    dsdt = struct.unpack_from("<Q", memory.read(fadt, 276), 140)[0]
    assert memory.read(dsdt, 4) == b"DSDT"


def test_the_memory_map_reserves_the_table_area(memory: GuestMemory) -> None:
    built = build_acpi_tables(64, power=ACPI_POWER)
    reserved = [entry for entry in memory_map(memory) if entry.kind is E820Type.RESERVED]
    assert any(e.addr <= built.rsdp_address and built.end <= e.end for e in reserved)


def largest_fit() -> int:
    low, high = 1, 4096  # processor device names end at CFFF
    while low < high:
        middle = (low + high + 1) // 2
        try:
            build_acpi_tables(middle, power=ACPI_POWER)
        except AcpiError:
            high = middle - 1
        else:
            low = middle
    return low


def test_tables_fit_for_every_vcpu_count_kvm_allows_by_default() -> None:
    # KVM_MAX_VCPUS is 1024 on x86 hosts; the BIOS area holds tables for well over that.
    capacity = largest_fit()
    assert capacity >= 1024
    built: AcpiTables = build_acpi_tables(capacity, power=ACPI_POWER)
    assert built.end <= ACPI_AREA_END
    with pytest.raises(AcpiError, match="vCPUs"):
        build_acpi_tables(capacity + 1, power=ACPI_POWER)


def test_extra_tables_are_placed_and_listed_by_xsdt_and_rsdt() -> None:
    from pyvmm.arch.x86.acpi.mcfg import EcamRegion, build_mcfg

    mcfg = build_mcfg([EcamRegion(0xE000_0000)])
    built = build_acpi_tables(2, power=ACPI_POWER, tables=[mcfg])
    placed = built.table("MCFG")
    assert placed.data == mcfg and placed.address % 16 == 0
    expected = [built.table("FACP").address, built.table("APIC").address, placed.address]
    assert list(struct.unpack_from("<3Q", built.table("XSDT").data, 36)) == expected
    assert list(struct.unpack_from("<3I", built.table("RSDT").data, 36)) == expected
    spans = sorted((entry.address, entry.end) for entry in built.tables)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


@pytest.mark.parametrize("bad", [b"DSDT" + bytes(40), b"MCFG", b"\0\0\0\0" + bytes(40)])
def test_an_extra_table_must_be_a_new_whole_table(bad: bytes) -> None:
    with pytest.raises(AcpiError, match="extra ACPI table"):
        build_acpi_tables(1, power=ACPI_POWER, tables=[bad])
