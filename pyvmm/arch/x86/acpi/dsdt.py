"""The Differentiated System Description Table (ACPI 6.4 §5.2.11.1): the devices a
guest cannot probe for, in AML.

    \\_S5_              Package {5, 0}: SLP_TYP for the sleep control register (S5 = off)
    \\_SB_.Cnnn         one processor device (ACPI0007) per vCPU, _UID n = MADT UID
    \\_SB_.COM1         16550 UART (PNP0501): I/O 0x3F8-0x3FF, IRQ 4
    \\_SB_.RTC_         CMOS RTC (PNP0B00): I/O 0x70-0x71, IRQ 8
    \\_SB_.KBD_         i8042 keyboard controller (PNP0303): I/O 0x60 and 0x64, IRQ 1;
                        no mouse (PNP0F13) device: the i8042's auxiliary port is empty
    \\_SB_.FWCF         QEMU fw_cfg (QEMU0002): I/O 0x510-0x51B, as QEMU describes it
    \\_SB_.PWRR         motherboard resources (PNP0C02): the power control ports, so the
                        OS never hands them to another device
    \\_SB_.<extra>      whatever AML devices the machine adds (virtio-mmio, ...)
"""

from __future__ import annotations

from collections.abc import Sequence

from pyvmm.arch.x86.acpi.aml import Aml, Device, EisaId, Name, Package, Scope, definition_block
from pyvmm.arch.x86.acpi.errors import AcpiError
from pyvmm.arch.x86.acpi.resources import IO, IrqNoFlags, ResourceTemplate
from pyvmm.arch.x86.acpi.sdt import table
from pyvmm.devices.fw_cfg import FW_CFG_LENGTH, FW_CFG_PORT
from pyvmm.devices.i8042 import I8042_COMMAND_PORT, I8042_DATA_PORT, KEYBOARD_IRQ
from pyvmm.devices.power import (
    PM1A_CNT_LENGTH,
    PM1A_CNT_PORT,
    S5_SLEEP_TYPE,
    SLEEP_PORTS_BASE,
    SLEEP_PORTS_LENGTH,
)
from pyvmm.devices.rtc import RTC_IRQ, RTC_PORT, RTC_PORT_LENGTH
from pyvmm.devices.serial import COM1_IRQ, COM1_PORT, SERIAL_PORT_LENGTH

DSDT_REVISION = 2  # integers are 64 bits wide

# The PC's fixed ISA resources of the legacy devices come from the device modules,
# where the machine takes them too.
UART_PORTS = SERIAL_PORT_LENGTH
RTC_PORTS = RTC_PORT_LENGTH  # index, data

PROCESSOR_HID = "ACPI0007"
MAX_PROCESSOR_DEVICES = 0x1000  # device names C000 to CFFF
STA_PRESENT_ENABLED_HIDDEN_FUNCTIONING = 0x0B  # _STA bits 0, 1, 3: present, enabled, not shown in UI, working


def processor_device(uid: int) -> Device:
    """A processor device for the vCPU whose MADT ACPI Processor UID is `uid`."""
    if not 0 <= uid < MAX_PROCESSOR_DEVICES:
        raise AcpiError(f"processor UID {uid} has no device name (at most {MAX_PROCESSOR_DEVICES} CPUs)")
    return Device(f"C{uid:03X}", [Name("_HID", PROCESSOR_HID), Name("_UID", uid)])


def serial_device(name: str, uid: int, port: int, irq: int) -> Device:
    """A 16550-compatible UART (PNP0501) at `port` on ISA IRQ `irq`."""
    resources = ResourceTemplate([IO(port, port, 1, UART_PORTS), IrqNoFlags([irq])])
    return Device(name, [Name("_HID", EisaId("PNP0501")), Name("_UID", uid), Name("_CRS", resources)])


def rtc_device(port: int = RTC_PORT, irq: int = RTC_IRQ) -> Device:
    """The PC's MC146818 real-time clock and CMOS RAM (PNP0B00)."""
    resources = ResourceTemplate([IO(port, port, 1, RTC_PORTS), IrqNoFlags([irq])])
    return Device("RTC", [Name("_HID", EisaId("PNP0B00")), Name("_CRS", resources)])


def keyboard_device() -> Device:
    """The i8042 keyboard controller (PNP0303): data and status/command ports, IRQ 1."""
    resources = ResourceTemplate(
        [
            IO(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1),
            IO(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1),
            IrqNoFlags([KEYBOARD_IRQ]),
        ]
    )
    return Device("KBD", [Name("_HID", EisaId("PNP0303")), Name("_CRS", resources)])


def fw_cfg_device(port: int = FW_CFG_PORT, length: int = FW_CFG_LENGTH) -> Device:
    """QEMU's firmware configuration device: selector, data and DMA address ports."""
    return Device(
        "FWCF",
        [
            Name("_HID", "QEMU0002"),
            Name("_STA", STA_PRESENT_ENABLED_HIDDEN_FUNCTIONING),
            Name("_CRS", ResourceTemplate([IO(port, port, 1, length)])),
        ],
    )


def power_ports_device() -> Device:
    """Motherboard resources (PNP0C02) claiming the sleep/reset and PM1a control ports."""
    resources = ResourceTemplate(
        [
            IO(SLEEP_PORTS_BASE, SLEEP_PORTS_BASE, 1, SLEEP_PORTS_LENGTH),
            IO(PM1A_CNT_PORT, PM1A_CNT_PORT, 1, PM1A_CNT_LENGTH),
        ]
    )
    return Device("PWRR", [Name("_HID", EisaId("PNP0C02")), Name("_UID", 0), Name("_CRS", resources)])


def platform_devices() -> list[Aml]:
    """The devices every pyvmm guest has (docs/boot.md) that ACPI can describe."""
    return [
        serial_device("COM1", 1, COM1_PORT, COM1_IRQ),
        rtc_device(),
        keyboard_device(),
        fw_cfg_device(),
        power_ports_device(),
    ]


def build_dsdt(cpus: int, devices: Sequence[Aml]) -> bytes:
    """The DSDT: ``\\_S5_``, then the processors and `devices` in ``\\_SB_``."""
    processors: list[Aml] = [processor_device(uid) for uid in range(cpus)]
    terms = [
        Name("_S5_", Package([S5_SLEEP_TYPE, 0])),
        Scope("\\_SB_", [*processors, *devices]),
    ]
    return table(b"DSDT", DSDT_REVISION, definition_block(terms))
