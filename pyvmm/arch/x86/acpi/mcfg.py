"""The MCFG table (PCI Firmware Specification 3.2 §4.1.2): where each PCI segment's
ECAM window is, for an OS to reach extended configuration space (PCIe base §7.2.2).

    header (36 bytes, signature "MCFG", revision 1)
    8 reserved bytes
    one 16-byte allocation per window: base address (u64), PCI segment group (u16),
    start bus (u8), end bus (u8), 4 reserved bytes

The base address is that of bus 0 of the segment even when the window starts at a
later bus (§4.1.2, Table 4-3): bus `b` is at base + (b << 20). `EcamRegion.base` is
the address of the window's first bus, as it is on the MMIO bus; the table field is
derived from it.

Linux uses the window only if it is also reserved, in the E820 map (type 2) or as a
motherboard resource in ACPI (`pci_host.ecam_reservation_device`); otherwise it logs
"MMCONFIG ... not reserved" and falls back to mechanism #1.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pyvmm.arch.x86.acpi.errors import AcpiError
from pyvmm.arch.x86.acpi.sdt import table

MCFG_REVISION = 1
MCFG_RESERVED = 8
ALLOCATION = struct.Struct("<QHBB4x")  # 16 bytes
BUS_SHIFT = 20  # 1 MiB of configuration space per bus
MAX_BUS = 0xFF


@dataclass(frozen=True)
class EcamRegion:
    """One ECAM window: buses start_bus..end_bus of `segment`, the first at `base`."""

    base: int
    start_bus: int = 0
    end_bus: int = 0
    segment: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.start_bus <= self.end_bus <= MAX_BUS:
            raise AcpiError(f"ECAM bus range {self.start_bus}-{self.end_bus} is not within 0-255")
        if not 0 <= self.segment <= 0xFFFF:
            raise AcpiError(f"PCI segment {self.segment} does not fit in 16 bits")
        if self.base % (1 << BUS_SHIFT) or self.table_base < 0 or self.base + self.size > 1 << 64:
            raise AcpiError(f"ECAM window at {self.base:#x} is not 1 MiB aligned or not addressable")

    @property
    def size(self) -> int:
        return (self.end_bus - self.start_bus + 1) << BUS_SHIFT

    @property
    def table_base(self) -> int:
        """The MCFG base-address field: where bus 0 of the segment would be."""
        return self.base - (self.start_bus << BUS_SHIFT)


def build_mcfg(regions: Sequence[EcamRegion]) -> bytes:
    """The MCFG table describing `regions`."""
    if not regions:
        raise AcpiError("an MCFG table describes at least one ECAM window")
    allocations = b"".join(
        ALLOCATION.pack(region.table_base, region.segment, region.start_bus, region.end_bus)
        for region in regions
    )
    return table(b"MCFG", MCFG_REVISION, bytes(MCFG_RESERVED) + allocations)
