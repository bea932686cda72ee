"""The Multiple APIC Description Table (ACPI 6.4 §5.2.12): the interrupt controllers
an SMP guest starts its CPUs and routes its interrupts with.

pyvmm's vCPU n has APIC ID n (`pyvmm.arch.x86.cpuid`), and its ACPI Processor UID is n
too (the DSDT's processor devices have ``_UID`` n). APIC IDs below 255 get a Processor
Local APIC structure; larger ones need x2APIC and get a Processor Local x2APIC
structure (§5.2.12.12), as the specification requires.

The in-kernel IOAPIC (KVM_CREATE_IRQCHIP) has 24 inputs at GSI 0-23, and KVM's default
GSI routing connects ISA IRQ n to IOAPIC input n, IRQ 0 (the PIT) included. A PC wires
the PIT to input 2 instead and says so with an interrupt source override IRQ 0 → GSI 2;
that override is only true once the VMM routes GSI 0 to IOAPIC pin 2
(KVM_SET_GSI_ROUTING), as QEMU does. `timer_gsi` says which wiring the machine has;
either way the override for IRQ 0 is written, edge-triggered and active high.
"""

from __future__ import annotations

import enum
import struct

from pyvmm.arch.x86.acpi.errors import AcpiError
from pyvmm.arch.x86.acpi.sdt import table

MADT_REVISION = 5  # ACPI 6.3+
LOCAL_APIC_ADDRESS = 0xFEE0_0000
IOAPIC_ADDRESS = 0xFEC0_0000
IOAPIC_GSI_BASE = 0
ISA_BUS = 0
TIMER_IRQ = 0
TIMER_GSI_KVM_DEFAULT = 0  # KVM's default routing: ISA IRQ 0 on IOAPIC input 0
TIMER_GSI_PC = 2  # a PC's wiring; needs GSI 0 routed to IOAPIC pin 2
LINT1 = 1  # the local APIC input NMI arrives on
ALL_PROCESSORS = 0xFF  # Local APIC NMI: applies to every processor
ALL_X2APIC_PROCESSORS = 0xFFFF_FFFF
MAX_XAPIC_ID = 0xFE  # 0xFF is the broadcast ID; higher IDs need x2APIC structures


class MadtFlags(enum.IntFlag):
    PCAT_COMPAT = 1 << 0  # dual 8259 PICs are present too (KVM's in-kernel PIC)


class Structure(enum.IntEnum):
    """Interrupt controller structure types (ACPI 6.4 §5.2.12)."""

    LOCAL_APIC = 0
    IO_APIC = 1
    INTERRUPT_SOURCE_OVERRIDE = 2
    LOCAL_APIC_NMI = 4
    LOCAL_X2APIC = 9
    LOCAL_X2APIC_NMI = 0x0A


class LocalApicFlags(enum.IntFlag):
    ENABLED = 1 << 0
    ONLINE_CAPABLE = 1 << 1  # only meaningful when ENABLED is clear


class MpsIntiFlags(enum.IntFlag):
    """Polarity (bits 0-1) and trigger mode (bits 2-3) of an interrupt (§5.2.12.5)."""

    CONFORMS = 0
    ACTIVE_HIGH = 0b01
    ACTIVE_LOW = 0b11
    EDGE = 0b01 << 2
    LEVEL = 0b11 << 2


def local_apic(uid: int, apic_id: int, flags: LocalApicFlags = LocalApicFlags.ENABLED) -> bytes:
    """Processor Local APIC structure (§5.2.12.2)."""
    return struct.pack("<BBBBI", Structure.LOCAL_APIC, 8, uid, apic_id, flags)


def local_x2apic(uid: int, apic_id: int, flags: LocalApicFlags = LocalApicFlags.ENABLED) -> bytes:
    """Processor Local x2APIC structure (§5.2.12.12)."""
    return struct.pack("<BBHIII", Structure.LOCAL_X2APIC, 16, 0, apic_id, flags, uid)


def io_apic(ioapic_id: int, address: int, gsi_base: int) -> bytes:
    """I/O APIC structure (§5.2.12.3)."""
    return struct.pack("<BBBBII", Structure.IO_APIC, 12, ioapic_id, 0, address, gsi_base)


def interrupt_source_override(source: int, gsi: int, flags: MpsIntiFlags, bus: int = ISA_BUS) -> bytes:
    """Interrupt Source Override structure (§5.2.12.5): ISA IRQ `source` is GSI `gsi`."""
    return struct.pack("<BBBBIH", Structure.INTERRUPT_SOURCE_OVERRIDE, 10, bus, source, gsi, flags)


def local_apic_nmi(uid: int, flags: MpsIntiFlags, lint: int) -> bytes:
    """Local APIC NMI structure (§5.2.12.7)."""
    return struct.pack("<BBBHB", Structure.LOCAL_APIC_NMI, 6, uid, flags, lint)


def local_x2apic_nmi(uid: int, flags: MpsIntiFlags, lint: int) -> bytes:
    """Local x2APIC NMI structure (§5.2.12.13)."""
    return struct.pack("<BBHIB3x", Structure.LOCAL_X2APIC_NMI, 12, flags, uid, lint)


def ioapic_id_for(cpus: int) -> int:
    """The IOAPIC's ID: the first ID after the CPUs' APIC IDs while one fits in 8 bits."""
    return min(cpus, MAX_XAPIC_ID)


def build_madt(cpus: int, *, timer_gsi: int = TIMER_GSI_KVM_DEFAULT) -> bytes:
    """The MADT of a guest with `cpus` vCPUs (APIC IDs and UIDs 0 .. cpus-1), all enabled."""
    if cpus < 1:
        raise AcpiError(f"an MADT needs at least one CPU, not {cpus}")
    nmi_flags = MpsIntiFlags.EDGE | MpsIntiFlags.ACTIVE_HIGH
    entries = [local_apic(cpu, cpu) if cpu <= MAX_XAPIC_ID else local_x2apic(cpu, cpu) for cpu in range(cpus)]
    entries.append(io_apic(ioapic_id_for(cpus), IOAPIC_ADDRESS, IOAPIC_GSI_BASE))
    entries.append(
        interrupt_source_override(TIMER_IRQ, timer_gsi, MpsIntiFlags.EDGE | MpsIntiFlags.ACTIVE_HIGH)
    )
    entries.append(local_apic_nmi(ALL_PROCESSORS, nmi_flags, LINT1))
    if cpus > MAX_XAPIC_ID + 1:
        entries.append(local_x2apic_nmi(ALL_X2APIC_PROCESSORS, nmi_flags, LINT1))
    header = struct.pack("<II", LOCAL_APIC_ADDRESS, MadtFlags.PCAT_COMPAT)
    return table(b"APIC", MADT_REVISION, header + b"".join(entries))
