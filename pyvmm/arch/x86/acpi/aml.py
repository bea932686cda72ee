"""A small AML encoder: the parts of ACPI 6.4 §20 ("ACPI Machine Language (AML)
Specification") a DSDT needs.

Every AML object is a frozen dataclass whose `encode()` gives its bytes. Where AML
expects a data object, plain Python values work too: an `int` becomes an `Integer`, a
`str` a `String`, `bytes` a `Buffer` (see `data`). A reference to a named object is a
`Path`. For example, the serial port of a PC:

    Device("COM1", [
        Name("_HID", EisaId("PNP0501")),
        Name("_CRS", ResourceTemplate([IO(0x3F8, 0x3F8, 1, 8), IrqNoFlags([4])])),
    ]).encode()

Resource descriptors and `ResourceTemplate` live in `resources.py`.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from pyvmm.arch.x86.acpi.errors import AcpiError


class Op(enum.IntEnum):
    """Opcodes and prefixes (ACPI 6.4 §20.3, "AML Byte Stream Byte Values")."""

    ZERO = 0x00
    ONE = 0x01
    NAME = 0x08
    BYTE_PREFIX = 0x0A
    WORD_PREFIX = 0x0B
    DWORD_PREFIX = 0x0C
    STRING_PREFIX = 0x0D
    QWORD_PREFIX = 0x0E
    SCOPE = 0x10
    BUFFER = 0x11
    PACKAGE = 0x12
    VAR_PACKAGE = 0x13
    METHOD = 0x14
    DUAL_NAME_PREFIX = 0x2E
    MULTI_NAME_PREFIX = 0x2F
    EXT_OP_PREFIX = 0x5B
    ROOT_CHAR = 0x5C  # '\'
    PARENT_PREFIX = 0x5E  # '^'
    RETURN = 0xA4


DEVICE_OP = bytes((Op.EXT_OP_PREFIX, 0x82))  # ExtOpPrefix 0x82
NULL_NAME = bytes((0x00,))

# A PkgLength's lead byte holds the 2-bit count of bytes that follow; a one-byte
# encoding keeps 6 bits of length, longer ones 4 bits plus 8 per following byte.
PKG_LENGTH_LIMITS = (0x3F, 0xFFF, 0xF_FFFF, 0xFFF_FFFF)
PKG_LENGTH_MAX = PKG_LENGTH_LIMITS[-1]

METHOD_MAX_ARGS = 7
MAX_SEGMENTS = 255  # SegCount is one byte
UINT64_MAX = (1 << 64) - 1

_NAME_SEG = re.compile(r"[A-Z_][A-Z0-9_]{0,3}\Z")
_EISA_ID = re.compile(r"[A-Z]{3}[0-9A-F]{4}\Z")


def encode_pkg_length(value: int) -> bytes:
    """The PkgLength encoding of `value` (ACPI 6.4 §20.2.4).

    `value` is the length of the whole package *including* the PkgLength bytes; use
    `package_bytes` to wrap a body whose length is known.
    """
    following = next((n for n, limit in enumerate(PKG_LENGTH_LIMITS) if 0 <= value <= limit), None)
    if following is None:
        raise AcpiError(f"package length {value:#x} does not fit a PkgLength (max {PKG_LENGTH_MAX:#x})")
    if following == 0:
        return bytes((value,))
    lead = following << 6 | (value & 0x0F)
    return bytes((lead,)) + (value >> 4).to_bytes(following, "little")


def package_bytes(body: bytes) -> bytes:
    """`body` preceded by the shortest PkgLength that covers `body` and itself."""
    for size, limit in enumerate(PKG_LENGTH_LIMITS, start=1):
        if len(body) + size <= limit:
            return encode_pkg_length(len(body) + size) + body
    raise AcpiError(f"an AML package body of {len(body)} bytes is too long for a PkgLength")


def name_seg(segment: str) -> bytes:
    """A NameSeg: 1-4 characters, a letter or '_' first, padded with '_' (ACPI 6.4 §20.2.2)."""
    if not _NAME_SEG.match(segment):
        raise AcpiError(f"{segment!r} is not an AML name segment (A-Z or _ then up to 3 of A-Z, 0-9, _)")
    return segment.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString (ACPI 6.4 §20.2.2): an optional root ('\\') or parent ('^') prefix,
    then dot-separated segments, e.g. ``\\_SB.PCI0`` or ``^^FOO``."""
    if path.startswith("\\"):
        prefix, rest = bytes((Op.ROOT_CHAR,)), path[1:]
    else:
        rest = path.lstrip("^")
        prefix = bytes((Op.PARENT_PREFIX,)) * (len(path) - len(rest))
    if not rest:
        if not prefix:
            raise AcpiError("an empty AML name")
        return prefix + NULL_NAME
    segments = [name_seg(segment) for segment in rest.split(".")]
    if len(segments) == 1:
        return prefix + segments[0]
    if len(segments) == 2:
        return prefix + bytes((Op.DUAL_NAME_PREFIX,)) + b"".join(segments)
    if len(segments) > MAX_SEGMENTS:
        raise AcpiError(f"AML name {path!r} has more than {MAX_SEGMENTS} segments")
    return prefix + bytes((Op.MULTI_NAME_PREFIX, len(segments))) + b"".join(segments)


