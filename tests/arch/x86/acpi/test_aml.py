"""AML encodings, byte for byte (ACPI 6.4 §20.2), against the grammar and against
what Intel's iasl compiles from the equivalent ASL."""

from __future__ import annotations

import pytest

from pyvmm.arch.x86.acpi import AcpiError
from pyvmm.arch.x86.acpi.aml import (
    Buffer,
    Device,
    EisaId,
    Integer,
    Method,
    Name,
    Package,
    Path,
    Return,
    Scope,
    String,
    data,
    encode_pkg_length,
    name_seg,
    name_string,
    package_bytes,
)
from pyvmm.arch.x86.acpi.resources import IO, IrqNoFlags, ResourceTemplate

# --- PkgLength (§20.2.4) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0x00, "00"),
        (0x3F, "3f"),  # largest one-byte length: 6 bits
        (0x40, "4004"),  # two bytes: lead 0b01 << 6 | low nibble, then bits 4-11
        (0x123, "4312"),
        (0xFFF, "4fff"),  # largest two-byte length
        (0x1000, "800001"),
        (0xFFFFF, "8fffff"),  # largest three-byte length
        (0x100000, "c0000001"),
        (0xFFFFFFF, "cfffffff"),  # largest four-byte length: 28 bits
    ],
)
def test_pkg_length_encodings(value: int, encoded: str) -> None:
    assert encode_pkg_length(value).hex() == encoded


@pytest.mark.parametrize("value", [-1, 0x1000_0000])
def test_pkg_length_out_of_range(value: int) -> None:
    with pytest.raises(AcpiError):
        encode_pkg_length(value)


@pytest.mark.parametrize(
    ("body_length", "prefix"),
    [
        (0, "01"),
        (62, "3f"),  # 62 + 1 = 63 still fits one byte
        (63, "4104"),  # 63 + 1 = 64 does not: 63 + 2 = 65 = 0x41
        (0xFFD, "4fff"),  # 0xFFD + 2 = 0xFFF, the last two-byte length
        (0xFFE, "810001"),  # 0xFFE + 2 > 0xFFF: three bytes, 0x1001
        (0xFFFFC, "8fffff"),
        (0xFFFFD, "c1000001"),  # 0xFFFFD + 3 > 0xFFFFF: four bytes, 0x100001
    ],
)
def test_package_bytes_picks_the_shortest_pkg_length_counting_itself(body_length: int, prefix: str) -> None:
    body = bytes(body_length)
    encoded = package_bytes(body)
    assert encoded.hex().startswith(prefix)
    assert encoded[len(prefix) // 2 :] == body


def test_package_bytes_rejects_a_body_too_long_for_any_pkg_length() -> None:
    with pytest.raises(AcpiError):
        package_bytes(bytes(0xFFF_FFFC))


# --- integers, strings, names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),  # ZeroOp
        (1, "01"),  # OneOp
        (2, "0a02"),  # BytePrefix
        (0xFF, "0aff"),
        (0x100, "0b0001"),  # WordPrefix, little-endian
        (0xFFFF, "0bffff"),
        (0x10000, "0c00000100"),  # DWordPrefix
        (0xFFFF_FFFF, "0cffffffff"),
        (0x1_0000_0000, "0e0000000001000000"),  # QWordPrefix
        ((1 << 64) - 1, "0e" + "ff" * 8),
    ],
)
def test_integer_uses_the_smallest_encoding(value: int, encoded: str) -> None:
    assert Integer(value).encode().hex() == encoded


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_integer_out_of_range(value: int) -> None:
    with pytest.raises(AcpiError):
        Integer(value).encode()


def test_string_is_prefixed_and_nul_terminated() -> None:
    assert String("ACPI0007").encode() == b"\x0dACPI0007\x00"
    assert String("").encode() == b"\x0d\x00"


@pytest.mark.parametrize("text", ["caf\u00e9", "a\0b"])
def test_string_must_be_ascii_without_nul(text: str) -> None:
    with pytest.raises(AcpiError):
        String(text).encode()


def test_name_segments_are_padded_with_underscores() -> None:
    assert name_seg("_SB") == b"_SB_"
    assert name_seg("C0") == b"C0__"
    assert name_seg("COM1") == b"COM1"


@pytest.mark.parametrize("segment", ["", "1ABC", "ABCDE", "com1", "A-B", "A.B"])
def test_bad_name_segments(segment: str) -> None:
    with pytest.raises(AcpiError):
        name_seg(segment)


@pytest.mark.parametrize(
    ("path", "encoded"),
    [
        ("_SB", b"_SB_"),
        ("\\", b"\\\x00"),  # the root: RootChar NullName
        ("\\_SB", b"\\_SB_"),
        ("^FOO", b"^FOO_"),
        ("^^FOO", b"^^FOO_"),
        ("_SB.PCI0", b"\x2e_SB_PCI0"),  # DualNamePrefix
        ("\\_SB.PCI0", b"\\\x2e_SB_PCI0"),
        ("\\_SB.PCI0.ISA", b"\\\x2f\x03_SB_PCI0ISA_"),  # MultiNamePrefix SegCount
        ("^_SB.PCI0.ISA.COM1", b"^\x2f\x04_SB_PCI0ISA_COM1"),
    ],
)
def test_name_strings(path: str, encoded: bytes) -> None:
    assert name_string(path) == encoded


