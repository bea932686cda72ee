"""The Differentiated System Description Table (ACPI 6.4 §5.2.11.1): the devices a
guest cannot probe for, in AML.

    \\_S5_              Package {n, 0}: SLP_TYP for the sleep control register (S5 = off;
                        n is the platform's, 5 on the PC: pyvmm.platform.pc.ACPI_POWER)
    \\_SB_.Cnnn         one processor device (ACPI0007) per vCPU, _UID n = MADT UID
    \\_SB_.<devices>    what the device manager's devices contribute, in their order;
                        for the PC platform (pyvmm.platform.pc): COM1 (PNP0501), RTC_
                        (PNP0B00), KBD_ (PNP0303, no mouse device: the i8042's auxiliary
                        port is empty), FWCF (QEMU0002), PWRR (PNP0C02, the power ports),
                        GED0 (ACPI0013) with PWRB (PNP0C0C) and VGEN (the VM generation ID)

This module knows how ACPI describes each kind of device; where each sits comes from
the platform table, the same description the buses are wired from.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyvmm.arch.x86.acpi.aml import (
    Aml,
    Device,
    EisaId,
    Method,
    Name,
    Package,
    Path,
    Return,
    Scope,
    definition_block,
)
from pyvmm.arch.x86.acpi.aml_code import (
    And,
    Field,
    FieldAccess,
    FieldUpdate,
    If,
    LEqual,
    Local,
    Notify,
    OperationRegion,
    RegionSpace,
    Store,
)
from pyvmm.arch.x86.acpi.errors import AcpiError
from pyvmm.arch.x86.acpi.resources import IO, Interrupt, IrqNoFlags, ResourceTemplate
from pyvmm.arch.x86.acpi.sdt import table

DSDT_REVISION = 2  # integers are 64 bits wide

UART_PORTS = 8  # a 16550's registers
RTC_PORTS = 2  # index, data

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


def rtc_device(port: int, irq: int) -> Device:
    """The PC's MC146818 real-time clock and CMOS RAM (PNP0B00)."""
    resources = ResourceTemplate([IO(port, port, 1, RTC_PORTS), IrqNoFlags([irq])])
    return Device("RTC", [Name("_HID", EisaId("PNP0B00")), Name("_CRS", resources)])


def keyboard_device(data_port: int, command_port: int, irq: int) -> Device:
    """The i8042 keyboard controller (PNP0303): data and status/command ports, and its IRQ."""
    resources = ResourceTemplate(
        [IO(data_port, data_port, 1, 1), IO(command_port, command_port, 1, 1), IrqNoFlags([irq])]
    )
    return Device("KBD", [Name("_HID", EisaId("PNP0303")), Name("_CRS", resources)])


def fw_cfg_device(port: int, length: int) -> Device:
    """QEMU's firmware configuration device: selector, data and DMA address ports."""
    return Device(
        "FWCF",
        [
            Name("_HID", "QEMU0002"),
            Name("_STA", STA_PRESENT_ENABLED_HIDDEN_FUNCTIONING),
            Name("_CRS", ResourceTemplate([IO(port, port, 1, length)])),
        ],
    )


def motherboard_resources(name: str, port_ranges: Sequence[tuple[int, int]], uid: int = 0) -> Device:
    """Motherboard resources (PNP0C02) claiming `port_ranges` (base, length), so the OS
    never hands them to another device; `uid` tells several such devices apart."""
    resources = ResourceTemplate([IO(base, base, 1, length) for base, length in port_ranges])
    return Device(name, [Name("_HID", EisaId("PNP0C02")), Name("_UID", uid), Name("_CRS", resources)])


GED_HID = "ACPI0013"
GED_NAME = "GED0"
GED_REGION = "EREG"
GED_SELECTOR = "ESEL"
GED_SELECTOR_BITS = 32
NOTIFY_DEVICE_SPECIFIC = 0x80  # a button's "pressed", a generation ID's "changed"