class Aml(ABC):
    """Anything that encodes to AML bytes."""

    @abstractmethod
    def encode(self) -> bytes: ...


DataLike = int | str | bytes | Aml


def data(value: DataLike) -> Aml:
    """The AML object for a Python value: int → Integer, str → String, bytes → Buffer."""
    if isinstance(value, Aml):
        return value
    if isinstance(value, bool):
        raise AcpiError("use 0 or 1, not a bool, for an AML integer")
    if isinstance(value, int):
        return Integer(value)
    if isinstance(value, str):
        return String(value)
    return Buffer(value)


@dataclass(frozen=True)
class Integer(Aml):
    """An integer in its shortest form: ZeroOp, OneOp, or a Byte/Word/DWord/QWord const."""

    value: int

    def encode(self) -> bytes:
        value = self.value
        if not 0 <= value <= UINT64_MAX:
            raise AcpiError(f"AML integer {value} is not an unsigned 64-bit value")
        if value in (0, 1):
            return bytes((Op.ZERO if value == 0 else Op.ONE,))
        for prefix, size in ((Op.BYTE_PREFIX, 1), (Op.WORD_PREFIX, 2), (Op.DWORD_PREFIX, 4)):
            if value < 1 << (8 * size):
                return bytes((prefix,)) + value.to_bytes(size, "little")
        return bytes((Op.QWORD_PREFIX,)) + value.to_bytes(8, "little")


@dataclass(frozen=True)
class String(Aml):
    """A String: ASCII 0x01-0x7F, NUL-terminated."""

    value: str

    def encode(self) -> bytes:
        if any(not 0x01 <= ord(char) <= 0x7F for char in self.value):
            raise AcpiError(f"AML string {self.value!r} must be ASCII without NUL")
        return bytes((Op.STRING_PREFIX,)) + self.value.encode("ascii") + b"\0"


@dataclass(frozen=True)
class EisaId(Aml):
    """A compressed EISA ID as ASL's EISAID() makes it: "PNP0501" → 0x0105D041.

    Three letters, 5 bits each ('A' = 1), then four hex digits, stored big-endian in
    a DWord (ACPI 6.4 §19.6, "EISAID"); always a DWordConst, like ASL's.
    """

    text: str

    @property
    def value(self) -> int:
        if not _EISA_ID.match(self.text):
            raise AcpiError(f"{self.text!r} is not an EISA ID (three capital letters, four hex digits)")
        letters = 0
        for char in self.text[:3]:
            letters = letters << 5 | (ord(char) - ord("A") + 1)
        big_endian = letters << 16 | int(self.text[3:], 16)
        return int.from_bytes(big_endian.to_bytes(4, "big"), "little")

    def encode(self) -> bytes:
        return bytes((Op.DWORD_PREFIX,)) + self.value.to_bytes(4, "little")


