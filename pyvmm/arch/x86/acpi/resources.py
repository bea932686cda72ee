"""Resource descriptors for _CRS (ACPI 6.4 §6.4, "Resource Data Types for ACPI") and
`ResourceTemplate`, the Buffer that holds them followed by an End Tag.

Small descriptors (§6.4.2) start with one tag byte: bit 7 clear, the item name in
bits 3-6, the body length in bits 0-2. Large descriptors (§6.4.3) start with
0x80 | item name and a 16-bit body length. Each class below is named after its ASL
macro and takes the same values in the same order, so a reader can compare them with
the ASL they would write.
"""

from __future__ import annotations

import enum
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar

from pyvmm.arch.x86.acpi.aml import Aml, Buffer
from pyvmm.arch.x86.acpi.errors import AcpiError


class SmallItem(enum.IntEnum):
    """Small resource item names (ACPI 6.4 §6.4.2)."""

    IRQ = 0x04
    IO = 0x08
    FIXED_IO = 0x09
    END_TAG = 0x0F


class LargeItem(enum.IntEnum):
    """Large resource item names (ACPI 6.4 §6.4.3)."""

    MEMORY32_FIXED = 0x06
    DWORD_ADDRESS = 0x07
    WORD_ADDRESS = 0x08
    EXTENDED_IRQ = 0x09
    QWORD_ADDRESS = 0x0A


class AddressType(enum.IntEnum):
    """Address space descriptor resource type (_RT)."""

    MEMORY = 0
    IO = 1
    BUS_NUMBER = 2


class Cacheability(enum.IntEnum):
    """Memory type-specific flags bits 1-2 (_MEM)."""

    NON_CACHEABLE = 0
    CACHEABLE = 1
    WRITE_COMBINING = 2
    PREFETCHABLE = 3


# Address space general flags (§6.4.3.5).
_CONSUMER = 1 << 0  # clear: the device produces the range (a bridge window)
_MIN_FIXED = 1 << 2
_MAX_FIXED = 1 << 3
_IO_ENTIRE_RANGE = 0b11  # I/O type-specific flags: _RNG covers ISA and non-ISA ports

# IRQ / extended interrupt flag bits.
_IRQ_EDGE = 1 << 0
_IRQ_ACTIVE_LOW = 1 << 3
_IRQ_SHARED = 1 << 4
_IRQ_WAKE = 1 << 5
_EXT_CONSUMER = 1 << 0
_EXT_EDGE = 1 << 1
_EXT_ACTIVE_LOW = 1 << 2
_EXT_SHARED = 1 << 3
_EXT_WAKE = 1 << 4

_MAX_ISA_IRQ = 15
_MAX_FIXED_IO = 0x3FF  # Fixed I/O decodes 10 address bits


def _small(item: SmallItem, body: bytes) -> bytes:
    return bytes((item << 3 | len(body),)) + body


def _large(item: LargeItem, body: bytes) -> bytes:
    return struct.pack("<BH", 0x80 | item, len(body)) + body


