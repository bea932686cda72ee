"""The frame every ACPI table shares (ACPI 6.4 §5.2): the checksum, the 36-byte
system description table header (§5.2.6), the Generic Address Structure (§5.2.3.2),
and the root tables that point at the others: RSDP (§5.2.5.3), RSDT (§5.2.7) and
XSDT (§5.2.8).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence

from pyvmm.arch.x86.acpi.errors import AcpiError

OEM_ID = b"PYVMM "  # 6 bytes
# The FADT's OEM Table ID must match the RSDT's (§5.2.9); pyvmm uses one for all.
OEM_TABLE_ID = b"PYVMM   "  # 8 bytes
OEM_REVISION = 1
CREATOR_ID = b"PYVM"  # for the DSDT this names the "ASL compiler": pyvmm's AML encoder
CREATOR_REVISION = 1

HEADER = struct.Struct("<4sIBB6s8sI4sI")  # signature, length, revision, checksum, ...
HEADER_SIZE = HEADER.size  # 36
CHECKSUM_OFFSET = 9

RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2  # ACPI 2.0+: the 36-byte RSDP with an XSDT address
# signature, checksum, OEM ID, revision, RSDT address, length, XSDT address,
# extended checksum, 3 reserved bytes.
RSDP = struct.Struct("<8sB6sBIIQB3x")
RSDP_SIZE = RSDP.size  # 36
RSDP_V1_SIZE = 20  # the part the first checksum covers
RSDP_EXTENDED_CHECKSUM_OFFSET = 32

XSDT_REVISION = 1
RSDT_REVISION = 1

GAS = struct.Struct("<BBBBQ")  # space ID, bit width, bit offset, access size, address
GAS_SIZE = GAS.size  # 12


class AddressSpace(enum.IntEnum):
    """Generic Address Structure address space IDs (§5.2.3.2)."""

    SYSTEM_MEMORY = 0
    SYSTEM_IO = 1
    PCI_CONFIG = 2


class AccessSize(enum.IntEnum):
    """Generic Address Structure access sizes."""

    UNDEFINED = 0
    BYTE = 1
    WORD = 2
    DWORD = 3
    QWORD = 4


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes `data` plus itself sum to zero (mod 256)."""
    return -sum(data) & 0xFF


def generic_address(
    space: AddressSpace, address: int, bit_width: int, access: AccessSize, bit_offset: int = 0
) -> bytes:
    """A Generic Address Structure; all zeroes means "not present"."""
    return GAS.pack(space, bit_width, bit_offset, access, address)


def io_register(port: int, bit_width: int = 8) -> bytes:
    """A byte-accessed register in system I/O space (sleep control/status, reset)."""
    access = {8: AccessSize.BYTE, 16: AccessSize.WORD, 32: AccessSize.DWORD}[bit_width]
    return generic_address(AddressSpace.SYSTEM_IO, port, bit_width, access)


NO_REGISTER = bytes(GAS_SIZE)


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A complete system description table: the header, then `body`, checksummed."""
    if len(signature) != 4:
        raise AcpiError(f"table signature {signature!r} is not 4 bytes")
    length = HEADER_SIZE + len(body)
    header = HEADER.pack(
        signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION
    )
    data = bytearray(header + body)
    data[CHECKSUM_OFFSET] = checksum(data)
    return bytes(data)


def xsdt(entries: Sequence[int]) -> bytes:
    """The XSDT: 64-bit addresses of every other table but the FACS and DSDT."""
    return table(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", address) for address in entries))


def rsdt(entries: Sequence[int]) -> bytes:
    """The RSDT: the same list with 32-bit addresses, for ACPI 1.0 readers."""
    if any(address >> 32 for address in entries):
        raise AcpiError("an RSDT can only point below 4 GiB")
    return table(b"RSDT", RSDT_REVISION, b"".join(struct.pack("<I", address) for address in entries))


def rsdp(xsdt_address: int, rsdt_address: int) -> bytes:
    """The Root System Description Pointer, revision 2 (36 bytes): the first checksum
    covers bytes 0-19 (the ACPI 1.0 structure), the extended one all 36."""
    data = bytearray(
        RSDP.pack(RSDP_SIGNATURE, 0, OEM_ID, RSDP_REVISION, rsdt_address, RSDP_SIZE, xsdt_address, 0)
    )
    data[8] = checksum(data[:RSDP_V1_SIZE])
    data[RSDP_EXTENDED_CHECKSUM_OFFSET] = checksum(data)
    return bytes(data)