@dataclass(frozen=True)
class Path(Aml):
    """A reference to a named object, e.g. in a Package or a Return."""

    path: str

    def encode(self) -> bytes:
        return name_string(self.path)


@dataclass(frozen=True)
class Buffer(Aml):
    """A Buffer of fixed bytes: BufferOp PkgLength BufferSize ByteList."""

    content: bytes

    def encode(self) -> bytes:
        return bytes((Op.BUFFER,)) + package_bytes(Integer(len(self.content)).encode() + self.content)


@dataclass(frozen=True)
class Package(Aml):
    """A Package of data objects (or references). More than 255 elements need a
    VarPackage, whose element count is an integer term."""

    elements: Sequence[DataLike]

    def encode(self) -> bytes:
        body = b"".join(data(element).encode() for element in self.elements)
        count = len(self.elements)
        if count <= 0xFF:
            return bytes((Op.PACKAGE,)) + package_bytes(bytes((count,)) + body)
        return bytes((Op.VAR_PACKAGE,)) + package_bytes(Integer(count).encode() + body)


@dataclass(frozen=True)
class Name(Aml):
    """Name(path, value): a named data object."""

    path: str
    value: DataLike

    def encode(self) -> bytes:
        return bytes((Op.NAME,)) + name_string(self.path) + data(self.value).encode()


@dataclass(frozen=True)
class Scope(Aml):
    """Scope(path) { terms }: opens an existing namespace node, e.g. ``\\_SB``."""

    path: str
    terms: Sequence[Aml]

    def encode(self) -> bytes:
        return _named_block(bytes((Op.SCOPE,)), self.path, self.terms)


@dataclass(frozen=True)
class Device(Aml):
    """Device(path) { terms }: a device node with its _HID, _UID, _CRS, ..."""

    path: str
    terms: Sequence[Aml]

    def encode(self) -> bytes:
        return _named_block(DEVICE_OP, self.path, self.terms)


@dataclass(frozen=True)
class Method(Aml):
    """Method(path, arg_count, Serialized|NotSerialized, sync_level) { terms }.

    MethodFlags (ACPI 6.4 §20.2.5.2): bits 0-2 ArgCount, bit 3 SerializeFlag,
    bits 4-7 SyncLevel.
    """

    path: str
    arg_count: int
    terms: Sequence[Aml]
    serialized: bool = False
    sync_level: int = 0

    def encode(self) -> bytes:
        if not 0 <= self.arg_count <= METHOD_MAX_ARGS:
            raise AcpiError(f"a method takes 0 to {METHOD_MAX_ARGS} arguments, not {self.arg_count}")
        if not 0 <= self.sync_level <= 0x0F:
            raise AcpiError(f"method sync level {self.sync_level} is not 0-15")
        flags = self.arg_count | (0x08 if self.serialized else 0) | self.sync_level << 4
        return _named_block(bytes((Op.METHOD,)), self.path, self.terms, bytes((flags,)))


@dataclass(frozen=True)
class Return(Aml):
    """Return(value) inside a Method."""

    value: DataLike

    def encode(self) -> bytes:
        return bytes((Op.RETURN,)) + data(self.value).encode()


def definition_block(terms: Sequence[Aml]) -> bytes:
    """The TermList of a definition block (DSDT/SSDT body, after the table header)."""
    return b"".join(term.encode() for term in terms)


def _named_block(op: bytes, path: str, terms: Sequence[Aml], head: bytes = b"") -> bytes:
    """`op` PkgLength NameString `head` TermList: the shape Scope, Device and Method
    share (ACPI 6.4 §20.2.5.1, §20.2.5.2)."""
    return op + package_bytes(name_string(path) + head + definition_block(terms))
