"""The PCI host bridge in the DSDT: ``\\_SB.PCI0`` (PNP0A03), its windows (_CRS) and
its interrupt routing (_PRT), and the motherboard device that reserves the ECAM
window (ACPI 6.4 §6.1-6.2, §6.2.13; PCI Firmware Specification 3.2 §4.1).

    Device (PCI0)
        _HID  EisaId("PNP0A03")   a PCI host bridge. Not PNP0A08: Linux then expects
                                  an _OSC method and logs its absence; pyvmm has no
                                  PCIe features to negotiate, and Linux still uses
                                  the MCFG window for extended configuration space
        _UID, _SEG, _BBN          0: segment 0, bus 0
        _CRS  WordBusNumber       the buses below the bridge (producer)
              IO (0xCF8, 8)       the configuration ports, consumed by the bridge
              WordIO ...          I/O windows (producer), none over 0xCF8-0xCFF
              DWordMemory         the 32-bit MMIO window (producer)
              QWordMemory         the 64-bit MMIO window, if any (producer)
        _PRT  Package             (slot, pin) -> GSI, for every slot

Both memory windows are non-cacheable, not prefetchable: Linux never places a
non-prefetchable BAR in a prefetchable window, so a prefetchable window would keep
64-bit non-prefetchable BARs out of the 64-bit window.

Interrupt routing: INTx pins of bus 0 go straight to IOAPIC inputs (a _PRT entry
with Source 0 names a GSI, ACPI 6.4 §6.2.13), which Linux then programs
level-triggered, active low. With four GSIs G[0..3], slot S pin P (0 = INTA) uses
G[(S + P) mod 4], the swizzle of PCI-to-PCI Bridge Architecture 1.2 §9.1 that QEMU
also uses on bus 0: INTA of neighbouring slots lands on different GSIs, so
single-function devices (which all use INTA) spread over the four.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyvmm.arch.x86.acpi.aml import Device, EisaId, Name, Package
from pyvmm.arch.x86.acpi.errors import AcpiError
from pyvmm.arch.x86.acpi.resources import (
    IO,
    Descriptor,
    DWordMemory,
    Memory32Fixed,
    QWordMemory,
    ResourceTemplate,
    WordBusNumber,
    WordIO,
)

HOST_BRIDGE_HID = "PNP0A03"
MOTHERBOARD_HID = "PNP0C02"
CONFIG_PORT = 0xCF8  # mechanism #1 (pyvmm.pci.config_access; not imported: acpi sits below pci's users)
CONFIG_PORTS = 8
# The I/O windows QEMU gives its PCI host: everything but the configuration ports.
DEFAULT_IO_WINDOWS = (
    (0x0000, CONFIG_PORT),
    (CONFIG_PORT + CONFIG_PORTS, 0x10000 - CONFIG_PORT - CONFIG_PORTS),
)
DEFAULT_GSIS = (16, 17, 18, 19)  # the IOAPIC pins above the ISA IRQs
PINS = 4  # INTA-INTD
SLOTS = 32
ALL_FUNCTIONS = 0xFFFF  # _PRT Address: function field "any" (ACPI 6.4 §6.2.13)
FOUR_GIB = 1 << 32


@dataclass(frozen=True)
class PciWindows:
    """What the bridge forwards: bus count, I/O windows, 32- and 64-bit MMIO windows,
    each window a (base, length)."""

    mmio32: tuple[int, int]
    mmio64: tuple[int, int] | None = None
    io: Sequence[tuple[int, int]] = DEFAULT_IO_WINDOWS
    buses: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.buses <= 256:
            raise AcpiError(f"a host bridge has 1 to 256 buses, not {self.buses}")
        for base, length in self.io:
            if length < 1 or base < 0 or base + length > 0x10000:
                raise AcpiError(f"I/O window {base:#x}+{length:#x} is not inside the 64 KiB of ports")
            if base < CONFIG_PORT + CONFIG_PORTS and base + length > CONFIG_PORT:
                raise AcpiError(f"I/O window {base:#x}+{length:#x} covers ports 0xCF8-0xCFF")
        base, length = self.mmio32
        if length < 1 or base < 0 or base + length > FOUR_GIB:
            raise AcpiError(f"32-bit MMIO window {base:#x}+{length:#x} is not below 4 GiB")
        if self.mmio64 is not None:
            base, length = self.mmio64
            if length < 1 or base < FOUR_GIB or base + length > 1 << 64:
                raise AcpiError(f"64-bit MMIO window {base:#x}+{length:#x} is not above 4 GiB")


def host_bridge_resources(windows: PciWindows) -> ResourceTemplate:
    """The bridge's _CRS."""
    descriptors: list[Descriptor] = [
        WordBusNumber(0, windows.buses, producer=True),
        IO(CONFIG_PORT, CONFIG_PORT, 1, CONFIG_PORTS),
    ]
    descriptors += [WordIO(base, length, producer=True) for base, length in windows.io]
    descriptors.append(DWordMemory(*windows.mmio32, producer=True))
    if windows.mmio64 is not None:
        descriptors.append(QWordMemory(*windows.mmio64, producer=True))
    return ResourceTemplate(descriptors)


