"""Resource descriptors (ACPI 6.4 §6.4), byte for byte. The expected bytes are what
iasl 20200925 compiles from the ASL in each comment (`iasl -oa`)."""

from __future__ import annotations

import pytest

from pyvmm.arch.x86.acpi import AcpiError
from pyvmm.arch.x86.acpi.resources import (
    IO,
    Cacheability,
    Descriptor,
    DWordMemory,
    FixedIO,
    Interrupt,
    Irq,
    IrqNoFlags,
    Memory32Fixed,
    QWordMemory,
    ResourceTemplate,
    WordBusNumber,
    WordIO,
    end_tag,
)


@pytest.mark.parametrize(
    ("descriptor", "encoded"),
    [
        # IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
        (IO(0x3F8, 0x3F8, 1, 8), "4701f803f8030108"),
        # IO (Decode10, 0x0060, 0x0060, 0x00, 0x01)
        (IO(0x60, 0x60, 0, 1, decode16=False), "4700600060000001"),
        # FixedIO (0x0060, 0x01)
        (FixedIO(0x60, 1), "4b600001"),
        # IRQNoFlags () {4}
        (IrqNoFlags([4]), "221000"),
        # IRQNoFlags () {3, 4}
        (IrqNoFlags([3, 4]), "221800"),
        # IRQ (Level, ActiveLow, Shared) {10, 11}
        (Irq([10, 11], edge=False, active_low=True, shared=True), "23000c18"),
        # IRQ (Edge, ActiveHigh, Exclusive) {1}
        (Irq([1], edge=True, active_low=False), "23020001"),
        # Memory32Fixed (ReadWrite, 0xD0000000, 0x00000200)
        (Memory32Fixed(0xD000_0000, 0x200), "86090001000000d000020000"),
        # Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {5, 6}
        (Interrupt([5, 6], edge=True, active_low=False), "890a0003020500000006000000"),
        # Interrupt (ResourceConsumer, Level, ActiveLow, Shared) {32}
        (Interrupt([32], edge=False, active_low=True, shared=True), "8906000d0120000000"),
        # WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,
        #                0x0000, 0x0000, 0x00FF, 0x0000, 0x0100)
        (WordBusNumber(0, 0x100, producer=True), "880d00020c0000000000ff0000000001"),
        # WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
        #         0x0000, 0x0D00, 0xFFFF, 0x0000, 0xF300)
        (WordIO(0xD00, 0xF300, producer=True), "880d00010c030000000dffff000000f3"),
        # DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable,
        #              ReadWrite, 0x0, 0xC0000000, 0xFEBFFFFF, 0x0, 0x3EC00000)
        (
            DWordMemory(0xC000_0000, 0x3EC0_0000, producer=True),
            "871700000c0100000000000000c0ffffbffe000000000000c03e",
        ),
        # QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable,
        #              ReadWrite, 0x0, 0x8000000000, 0xFFFFFFFFFF, 0x0, 0x8000000000)
        (
            QWordMemory(
                0x80_0000_0000, 0x80_0000_0000, producer=True, cacheability=Cacheability.PREFETCHABLE
            ),
            "8a2b00000c0700000000000000000000000080000000ffffffffff00000000000000000000000000000080000000",
        ),
    ],
)
def test_descriptor_bytes(descriptor: Descriptor, encoded: str) -> None:
    assert descriptor.encode().hex() == encoded


def test_consumer_is_the_default_for_address_spaces() -> None:
    # DWordMemory (ResourceConsumer, ...): general flags bit 0 set.
    assert DWordMemory(0x1000, 0x1000).encode()[4] == 0x0D


def test_memory_read_only_and_cacheable_flags() -> None:
    flags = DWordMemory(0x1000, 0x1000, writeable=False, cacheability=Cacheability.CACHEABLE).encode()[5]
    assert flags == 0b010


def test_end_tag_checksum_makes_the_template_sum_to_zero() -> None:
    template = ResourceTemplate([IO(0x3F8, 0x3F8, 1, 8), IrqNoFlags([4])])
    content = template.content()
    assert content[-2] == 0x79
    assert sum(content) % 256 == 0
    assert content[-1] != 0


def test_end_tag_without_checksum_is_what_iasl_writes() -> None:
    assert end_tag(b"\x22\x10\x00", checksum=False) == b"\x79\x00"
    template = ResourceTemplate([IO(0x3F8, 0x3F8, 1, 8), IrqNoFlags([4])], checksum=False)
    # Buffer (0x0D) { IO ..., IRQNoFlags ..., EndTag }
    assert template.encode().hex() == "11100a0d4701f803f80301082210007900"


def test_empty_template_is_just_the_end_tag() -> None:
    assert ResourceTemplate([]).content() == bytes((0x79, -0x79 & 0xFF))


@pytest.mark.parametrize(
    "descriptor",
    [
        IrqNoFlags([16]),
        Irq([-1], edge=True, active_low=False),
        FixedIO(0x400, 1),
        IO(0x10000, 0x10000, 1, 1),
        IO(0x60, 0x60, 1, 256),
        Memory32Fixed(1 << 32, 1),
        WordIO(0xFFFF, 2),  # ends past 0xFFFF
        DWordMemory(0x1000, 0),
        Interrupt([], edge=True, active_low=False),
        Interrupt([1 << 32], edge=True, active_low=False),
    ],
)
def test_values_that_do_not_fit_are_rejected(descriptor: Descriptor) -> None:
    with pytest.raises(AcpiError):
        descriptor.encode()