def generic_event_device(port: int, gsi: int, events: Sequence[tuple[int, str]]) -> Device:
    """A Generic Event Device (ACPI 6.4 §5.6.9): an edge-triggered interrupt on `gsi`
    and an ``_EVT`` method the OS runs when it fires (Linux: drivers/acpi/evged.c).
    ``_EVT`` reads the 32-bit event selector at I/O `port` (reading clears it) and
    sends Notify(device, 0x80) for each (bit, device path) of `events` that is set.

    The _CRS lists only the interrupt: Linux's GED driver takes every resource there
    for one and refuses the device otherwise; the port is claimed elsewhere
    (`motherboard_resources`)."""
    checks: list[Aml] = [
        If(LEqual(And(Local(0), bit), bit), [Notify(Path(device), NOTIFY_DEVICE_SPECIFIC)])
        for bit, device in events
    ]
    return Device(
        GED_NAME,
        [
            Name("_HID", GED_HID),
            Name("_UID", 0),
            Name("_CRS", ResourceTemplate([Interrupt([gsi], edge=True, active_low=False)])),
            OperationRegion(GED_REGION, RegionSpace.SYSTEM_IO, port, GED_SELECTOR_BITS // 8),
            Field(
                GED_REGION,
                [(GED_SELECTOR, GED_SELECTOR_BITS)],
                access=FieldAccess.DWORD,
                update=FieldUpdate.WRITE_AS_ZEROS,
            ),
            # Serialized: two interrupts' _EVT never interleave their reads.
            Method("_EVT", 1, [Store(Path(GED_SELECTOR), Local(0)), *checks], serialized=True),
        ],
    )


POWER_BUTTON_NAME = "PWRB"


def power_button_device() -> Device:
    """The control-method power button (PNP0C0C, ACPI 6.4 §4.8.2.2.1.2): pressed is
    Notify(PWRB, 0x80), sent by the Generic Event Device's _EVT."""
    return Device(POWER_BUTTON_NAME, [Name("_HID", EisaId("PNP0C0C")), Name("_UID", 0)])


GENERATION_ID_NAME = "VGEN"
# Linux's vmgenid driver (drivers/virt/vmgenid.c, 6.1) matches the IDs VMGENCTR and
# VM_GEN_COUNTER, case-sensitively, against the _HID and every _CID; Microsoft's
# specification names the device by the _CID "VM_Gen_Counter" (Windows). Both
# spellings are _CIDs. The _HID must be a well-formed ACPI ID (iasl refuses
# "VMGENCTR" and QEMU's "QEMUVGID": the last four are not hex digits): pyvmm's own.
GENERATION_ID_HID = "PYVM0001"
GENERATION_ID_CIDS = ("VM_GEN_COUNTER", "VM_Gen_Counter")


def generation_id_device(address: int) -> Device:
    """The VM generation ID device (Microsoft, "Virtual Machine Generation ID", 2012;
    QEMU docs/specs/vmgenid.txt): ``ADDR`` returns Package {low, high}, the guest
    physical address of the 16-byte ID; Notify(VGEN, 0x80) says it changed."""
    if not 0 < address < 1 << 64 or address % 8:
        raise AcpiError(f"VM generation ID address {address:#x} is not an 8-byte aligned address")
    words = [address & 0xFFFF_FFFF, address >> 32]
    return Device(
        GENERATION_ID_NAME,
        [
            Name("_HID", GENERATION_ID_HID),
            Name("_CID", Package(GENERATION_ID_CIDS)),
            Name("_DDN", GENERATION_ID_CIDS[1]),
            Method("ADDR", 0, [Return(Package(words))]),
        ],
    )


def build_dsdt(cpus: int, devices: Sequence[Aml], *, s5_sleep_type: int) -> bytes:
    """The DSDT: ``\\_S5_`` (`s5_sleep_type`, as the FADT's sleep control register takes
    it), then the processors and `devices` in ``\\_SB_``."""
    processors: list[Aml] = [processor_device(uid) for uid in range(cpus)]
    terms = [
        Name("_S5_", Package([s5_sleep_type, 0])),
        Scope("\\_SB_", [*processors, *devices]),
    ]
    return table(b"DSDT", DSDT_REVISION, definition_block(terms))
