"""The Fixed ACPI Description Table, revision 6 (ACPI 6.4 §5.2.9), for a
hardware-reduced ACPI platform (§4.1).

pyvmm has none of the PC's fixed ACPI hardware (PM1 event/control blocks, PM timer,
GPE blocks, SMI command port), so the FADT sets HW_REDUCED_ACPI and OSPM ignores
those fields. What it does describe:

- SLEEP_CONTROL_REG / SLEEP_STATUS_REG: byte registers in system I/O space; a guest
  powers off by writing the DSDT's ``\\_S5_`` SLP_TYP with SLP_EN there.
- RESET_REG / RESET_VALUE (flag RESET_REG_SUP): the reset register beside them.

Where those registers are is the platform's to say (a `PowerRegisters` from its
table, `pyvmm.platform.pc.ACPI_POWER`): this module describes them, it does not own them.
- X_DSDT (and DSDT, as the table sits below 4 GiB).
- IAPC_BOOT_ARCH: an 8042 and a CMOS RTC are present, VGA is not.
- CENTURY: the CMOS RAM index of the century byte (0x32, `pyvmm.devices.rtc_registers`); OSPM
  may ignore it on a hardware-reduced platform, but Linux reads it all the same.
- SCI_INT: OSPM ignores it on a hardware-reduced platform; it is set to the PC's SCI
  line, IRQ 9, rather than 0, because Linux treats an interrupt source override whose
  source equals SCI_INT as the SCI's, which would turn the IRQ 0 override into one.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pyvmm.arch.x86.acpi.errors import AcpiError
from pyvmm.arch.x86.acpi.sdt import HEADER_SIZE, NO_REGISTER, io_register, table

FADT_REVISION = 6
FADT_MINOR_REVISION = 4  # ACPI 6.4
FADT_SIZE = 276  # the ACPI 6.x layout, through the Hypervisor Vendor Identity
HYPERVISOR_VENDOR_ID = b"PYVMM\0\0\0"
SCI_IRQ = 9
RTC_CENTURY_INDEX = 0x32  # CMOS RAM register holding the century, as on a PC


# SLP_TYP is 3 bits wide (ACPI 6.4 §4.8.3.7, §4.8.3.2.1): the one name for it, which
# the power registers (pyvmm.devices.power) read too.
SLEEP_TYPE_MAX = 0b111


@dataclass(frozen=True)
class PowerRegisters:
    """A hardware-reduced platform's sleep and reset registers, as the FADT
    (SLEEP_CONTROL_REG, SLEEP_STATUS_REG, RESET_REG, RESET_VALUE: ACPI 6.4 §5.2.9,
    §4.8.3.6, §4.8.3.7) and the DSDT's ``\\_S5_`` (§7.4.2) announce them: one byte each
    in system I/O space."""

    sleep_control_port: int
    sleep_status_port: int
    reset_port: int | None  # None: no reset register (RESET_REG_SUP clear)
    reset_value: int  # what the guest writes to reset_port
    s5_sleep_type: int  # the SLP_TYP that powers off

    def __post_init__(self) -> None:
        ports = [self.sleep_control_port, self.sleep_status_port]
        if self.reset_port is not None:
            ports.append(self.reset_port)
        if not all(0 <= port <= 0xFFFF for port in ports):
            raise AcpiError(f"power registers at ports {[hex(p) for p in ports]}: outside 0-0xffff")
        if not 0 <= self.reset_value <= 0xFF:
            raise AcpiError(f"reset value {self.reset_value:#x} is not one byte")
        if not 0 <= self.s5_sleep_type <= SLEEP_TYPE_MAX:
            raise AcpiError(f"S5 sleep type {self.s5_sleep_type} does not fit SLP_TYP's 3 bits")


class FadtFlags(enum.IntFlag):
    """Fixed feature flags (ACPI 6.4 §5.2.9, "Flags")."""

    WBINVD = 1 << 0
    PWR_BUTTON = 1 << 4  # set: no fixed-feature power button
    SLP_BUTTON = 1 << 5  # set: no fixed-feature sleep button
    FIX_RTC = 1 << 6  # set: no RTC wake status in fixed register space
    RESET_REG_SUP = 1 << 10
    HW_REDUCED_ACPI = 1 << 20


class BootArch(enum.IntFlag):
    """IA-PC Boot Architecture Flags (ACPI 6.4 §5.2.9.3)."""

    LEGACY_DEVICES = 1 << 0  # ISA-style devices (here the 16550 UART)
    I8042 = 1 << 1  # an 8042 keyboard controller (Linux only probes one if set)
    VGA_NOT_PRESENT = 1 << 2
    MSI_NOT_SUPPORTED = 1 << 3
    PCIE_ASPM_CONTROLS = 1 << 4
    CMOS_RTC_NOT_PRESENT = 1 << 5


# pyvmm has a UART, an i8042 and a CMOS RTC (from the SMP milestone on), and no VGA.
DEFAULT_BOOT_ARCH = BootArch.LEGACY_DEVICES | BootArch.I8042 | BootArch.VGA_NOT_PRESENT

FADT_FLAGS = (
    FadtFlags.WBINVD
    | FadtFlags.PWR_BUTTON
    | FadtFlags.SLP_BUTTON
    | FadtFlags.FIX_RTC
    | FadtFlags.RESET_REG_SUP
    | FadtFlags.HW_REDUCED_ACPI
)

# Byte offsets of the fields pyvmm fills (ACPI 6.4 §5.2.9, Table "FADT Format");
# every other field is zero.
DSDT_OFFSET = 40
SCI_INT_OFFSET = 46
CENTURY_OFFSET = 108
IAPC_BOOT_ARCH_OFFSET = 109
FLAGS_OFFSET = 112
RESET_REG_OFFSET = 116
RESET_VALUE_OFFSET = 128
MINOR_VERSION_OFFSET = 131
X_DSDT_OFFSET = 140
SLEEP_CONTROL_REG_OFFSET = 244
SLEEP_STATUS_REG_OFFSET = 256
HYPERVISOR_VENDOR_ID_OFFSET = 268


def build_fadt(dsdt_address: int, power: PowerRegisters, *, boot_arch: BootArch = DEFAULT_BOOT_ARCH) -> bytes:
    """The FADT pointing at the DSDT at `dsdt_address`, announcing the sleep and reset
    registers `power` names."""
    body = bytearray(FADT_SIZE - HEADER_SIZE)

    def put(offset: int, fmt: str, *values: object) -> None:
        struct.pack_into(fmt, body, offset - HEADER_SIZE, *values)

    def put_bytes(offset: int, data: bytes) -> None:
        body[offset - HEADER_SIZE : offset - HEADER_SIZE + len(data)] = data

    reset_port = power.reset_port
    flags = FADT_FLAGS if reset_port is not None else FADT_FLAGS & ~FadtFlags.RESET_REG_SUP
    put(DSDT_OFFSET, "<I", dsdt_address if dsdt_address < 1 << 32 else 0)
    put(SCI_INT_OFFSET, "<H", SCI_IRQ)
    put(CENTURY_OFFSET, "<B", RTC_CENTURY_INDEX if BootArch.CMOS_RTC_NOT_PRESENT not in boot_arch else 0)
    put(IAPC_BOOT_ARCH_OFFSET, "<H", boot_arch)
    put(FLAGS_OFFSET, "<I", flags)
    put_bytes(RESET_REG_OFFSET, io_register(reset_port) if reset_port is not None else NO_REGISTER)
    put(RESET_VALUE_OFFSET, "<B", power.reset_value if reset_port is not None else 0)
    put(MINOR_VERSION_OFFSET, "<B", FADT_MINOR_REVISION)
    put(X_DSDT_OFFSET, "<Q", dsdt_address)
    put_bytes(SLEEP_CONTROL_REG_OFFSET, io_register(power.sleep_control_port))
    put_bytes(SLEEP_STATUS_REG_OFFSET, io_register(power.sleep_status_port))
    put_bytes(HYPERVISOR_VENDOR_ID_OFFSET, HYPERVISOR_VENDOR_ID)
    return table(b"FACP", FADT_REVISION, bytes(body))
