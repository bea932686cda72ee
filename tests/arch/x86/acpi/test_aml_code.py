"""The AML of method bodies, operation regions and fields (`aml_code.py`): the bytes
iasl compiles from the same ASL, and refusals of what AML cannot say."""

from __future__ import annotations

from pathlib import Path

import pytest
from iasl_tools import run

from pyvmm.arch.x86.acpi.aml import Device, EisaId, Method, Name, Scope, definition_block
from pyvmm.arch.x86.acpi.aml import Path as AmlPath
from pyvmm.arch.x86.acpi.aml_code import (
    And,
    Arg,
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

CODE_ASL = r"""
DefinitionBlock ("code.aml", "SSDT", 2, "PYVMM ", "PYVMM   ", 1)
{
    Scope (\_SB)
    {
        Device (PWRB) { Name (_HID, EisaId ("PNP0C0C")) }
        Device (GED0)
        {
            Name (_HID, "ACPI0013")
            OperationRegion (EREG, SystemIO, 0x0608, 0x04)
            Field (EREG, DWordAcc, NoLock, WriteAsZeros) { ESEL, 32 }
            OperationRegion (MREG, SystemMemory, 0xFEB00000, 0x0100)
            Field (MREG, ByteAcc, Lock, Preserve) { , 8, MFLD, 16, MBIG, 200 }
            Method (_EVT, 1, Serialized)
            {
                Store (ESEL, Local0)
                If (LEqual (And (Local0, One, ), One)) { Notify (\_SB.PWRB, 0x80) }
                If (LEqual (Arg0, 0x09)) { Store (Arg0, Local7) Store (Local7, MFLD) }
            }
        }
    }
}
"""


def code_terms() -> list[Scope]:
    """CODE_ASL written with pyvmm's encoder."""
    return [
        Scope(
            "\\_SB",
            [
                Device("PWRB", [Name("_HID", EisaId("PNP0C0C"))]),
                Device(
                    "GED0",
                    [
                        Name("_HID", "ACPI0013"),
                        OperationRegion("EREG", RegionSpace.SYSTEM_IO, 0x608, 4),
                        Field(
                            "EREG",
                            [("ESEL", 32)],
                            access=FieldAccess.DWORD,
                            update=FieldUpdate.WRITE_AS_ZEROS,
                        ),
                        OperationRegion("MREG", RegionSpace.SYSTEM_MEMORY, 0xFEB0_0000, 0x100),
                        Field(
                            "MREG",
                            [(None, 8), ("MFLD", 16), ("MBIG", 200)],
                            access=FieldAccess.BYTE,
                            lock=True,
                        ),
                        Method(
                            "_EVT",
                            1,
                            [
                                Store(AmlPath("ESEL"), Local(0)),
                                If(LEqual(And(Local(0), 1), 1), [Notify(AmlPath("\\_SB.PWRB"), 0x80)]),
                                If(
                                    LEqual(Arg(0), 9),
                                    [Store(Arg(0), Local(7)), Store(Local(7), AmlPath("MFLD"))],
                                ),
                            ],
                            serialized=True,
                        ),
                    ],
                ),
            ],
        )
    ]


def test_encoder_matches_iasl_byte_for_byte(iasl: str, tmp_path: Path) -> None:
    (tmp_path / "code.asl").write_text(CODE_ASL)
    run(iasl, "-oa", "code.asl", cwd=tmp_path)  # -oa: no optimizations, AML as written
    compiled = (tmp_path / "code.aml").read_bytes()
    assert definition_block(code_terms()).hex() == compiled[36:].hex()


def test_the_smallest_pieces() -> None:
    assert Local(0).encode() == b"\x60" and Local(7).encode() == b"\x67"
    assert Arg(0).encode() == b"\x68" and Arg(6).encode() == b"\x6e"
    # Notify(PWRB, 0x80): NotifyOp, the name, BytePrefix 0x80
    assert Notify(AmlPath("PWRB"), 0x80).encode() == b"\x86PWRB\x0a\x80"
    # A field unit's length counts bits: 32 bits is one PkgLength byte, 0x20.
    assert Field("R", [("F", 32)]).encode().endswith(b"F___\x20")


@pytest.mark.parametrize(
    "term",
    [
        Local(8),
        Local(-1),
        Arg(7),
        Field("R", [("F", 0)]),
        Field("R", [("toolong", 8)]),
        OperationRegion("R", RegionSpace.SYSTEM_IO, -1, 4),
        Store(1 << 64, Local(0)),
        If(LEqual(Local(9), 0), []),
    ],
)
def test_what_aml_cannot_say_is_refused(term: Store | Local | Arg | Field | OperationRegion | If) -> None:
    with pytest.raises(AcpiError):
        term.encode()


def test_region_spaces_are_the_spec_values() -> None:
    assert (
        OperationRegion("R", RegionSpace.SYSTEM_IO, 0x608, 4).encode()
        == b"\x5b\x80R___\x01\x0b\x08\x06\x0a\x04"
    )
    with pytest.raises(ValueError):
        OperationRegion("R", 0x42, 0, 1).encode()  # type: ignore[arg-type]
