"""From a segment and an offset to a linear address, with the checks the processor
makes on the way (Intel SDM Vol. 3A §3.4 and §5.3 for protected mode: segment type and
limit; §3.3.7.1 for 64-bit mode: only FS/GS have a base, and addresses must be
canonical). A failed check is #GP(0), or #SS(0) for a stack-segment reference."""

from __future__ import annotations

from iced_x86 import Register

from pyvmm.arch.x86.emulator.cpu_state import MASK64, CpuMode, CpuState
from pyvmm.arch.x86.emulator.errors import NotCovered
from pyvmm.arch.x86.emulator.faults import InjectFault, gp, ss
from pyvmm.arch.x86.registers import Cr4
from pyvmm.kvm import x86

SEGMENT_NAMES: dict[int, str] = {
    Register.ES: "es",
    Register.CS: "cs",
    Register.SS: "ss",
    Register.DS: "ds",
    Register.FS: "fs",
    Register.GS: "gs",
}

# Descriptor type bits (SDM Vol. 3A §3.4.5.1).
TYPE_CODE = 1 << 3
TYPE_DATA_WRITABLE = 1 << 1
TYPE_DATA_EXPAND_DOWN = 1 << 2
TYPE_CODE_READABLE = 1 << 1


def segment_register(state: CpuState, segment: int) -> x86.kvm_segment:
    try:
        name = SEGMENT_NAMES[segment]
    except KeyError:
        raise NotCovered(f"memory operand with segment register {segment}") from None
    descriptor: x86.kvm_segment = getattr(state.sregs, name)
    return descriptor


def is_canonical(address: int, la57: bool) -> bool:
    """Bits 63:N-1 all equal, N = 57 with 5-level paging, else 48 (SDM Vol. 1 §3.3.7.1)."""
    top = 56 if la57 else 47
    high = address >> top
    return high in (0, MASK64 >> top)


def _fault(segment: int) -> InjectFault:
    return ss(0) if segment == Register.SS else gp(0)


def linear_address(state: CpuState, segment: int, offset: int, size: int, *, write: bool) -> int:
    """The linear address of `size` bytes at `segment`:`offset` (offset already
    truncated to the address size), checked for a data read or write."""
    mode = state.mode
    if mode is CpuMode.LONG64:
        base = 0
        if segment in (Register.FS, Register.GS):
            base = segment_register(state, segment).base
        linear = (base + offset) & MASK64
        la57 = bool(state.sregs.cr4 & Cr4.LA57)
        if not is_canonical(linear, la57) or not is_canonical((linear + max(size, 1) - 1) & MASK64, la57):
            raise _fault(segment)
        return linear
    if mode is CpuMode.VM86:
        raise NotCovered("virtual-8086 mode addressing")
    descriptor = segment_register(state, segment)
    if mode is not CpuMode.REAL:
        if descriptor.unusable or not descriptor.present:
            raise _fault(segment)
        kind = descriptor.type
        if kind & TYPE_CODE:
            if write or not kind & TYPE_CODE_READABLE:
                raise _fault(segment)
        elif write and not kind & TYPE_DATA_WRITABLE:
            raise _fault(segment)
    last = offset + max(size, 1) - 1
    limit = int(descriptor.limit)
    if (
        mode is not CpuMode.REAL
        and not descriptor.type & TYPE_CODE
        and descriptor.type & TYPE_DATA_EXPAND_DOWN
    ):
        upper = 0xFFFF_FFFF if descriptor.db else 0xFFFF
        if offset <= limit or last > upper:
            raise _fault(segment)
    elif last > limit:
        raise _fault(segment)
    return (int(descriptor.base) + offset) & 0xFFFF_FFFF


def code_linear_address(state: CpuState) -> int:
    """CS.base + RIP for instruction fetch (CS limit checked outside 64-bit mode)."""
    if state.mode is CpuMode.LONG64:
        return state.rip
    eip = state.rip & 0xFFFF_FFFF
    if eip > int(state.sregs.cs.limit):
        raise gp(0)
    return (int(state.sregs.cs.base) + eip) & 0xFFFF_FFFF
