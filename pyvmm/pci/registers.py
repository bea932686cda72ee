"""Register offsets and bits of a type-0 configuration space header (PCI Local Bus
Specification 3.0 §6.1, "Configuration Space Organization", and §6.2, "Configuration
Space Functions"), named once here for every module of `pyvmm.pci`."""

from __future__ import annotations

import enum

CONFIG_SPACE_SIZE = 0x100  # conventional PCI: what mechanism #1 reaches
EXTENDED_CONFIG_SPACE_SIZE = 0x1000  # PCI Express: what ECAM reaches (PCIe base §7.2.2)

VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG_IF = 0x09
CLASS_SUBCLASS = 0x0A
CLASS_BASE = 0x0B
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BIST = 0x0F
BAR0 = 0x10
BAR_COUNT = 6  # type-0 header: 0x10-0x27
BAR_END = BAR0 + 4 * BAR_COUNT
CARDBUS_CIS = 0x28
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
EXPANSION_ROM = 0x30
CAPABILITIES_POINTER = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
MIN_GNT = 0x3E
MAX_LAT = 0x3F
HEADER_END = 0x40  # device-specific registers (and capabilities) start here

NO_VENDOR = 0xFFFF  # what a read of an absent function's Vendor ID returns (§6.2.1)
HEADER_TYPE_MULTI_FUNCTION = 0x80  # bit 7 of Header Type: function 0 of a multi-function device


class Command(enum.IntEnum):
    """Command register bits (§6.2.2). Plain IntEnum: IntFlag arithmetic is slow."""

    IO_SPACE = 1 << 0
    MEMORY_SPACE = 1 << 1
    BUS_MASTER = 1 << 2
    PARITY_ERROR_RESPONSE = 1 << 6
    SERR_ENABLE = 1 << 8
    INTX_DISABLE = 1 << 10


# What a guest may set in the Command register; the rest (special cycles, MWI, VGA
# snoop, fast back-to-back) is hardwired to 0, as on a PCI Express function.
COMMAND_WRITABLE = (
    Command.IO_SPACE
    | Command.MEMORY_SPACE
    | Command.BUS_MASTER
    | Command.PARITY_ERROR_RESPONSE
    | Command.SERR_ENABLE
    | Command.INTX_DISABLE
)


class Status(enum.IntEnum):
    """Status register bits (§6.2.3)."""

    INTERRUPT = 1 << 3  # read-only: the function's INTx is asserted
    CAPABILITIES_LIST = 1 << 4  # read-only: 0x34 points at a capability list
    MASTER_DATA_PARITY_ERROR = 1 << 8
    SIGNALED_TARGET_ABORT = 1 << 11
    RECEIVED_TARGET_ABORT = 1 << 12
    RECEIVED_MASTER_ABORT = 1 << 13
    SIGNALED_SYSTEM_ERROR = 1 << 14
    DETECTED_PARITY_ERROR = 1 << 15


# Error bits are "write 1 to clear" (RW1C): software clears one by writing 1 to it.
STATUS_W1C = (
    Status.MASTER_DATA_PARITY_ERROR
    | Status.SIGNALED_TARGET_ABORT
    | Status.RECEIVED_TARGET_ABORT
    | Status.RECEIVED_MASTER_ABORT
    | Status.SIGNALED_SYSTEM_ERROR
    | Status.DETECTED_PARITY_ERROR
)


class InterruptPin(enum.IntEnum):
    """Interrupt Pin register values (§6.2.4): which INTx# a function uses."""

    NONE = 0
    INTA = 1
    INTB = 2
    INTC = 3
    INTD = 4


class BarFlags(enum.IntEnum):
    """The read-only low bits of a Base Address Register (§6.2.5.1)."""

    IO_SPACE = 1 << 0  # bit 0: 1 = I/O BAR, 0 = memory BAR
    MEMORY_TYPE_64 = 0b10 << 1  # bits 2:1 of a memory BAR: 00 = 32-bit, 10 = 64-bit
    PREFETCHABLE = 1 << 3


BAR_MEMORY_ADDRESS_MASK = 0xFFFF_FFF0  # bits 31:4 of a memory BAR hold the address
BAR_IO_ADDRESS_MASK = 0xFFFC  # bits 15:2; 31:16 hardwired to 0 (allowed by §6.2.5.1 for x86's 64 KiB ports)