def _check(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise AcpiError(f"{what} {value:#x} does not fit in {bits} bits")
    return value


class Descriptor(ABC):
    """One resource descriptor inside a ResourceTemplate."""

    @abstractmethod
    def encode(self) -> bytes: ...


@dataclass(frozen=True)
class IO(Descriptor):
    """IO(Decode16|Decode10, minimum, maximum, alignment, length) — §6.4.2.5."""

    minimum: int
    maximum: int
    alignment: int
    length: int
    decode16: bool = True

    def encode(self) -> bytes:
        body = struct.pack(
            "<BHHBB",
            1 if self.decode16 else 0,
            _check(self.minimum, 16, "I/O minimum"),
            _check(self.maximum, 16, "I/O maximum"),
            _check(self.alignment, 8, "I/O alignment"),
            _check(self.length, 8, "I/O length"),
        )
        return _small(SmallItem.IO, body)


@dataclass(frozen=True)
class FixedIO(Descriptor):
    """FixedIO(base, length) — §6.4.2.6, for ISA devices decoding 10 address bits."""

    base: int
    length: int

    def encode(self) -> bytes:
        if self.base > _MAX_FIXED_IO:
            raise AcpiError(f"fixed I/O base {self.base:#x} is above {_MAX_FIXED_IO:#x}")
        body = struct.pack("<HB", _check(self.base, 16, "I/O base"), _check(self.length, 8, "I/O length"))
        return _small(SmallItem.FIXED_IO, body)


def _irq_mask(irqs: Sequence[int]) -> int:
    mask = 0
    for irq in irqs:
        if not 0 <= irq <= _MAX_ISA_IRQ:
            raise AcpiError(f"IRQ {irq} is not an ISA IRQ (0-15); use Interrupt for a GSI")
        mask |= 1 << irq
    return mask


@dataclass(frozen=True)
class IrqNoFlags(Descriptor):
    """IRQNoFlags() {irqs} — §6.4.2.1, the 2-byte form: edge-triggered, active high,
    exclusive."""

    irqs: Sequence[int]

    def encode(self) -> bytes:
        return _small(SmallItem.IRQ, struct.pack("<H", _irq_mask(self.irqs)))


@dataclass(frozen=True)
class Irq(Descriptor):
    """IRQ(Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared) {irqs} — §6.4.2.1, with
    the information byte."""

    irqs: Sequence[int]
    _: KW_ONLY
    edge: bool
    active_low: bool
    shared: bool = False
    wake: bool = False

    def encode(self) -> bytes:
        info = (
            (_IRQ_EDGE if self.edge else 0)
            | (_IRQ_ACTIVE_LOW if self.active_low else 0)
            | (_IRQ_SHARED if self.shared else 0)
            | (_IRQ_WAKE if self.wake else 0)
        )
        return _small(SmallItem.IRQ, struct.pack("<HB", _irq_mask(self.irqs), info))


@dataclass(frozen=True)
class Memory32Fixed(Descriptor):
    """Memory32Fixed(ReadWrite|ReadOnly, base, length) — §6.4.3.4."""

    base: int
    length: int
    writeable: bool = True

    def encode(self) -> bytes:
        body = struct.pack(
            "<BII",
            1 if self.writeable else 0,
            _check(self.base, 32, "memory base"),
            _check(self.length, 32, "memory length"),
        )
        return _large(LargeItem.MEMORY32_FIXED, body)


@dataclass(frozen=True)
class _AddressSpace(Descriptor):
    """An address space descriptor (§6.4.3.5) for a fixed-size, fixed-location range:
    _MIF and _MAF set, granularity 0, maximum = minimum + length - 1 (the combination
    §6.4.3.5 allows for that). `producer` marks a bridge's window
    (ASL ResourceProducer); the default is ResourceConsumer."""

    minimum: int
    length: int
    _: KW_ONLY
    translation: int = 0
    producer: bool = False

    item: ClassVar[LargeItem]
    width: ClassVar[int]  # bytes per address field
    address_type: ClassVar[AddressType]

    def type_flags(self) -> int:
        return 0

    def encode(self) -> bytes:
        bits = 8 * self.width
        if self.length < 1:
            raise AcpiError("an address space descriptor needs a length of at least 1")
        maximum = _check(self.minimum + self.length - 1, bits, "range end")
        flags = _MIN_FIXED | _MAX_FIXED | (0 if self.producer else _CONSUMER)
        fields = (0, self.minimum, maximum, _check(self.translation, bits, "translation"), self.length)
        body = struct.pack("<BBB", self.address_type, flags, self.type_flags()) + b"".join(
            _check(field, bits, "address field").to_bytes(self.width, "little") for field in fields
        )
        return _large(self.item, body)


@dataclass(frozen=True)
class _MemorySpace(_AddressSpace):
    _: KW_ONLY
    cacheability: Cacheability = Cacheability.NON_CACHEABLE
    writeable: bool = True

    address_type = AddressType.MEMORY

    def type_flags(self) -> int:
        # Bit 0 _RW, bits 1-2 _MEM; _MTP (bits 3-4) 0 = AddressRangeMemory, _TTP 0.
        return (1 if self.writeable else 0) | self.cacheability << 1


@dataclass(frozen=True)
class QWordMemory(_MemorySpace):
    """QWordMemory(...) — §6.4.3.5.1, e.g. a PCI host bridge's 64-bit window."""

    item = LargeItem.QWORD_ADDRESS
    width = 8


@dataclass(frozen=True)
class DWordMemory(_MemorySpace):
    """DWordMemory(...) — §6.4.3.5.2, e.g. a PCI host bridge's 32-bit window."""

    item = LargeItem.DWORD_ADDRESS
    width = 4


@dataclass(frozen=True)
class WordBusNumber(_AddressSpace):
    """WordBusNumber(...) — §6.4.3.5.3, the bus numbers behind a host bridge."""

    item = LargeItem.WORD_ADDRESS
    width = 2
    address_type = AddressType.BUS_NUMBER


@dataclass(frozen=True)
class WordIO(_AddressSpace):
    """WordIO(..., EntireRange) — §6.4.3.5.3, an I/O port window."""

    item = LargeItem.WORD_ADDRESS
    width = 2
    address_type = AddressType.IO

    def type_flags(self) -> int:
        return _IO_ENTIRE_RANGE


@dataclass(frozen=True)
class Interrupt(Descriptor):
    """Interrupt(ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared)
    {gsis} — the Extended Interrupt Descriptor, §6.4.3.6: 32-bit GSIs, e.g. for
    virtio-mmio devices."""

    gsis: Sequence[int]
    _: KW_ONLY
    edge: bool
    active_low: bool
    shared: bool = False
    wake: bool = False
    consumer: bool = True

    def encode(self) -> bytes:
        if not 1 <= len(self.gsis) <= 0xFF:
            raise AcpiError("an Interrupt descriptor lists 1 to 255 interrupts")
        flags = (
            (_EXT_CONSUMER if self.consumer else 0)
            | (_EXT_EDGE if self.edge else 0)
            | (_EXT_ACTIVE_LOW if self.active_low else 0)
            | (_EXT_SHARED if self.shared else 0)
            | (_EXT_WAKE if self.wake else 0)
        )
        gsis = b"".join(struct.pack("<I", _check(gsi, 32, "interrupt number")) for gsi in self.gsis)
        return _large(LargeItem.EXTENDED_IRQ, bytes((flags, len(self.gsis))) + gsis)


def end_tag(preceding: bytes, *, checksum: bool = True) -> bytes:
    """The End Tag (§6.4.2.9) after `preceding` descriptors. Its checksum byte makes
    every byte of the template, itself included, sum to zero; 0 means "no checksum",
    which is what iasl writes and what `checksum=False` gives."""
    tag = bytes((SmallItem.END_TAG << 3 | 1,))
    value = -sum(preceding + tag) & 0xFF if checksum else 0
    return tag + bytes((value,))


@dataclass(frozen=True)
class ResourceTemplate(Aml):
    """ResourceTemplate() { descriptors }: a Buffer of descriptors and an End Tag."""

    descriptors: Sequence[Descriptor]
    checksum: bool = True

    def content(self) -> bytes:
        """The descriptor bytes, End Tag included (the Buffer's contents)."""
        body = b"".join(descriptor.encode() for descriptor in self.descriptors)
        return body + end_tag(body, checksum=self.checksum)

    def encode(self) -> bytes:
        return Buffer(self.content()).encode()
