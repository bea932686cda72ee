"""Status flags of integer arithmetic (Intel SDM Vol. 1 §3.4.3.1, Appendix A):
what ADD and SUB/CMP leave in CF, PF, AF, ZF, SF and OF, and how a new set of status
flags is merged into RFLAGS."""

from __future__ import annotations

from pyvmm.arch.x86.registers import STATUS_FLAGS, Rflags


def _parity(value: int) -> int:
    """PF: set when the low byte has an even number of 1 bits."""
    return Rflags.PF if (value & 0xFF).bit_count() % 2 == 0 else 0


def _zero_sign(value: int, bits: int) -> int:
    out = 0
    if value == 0:
        out |= Rflags.ZF
    if value >> (bits - 1) & 1:
        out |= Rflags.SF
    return out


def add(left: int, right: int, size: int) -> tuple[int, int]:
    """`left + right` on `size` bytes: (result, status flags)."""
    bits = size * 8
    mask = (1 << bits) - 1
    left, right = left & mask, right & mask
    total = left + right
    result = total & mask
    flags = _parity(result) | _zero_sign(result, bits)
    if total > mask:
        flags |= Rflags.CF
    if (left ^ right ^ result) & 0x10:
        flags |= Rflags.AF
    if (~(left ^ right) & (left ^ result)) >> (bits - 1) & 1:
        flags |= Rflags.OF
    return result, flags


def sub(left: int, right: int, size: int) -> tuple[int, int]:
    """`left - right` on `size` bytes (SUB, CMP): (result, status flags)."""
    bits = size * 8
    mask = (1 << bits) - 1
    left, right = left & mask, right & mask
    result = (left - right) & mask
    flags = _parity(result) | _zero_sign(result, bits)
    if left < right:
        flags |= Rflags.CF
    if (left ^ right ^ result) & 0x10:
        flags |= Rflags.AF
    if ((left ^ right) & (left ^ result)) >> (bits - 1) & 1:
        flags |= Rflags.OF
    return result, flags


def merge(rflags: int, status: int, written: int = STATUS_FLAGS) -> int:
    """RFLAGS with the flags in `written` replaced by those of `status`."""
    return (rflags & ~written) | (status & written)