def test_multi_name_path_length_matches_the_spec_example() -> None:
    # §20.2.2: MultiNamePrefix(35) is 0x2F 0x23 then 35 NameSegs: 1 + 1 + 35 * 4 = 142.
    encoded = name_string(".".join(["ABCD"] * 35))
    assert encoded[:2] == b"\x2f\x23"
    assert len(encoded) == 142


@pytest.mark.parametrize("path", ["", "\\^FOO", "_SB..PCI0", "_SB.", "\\" + ".".join(["A"] * 256)])
def test_bad_name_strings(path: str) -> None:
    with pytest.raises(AcpiError):
        name_string(path)


# --- EISAID -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("PNP0501", 0x0105D041),  # 16550A UART
        ("PNP0A03", 0x030AD041),  # PCI host bridge
        ("PNP0C02", 0x020CD041),  # motherboard resources
        ("PNP0000", 0x0000D041),  # still a DWordConst, as ASL's EISAID()
    ],
)
def test_eisaid(text: str, value: int) -> None:
    assert EisaId(text).value == value
    assert EisaId(text).encode() == b"\x0c" + value.to_bytes(4, "little")


@pytest.mark.parametrize("text", ["QEMU0002", "pnp0501", "PNP050", "PNP05011", "PNP050G"])
def test_bad_eisaid(text: str) -> None:
    with pytest.raises(AcpiError):
        EisaId(text).encode()


# --- objects, checked against what iasl 20200925 emits for the same ASL -------------------

# DefinitionBlock body of:
#     Name (_S5, Package () {5, 0})
#     Scope (\_SB) { Device (COM1) { Name (_HID, EisaId ("PNP0501")) Name (_UID, 1)
#         Name (_CRS, ResourceTemplate () { IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
#                                           IRQNoFlags () {4} }) }
#         Method (FOO, 2, Serialized) { Return (0x1234) } }
IASL_S5 = "085f53355f1205020a0500"
IASL_COM1 = "5b822b434f4d31085f4849440c41d00501085f55494401085f43525311100a0d4701f803f80301082210007900"
IASL_METHOD = "140a464f4f5f0aa40b3412"


def com1() -> Device:
    resources = ResourceTemplate([IO(0x3F8, 0x3F8, 1, 8), IrqNoFlags([4])], checksum=False)
    return Device("COM1", [Name("_HID", EisaId("PNP0501")), Name("_UID", 1), Name("_CRS", resources)])


def test_name_with_a_package_matches_iasl() -> None:
    assert Name("_S5_", Package([5, 0])).encode().hex() == IASL_S5
    assert Name("_S5", Package([5, 0])).encode().hex() == IASL_S5


def test_device_matches_iasl() -> None:
    assert com1().encode().hex() == IASL_COM1


def test_method_flags_and_return_match_iasl() -> None:
    method = Method("FOO", 2, [Return(0x1234)], serialized=True)
    assert method.encode().hex() == IASL_METHOD


def test_scope_wraps_its_terms() -> None:
    method = Method("FOO", 2, [Return(0x1234)], serialized=True)
    body = b"_SB_" + bytes.fromhex(IASL_COM1 + IASL_METHOD)
    assert Scope("_SB", [com1(), method]).encode() == b"\x10" + package_bytes(body)


def test_method_flags() -> None:
    assert Method("_STA", 0, [Return(0x0F)]).encode()[6] == 0x00  # NotSerialized
    assert Method("M", 7, [], serialized=True, sync_level=15).encode()[6] == 0xFF
    with pytest.raises(AcpiError):
        Method("M", 8, []).encode()
    with pytest.raises(AcpiError):
        Method("M", 0, [], sync_level=16).encode()


def test_buffer() -> None:
    # BufferOp PkgLength(5: itself, BufferSize 0A 02, two bytes) BufferSize ByteList
    assert Buffer(b"\x01\x02").encode().hex() == "11050a020102"
    assert Buffer(b"").encode().hex() == "110200"


def test_package_elements_and_references() -> None:
    package = Package([1, "AB", b"\x07", Path("\\_SB.COM1"), Package([])])
    assert package.encode().hex() == (
        "12"
        "18"
        "05"  # PackageOp, PkgLength 0x18, 5 elements
        "01"
        "0d414200"
        "11030107"
        "5c2e5f53425f434f4d31"
        "120200"
    )


def test_large_package_is_a_var_package() -> None:
    encoded = Package([0] * 256).encode()
    assert encoded[0] == 0x13  # VarPackageOp
    assert encoded[1:3] == encode_pkg_length(2 + 3 + 256)  # itself, WordConst 256, elements
    assert encoded[3:6] == b"\x0b\x00\x01"


def test_data_converts_python_values() -> None:
    assert data(5) == Integer(5)
    assert data("x") == String("x")
    assert data(b"x") == Buffer(b"x")
    assert data(Path("_SB")) == Path("_SB")
    with pytest.raises(AcpiError):
        data(True)


def test_return_of_a_reference() -> None:
    assert Return(Path("^RES")).encode() == b"\xa4^RES_"