def gsi_for(slot: int, pin: int, gsis: Sequence[int] = DEFAULT_GSIS) -> int:
    """The GSI that INTx `pin` (0 = INTA) of `slot` on bus 0 reaches (the swizzle)."""
    return gsis[(slot + pin) % len(gsis)]


def routing_table(gsis: Sequence[int] = DEFAULT_GSIS, slots: int = SLOTS) -> Package:
    """_PRT: one entry per slot and pin, {Address, Pin, Source 0, GSI}."""
    if len(gsis) != PINS or any(not 0 <= gsi < 1 << 32 for gsi in gsis):
        raise AcpiError(f"PCI interrupt routing needs {PINS} GSIs (one per INTx pin), not {list(gsis)}")
    if not 1 <= slots <= SLOTS:
        raise AcpiError(f"bus 0 has 1 to {SLOTS} slots, not {slots}")
    return Package(
        [
            Package([slot << 16 | ALL_FUNCTIONS, pin, 0, gsi_for(slot, pin, gsis)])
            for slot in range(slots)
            for pin in range(PINS)
        ]
    )


def host_bridge_device(
    windows: PciWindows,
    *,
    gsis: Sequence[int] = DEFAULT_GSIS,
    slots: int = SLOTS,
    name: str = "PCI0",
) -> Device:
    """``\\_SB.PCI0``: put it in the DSDT's ``\\_SB_`` scope (an `extra_devices` entry)."""
    return Device(
        name,
        [
            Name("_HID", EisaId(HOST_BRIDGE_HID)),
            Name("_UID", 0),
            Name("_SEG", 0),
            Name("_BBN", 0),
            Name("_CRS", host_bridge_resources(windows)),
            Name("_PRT", routing_table(gsis, slots)),
        ],
    )


def ecam_reservation_device(base: int, size: int, name: str = "PCIR") -> Device:
    """A motherboard-resources device (PNP0C02) claiming the ECAM window, so Linux
    accepts the MCFG window late in boot (its "reserved in ACPI motherboard
    resources" check) and no driver is handed the range."""
    if size < 1 or base < 0 or base + size > 1 << 64:
        raise AcpiError(f"ECAM window {base:#x}+{size:#x} is not addressable")
    if base + size <= FOUR_GIB:
        descriptor: Descriptor = Memory32Fixed(base, size)
    else:
        descriptor = QWordMemory(base, size)
    return Device(
        name,
        [
            Name("_HID", EisaId(MOTHERBOARD_HID)),
            Name("_UID", 1),
            Name("_CRS", ResourceTemplate([descriptor])),
        ],
    )
