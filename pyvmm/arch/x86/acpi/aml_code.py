"""AML that runs: what a control method's body is made of, and the operation regions
and fields a method reads device registers through (ACPI 6.4 §19.6, the ASL
operators; §20.2.5, their encodings).

Only what pyvmm's DSDT uses: `Local`/`Arg` variables, `Store`, `And`, `LEqual`,
`If`, `Notify`, `OperationRegion` and `Field`. For example, a Generic Event Device's
``_EVT`` (ACPI 6.4 §5.6.9.3):

    Method("_EVT", 1, [
        Store(Path("ESEL"), Local(0)),
        If(LEqual(And(Local(0), 1), 1), [Notify(Path("\\\\_SB.PWRB"), 0x80)]),
    ], serialized=True)

The objects of `aml.py` (Name, Device, Method, ...) and these mix freely: each is an
`Aml` whose `encode()` gives its bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from pyvmm.arch.x86.acpi.aml import (
    Aml,
    DataLike,
    Op,
    data,
    definition_block,
    encode_pkg_length,
    name_seg,
    name_string,
    package_bytes,
)
from pyvmm.arch.x86.acpi.errors import AcpiError


class CodeOp(enum.IntEnum):
    """Opcodes of statements and expressions (ACPI 6.4 §20.3)."""

    LOCAL0 = 0x60
    ARG0 = 0x68
    STORE = 0x70
    AND = 0x7B
    NOTIFY = 0x86
    LEQUAL = 0x93
    IF = 0xA0


class ExtOp(enum.IntEnum):
    """Second bytes after ExtOpPrefix (0x5B) (ACPI 6.4 §20.3)."""

    OP_REGION = 0x80
    FIELD = 0x81


class RegionSpace(enum.IntEnum):
    """OperationRegion address spaces (ACPI 6.4 §19.6.100, RegionSpaceKeyword)."""

    SYSTEM_MEMORY = 0x00
    SYSTEM_IO = 0x01


class FieldAccess(enum.IntEnum):
    """FieldFlags bits 0-3, AccessType (ACPI 6.4 §20.2.5.2)."""

    ANY = 0
    BYTE = 1
    WORD = 2
    DWORD = 3
    QWORD = 4


class FieldUpdate(enum.IntEnum):
    """FieldFlags bits 5-6, UpdateRule: what a write does with the rest of the access."""

    PRESERVE = 0
    WRITE_AS_ONES = 1
    WRITE_AS_ZEROS = 2


FIELD_LOCK = 1 << 4  # FieldFlags bit 4, LockRule: Lock
FIELD_UPDATE_SHIFT = 5
LOCALS = 8  # Local0-Local7
ARGS = 7  # Arg0-Arg6
NULL_TARGET = bytes((0x00,))  # NullName: the result is not stored


@dataclass(frozen=True)
class Local(Aml):
    """LocalN, a method's local variable (N = 0-7)."""

    index: int

    def encode(self) -> bytes:
        if not 0 <= self.index < LOCALS:
            raise AcpiError(f"there is no Local{self.index} (Local0-Local{LOCALS - 1})")
        return bytes((CodeOp.LOCAL0 + self.index,))


@dataclass(frozen=True)
class Arg(Aml):
    """ArgN, a method's argument (N = 0-6)."""

    index: int

    def encode(self) -> bytes:
        if not 0 <= self.index < ARGS:
            raise AcpiError(f"there is no Arg{self.index} (Arg0-Arg{ARGS - 1})")
        return bytes((CodeOp.ARG0 + self.index,))


@dataclass(frozen=True)
class Store(Aml):
    """Store(source, target): ``target = source``. `target` is a SuperName (a
    `Local`, an `Arg` or a `Path` to a named object or field)."""

    source: DataLike
    target: Aml

    def encode(self) -> bytes:
        return bytes((CodeOp.STORE,)) + data(self.source).encode() + self.target.encode()


@dataclass(frozen=True)
class And(Aml):
    """And(left, right): the bitwise AND of two integers, not stored anywhere."""

    left: DataLike
    right: DataLike

    def encode(self) -> bytes:
        return bytes((CodeOp.AND,)) + data(self.left).encode() + data(self.right).encode() + NULL_TARGET


@dataclass(frozen=True)
class LEqual(Aml):
    """LEqual(left, right): ``left == right``, true (Ones) or false (Zero)."""

    left: DataLike
    right: DataLike

    def encode(self) -> bytes:
        return bytes((CodeOp.LEQUAL,)) + data(self.left).encode() + data(self.right).encode()


@dataclass(frozen=True)
class If(Aml):
    """If(predicate) { terms }."""

    predicate: Aml
    terms: Sequence[Aml]

    def encode(self) -> bytes:
        return bytes((CodeOp.IF,)) + package_bytes(self.predicate.encode() + definition_block(self.terms))


@dataclass(frozen=True)
class Notify(Aml):
    """Notify(object, value): tells the OS about `object` (a device path); 0x80 is
    device-specific, e.g. "button pressed" for a power button (ACPI 6.4 §5.6.6)."""

    target: Aml
    value: DataLike

    def encode(self) -> bytes:
        return bytes((CodeOp.NOTIFY,)) + self.target.encode() + data(self.value).encode()


@dataclass(frozen=True)
class OperationRegion(Aml):
    """OperationRegion(name, space, offset, length): registers AML can read and
    write through a `Field`."""

    name: str
    space: RegionSpace
    offset: DataLike
    length: DataLike

    def encode(self) -> bytes:
        return (
            bytes((Op.EXT_OP_PREFIX, ExtOp.OP_REGION))
            + name_string(self.name)
            + bytes((RegionSpace(self.space),))
            + data(self.offset).encode()
            + data(self.length).encode()
        )


@dataclass(frozen=True)
class Field(Aml):
    """Field(region, access, NoLock|Lock, update) { name, bits ... }: named bit
    ranges of an operation region, laid out one after another from bit 0. A field
    unit named None is reserved space (``, bits`` in ASL)."""

    region: str
    units: Sequence[tuple[str | None, int]]
    access: FieldAccess = FieldAccess.ANY
    lock: bool = False
    update: FieldUpdate = FieldUpdate.PRESERVE

    def encode(self) -> bytes:
        flags = FieldAccess(self.access) | (FIELD_LOCK if self.lock else 0)
        flags |= FieldUpdate(self.update) << FIELD_UPDATE_SHIFT
        units = b"".join(self._unit(name, bits) for name, bits in self.units)
        return bytes((Op.EXT_OP_PREFIX, ExtOp.FIELD)) + package_bytes(
            name_string(self.region) + bytes((flags,)) + units
        )

    @staticmethod
    def _unit(name: str | None, bits: int) -> bytes:
        # A field unit's length in bits is written as a PkgLength that counts bits,
        # not bytes, and not itself (ACPI 6.4 §20.2.5.2, NamedField / ReservedField).
        if bits <= 0:
            raise AcpiError(f"field unit {name!r} has {bits} bits")
        return (NULL_TARGET if name is None else name_seg(name)) + encode_pkg_length(bits)
