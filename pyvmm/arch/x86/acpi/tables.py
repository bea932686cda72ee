"""Build all of pyvmm's ACPI tables and place them in guest memory.

Where they go: the PC BIOS area [0xE0000, 0x100000), which pyvmm's memory map
reports as reserved (`pyvmm.boot.memory_map`), so the guest never reuses it. The RSDP
comes first, at 0xE0000: on a 16-byte boundary inside [0xE0000, 0xFFFFF], where an OS
without a firmware-provided RSDP address scans for it (ACPI 6.4 §5.2.5.1). The other
tables follow, each on a 16-byte boundary:

    0xE0000  RSDP (36 bytes)
             XSDT  → FADT, MADT, extra tables
             RSDT  → FADT, MADT, extra tables (32-bit copy for ACPI 1.0 readers)
             FADT  → DSDT
             MADT  (44 + 28 bytes, then 8 per vCPU; 16 from APIC ID 255 on: x2APIC)
             extra tables, in the order given (the machine's MCFG, 60 bytes, with PCI)
             DSDT  (about 0.2 KiB + 30 bytes per vCPU; the PCI host bridge adds ~2 KiB)

The area's last page, from `FIRMWARE_DATA_ADDRESS`, holds no table: it is data the
DSDT points at, as firmware keeps such data in reserved memory (the 16-byte VM
generation ID at `VMGENID_ADDRESS`, whose ``ADDR`` method names it).

The whole set takes about 0.7 KiB plus 38 bytes per vCPU (46 past 255 vCPUs), so the
124 KiB before that page hold it for about 2780 vCPUs; KVM allows 1024 on most x86 hosts.
Past that `build_acpi_tables` raises `AcpiError`; the tables would then have to move
to the top of RAM below the MMIO hole, reported as E820 type ACPI (3).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pyvmm.arch.x86.acpi.aml import Aml
from pyvmm.arch.x86.acpi.dsdt import build_dsdt
from pyvmm.arch.x86.acpi.errors import AcpiError
from pyvmm.arch.x86.acpi.fadt import DEFAULT_BOOT_ARCH, BootArch, PowerRegisters, build_fadt
from pyvmm.arch.x86.acpi.madt import TIMER_GSI_KVM_DEFAULT, build_madt
from pyvmm.arch.x86.acpi.sdt import HEADER_SIZE, RSDP_SIZE, rsdp, rsdt, xsdt
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

ACPI_AREA_START = 0xE0000  # the BIOS area: reserved in the memory map
ACPI_AREA_END = 0x100000  # exclusive
RSDP_ADDRESS = ACPI_AREA_START
FIRMWARE_DATA_ADDRESS = ACPI_AREA_END - 0x1000  # the last page: data, not tables
# The VM generation ID: 16 bytes, 8-byte aligned and inside one page, as Microsoft's
# specification asks.
VMGENID_ADDRESS = FIRMWARE_DATA_ADDRESS
TABLE_ALIGNMENT = 16
# Tables this module builds itself: an extra one of these would be a second copy.
_BUILT_HERE = {b"RSD ", b"XSDT", b"RSDT", b"FACP", b"APIC", b"DSDT"}


@dataclass(frozen=True)
class AcpiTable:
    """One table as placed in guest memory."""

    signature: str  # "RSDP" for the root pointer
    address: int
    data: bytes

    @property
    def end(self) -> int:
        return self.address + len(self.data)


@dataclass(frozen=True)
class AcpiTables:
    """Every table, RSDP first, with its guest physical address."""

    tables: tuple[AcpiTable, ...]

    @property
    def rsdp_address(self) -> int:
        return self.tables[0].address

    @property
    def end(self) -> int:
        """The first address after the last table."""
        return max(entry.end for entry in self.tables)

    def table(self, signature: str) -> AcpiTable:
        for entry in self.tables:
            if entry.signature == signature:
                return entry
        raise KeyError(signature)

    def write(self, memory: GuestMemory) -> int:
        """Write the RSDP and every table into `memory`; the RSDP's address (for the
        zero page or the PVH start info)."""
        for entry in self.tables:
            memory.write(entry.address, entry.data)
        log.debug("ACPI tables at [%#x, %#x)", self.rsdp_address, self.end)
        return self.rsdp_address


def _align(address: int) -> int:
    return -(-address // TABLE_ALIGNMENT) * TABLE_ALIGNMENT


def build_acpi_tables(
    cpus: int,
    *,
    power: PowerRegisters,
    devices: Sequence[Aml] = (),
    tables: Sequence[bytes] = (),
    timer_gsi: int = TIMER_GSI_KVM_DEFAULT,
    boot_arch: BootArch = DEFAULT_BOOT_ARCH,
    base: int = ACPI_AREA_START,
    limit: int = FIRMWARE_DATA_ADDRESS,
) -> AcpiTables:
    """All tables for a guest with `cpus` vCPUs, laid out from `base` (the RSDP) to at
    most `limit`. `power`: the platform's sleep and reset registers, for the FADT and
    ``\\_S5_`` (`pyvmm.platform.pc.ACPI_POWER`). `devices` are the AML objects of the
    machine's devices, for ``\\_SB_`` (`DeviceManager.aml()`); `tables` are further
    whole tables (header and checksum included, e.g. `mcfg.build_mcfg`) for the XSDT
    and RSDT to point at."""
    for extra in tables:
        signature = extra[:4]
        if len(extra) < HEADER_SIZE or signature in _BUILT_HERE or not signature.isalnum():
            raise AcpiError(f"extra ACPI table {signature!r} is not a table pyvmm can add")
    dsdt = build_dsdt(cpus, devices, s5_sleep_type=power.s5_sleep_type)
    madt = build_madt(cpus, timer_gsi=timer_gsi)
    pointers = [0] * (2 + len(tables))
    # Every table but the DSDT has a size known before the addresses are: lay out first.
    xsdt_address = _align(base + RSDP_SIZE)
    rsdt_address = _align(xsdt_address + len(xsdt(pointers)))
    fadt_address = _align(rsdt_address + len(rsdt(pointers)))
    madt_address = _align(fadt_address + len(build_fadt(0, power)))
    extra_addresses = []
    address = madt_address + len(madt)
    for extra in tables:
        extra_addresses.append(_align(address))
        address = extra_addresses[-1] + len(extra)
    dsdt_address = _align(address)
    end = dsdt_address + len(dsdt)
    if end > limit:
        raise AcpiError(
            f"ACPI tables for {cpus} vCPUs take {end - base} bytes, more than the "
            f"{limit - base} bytes at [{base:#x}, {limit:#x})"
        )
    pointed = [fadt_address, madt_address, *extra_addresses]
    placed = (
        AcpiTable("RSDP", base, rsdp(xsdt_address, rsdt_address)),
        AcpiTable("XSDT", xsdt_address, xsdt(pointed)),
        AcpiTable("RSDT", rsdt_address, rsdt(pointed)),
        AcpiTable("FACP", fadt_address, build_fadt(dsdt_address, power, boot_arch=boot_arch)),
        AcpiTable("APIC", madt_address, madt),
        *(
            AcpiTable(extra[:4].decode("ascii"), at, extra)
            for at, extra in zip(extra_addresses, tables, strict=True)
        ),
        AcpiTable("DSDT", dsdt_address, dsdt),
    )
    return AcpiTables(placed)
