"""The Fixed ACPI Description Table, revision 6 (ACPI 6.4 §5.2.9), for a
hardware-reduced ACPI platform (§4.1).

pyvmm has none of the PC's fixed ACPI hardware (PM1 event/control blocks, PM timer,
GPE blocks, SMI command port), so the FADT sets HW_REDUCED_ACPI and OSPM ignores
those fields. What it does describe:

- SLEEP_CONTROL_REG / SLEEP_STATUS_REG: byte registers in system I/O space
  (`pyvmm.devices.power.SleepControl`); a guest powers off by writing
  SLP_TYP = 5 (``\\_S5_``) with SLP_EN there.
- RESET_REG / RESET_VALUE (flag RESET_REG_SUP): the reset register of the same device.
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

from pyvmm.arch.x86.acpi.sdt import HEADER_SIZE, NO_REGISTER, io_register, table
from pyvmm.devices.power import RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT

FADT_REVISION = 6
FADT_MINOR_REVISION = 4  # ACPI 6.4
FADT_SIZE = 276  # the ACPI 6.x layout, through the Hypervisor Vendor Identity
HYPERVISOR_VENDOR_ID = b"PYVMM\0\0\0"
SCI_IRQ = 9
RTC_CENTURY_INDEX = 0x32  # CMOS RAM register holding the century, as on a PC


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


def build_fadt(
    dsdt_address: int,
    *,
    boot_arch: BootArch = DEFAULT_BOOT_ARCH,
    sleep_control_port: int = SLEEP_CONTROL_PORT,
    sleep_status_port: int = SLEEP_STATUS_PORT,
    reset_port: int | None = RESET_PORT,
    reset_value: int = RESET_VALUE,
) -> bytes:
    """The FADT pointing at the DSDT at `dsdt_address`. `reset_port=None` advertises
    no reset register."""
    body = bytearray(FADT_SIZE - HEADER_SIZE)

    def put(offset: int, fmt: str, *values: object) -> None:
        struct.pack_into(fmt, body, offset - HEADER_SIZE, *values)

    def put_bytes(offset: int, data: bytes) -> None:
        body[offset - HEADER_SIZE : offset - HEADER_SIZE + len(data)] = data

    flags = FADT_FLAGS if reset_port is not None else FADT_FLAGS & ~FadtFlags.RESET_REG_SUP
    put(DSDT_OFFSET, "<I", dsdt_address if dsdt_address < 1 << 32 else 0)
    put(SCI_INT_OFFSET, "<H", SCI_IRQ)
    put(CENTURY_OFFSET, "<B", RTC_CENTURY_INDEX if BootArch.CMOS_RTC_NOT_PRESENT not in boot_arch else 0)
    put(IAPC_BOOT_ARCH_OFFSET, "<H", boot_arch)
    put(FLAGS_OFFSET, "<I", flags)
    put_bytes(RESET_REG_OFFSET, io_register(reset_port) if reset_port is not None else NO_REGISTER)
    put(RESET_VALUE_OFFSET, "<B", reset_value if reset_port is not None else 0)
    put(MINOR_VERSION_OFFSET, "<B", FADT_MINOR_REVISION)
    put(X_DSDT_OFFSET, "<Q", dsdt_address)
    put_bytes(SLEEP_CONTROL_REG_OFFSET, io_register(sleep_control_port))
    put_bytes(SLEEP_STATUS_REG_OFFSET, io_register(sleep_status_port))
    put_bytes(HYPERVISOR_VENDOR_ID_OFFSET, HYPERVISOR_VENDOR_ID)
    return table(b"FACP", FADT_REVISION, bytes(body))
