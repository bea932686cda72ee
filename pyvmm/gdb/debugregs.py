"""Hardware breakpoints and watchpoints as DR0-DR3 and DR7 (Intel SDM Vol. 3B §18.2
"Debug Registers"), and the KVM_SET_GUEST_DEBUG request that installs them
(KVM api.rst §4.59 KVM_SET_GUEST_DEBUG: `control` flags, `debugreg[8]` with DR0-DR3
at 0-3 and DR7 at 7; §8 KVM_CAP_SET_GUEST_DEBUG2: the flags this KVM supports).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

SLOTS = 4  # DR0-DR3
DR7_INDEX = 7  # debugreg[7] of struct kvm_guest_debug_arch
DR7_GE = 1 << 9  # "global exact": SDM §18.2.4 recommends it with data breakpoints
DR6_BS = 1 << 14  # single step (SDM §18.2.3)
_RW_SHIFT = 16  # R/W0 at bits 16-17, LEN0 at 18-19, then 4 bits per slot


class GuestDebug(enum.IntFlag):
    """`KVM_GUESTDBG_*` (include/uapi/linux/kvm.h and asm/kvm.h for x86)."""

    ENABLE = 0x1
    SINGLESTEP = 0x2
    USE_SW_BP = 0x10000
    USE_HW_BP = 0x20000
    INJECT_DB = 0x40000
    INJECT_BP = 0x80000
    BLOCKIRQ = 0x100000


# KVM_CAP_SET_GUEST_DEBUG2 (kvm.h): the GuestDebug flags KVM accepts. To move to the
# KVM binding's Cap enum.
CAP_SET_GUEST_DEBUG2 = 195


class Access(enum.IntEnum):
    """DR7 R/W field (SDM §18.2.4): what access to the address hits."""

    EXECUTE = 0b00
    WRITE = 0b01
    IO = 0b10  # with CR4.DE only; not offered to gdb
    READ_WRITE = 0b11


# DR7 LEN field (SDM §18.2.4): 8 bytes is 0b10 (long mode; "undefined" before it).
_LENGTH_CODE = {1: 0b00, 2: 0b01, 8: 0b10, 4: 0b11}


class BreakpointError(ValueError):
    """A breakpoint DR7 cannot express (gdb gets an error reply)."""


@dataclass(frozen=True)
class HardwareBreakpoint:
    """One DR slot's worth: an address, what access hits it and how many bytes.

    SDM §18.2.5: an instruction breakpoint has length 1 (LEN = 00) and its address is
    that of the instruction's first byte; a data breakpoint covers 1, 2, 4 or 8 bytes
    at an address aligned to that length (the processor ignores the low bits).
    """

    address: int
    access: Access
    length: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.address < 1 << 64:
            raise BreakpointError(f"address {self.address:#x} is not 64-bit")
        if self.access is Access.IO:
            raise BreakpointError("I/O breakpoints are not offered")
        if self.access is Access.EXECUTE and self.length != 1:
            raise BreakpointError("an execution breakpoint has length 1")
        if self.length not in _LENGTH_CODE:
            raise BreakpointError(f"a hardware watchpoint covers 1, 2, 4 or 8 bytes, not {self.length}")
        if self.address % self.length:
            raise BreakpointError(f"{self.address:#x} is not aligned to its length {self.length}")

    @property
    def control_bits(self) -> int:
        """This breakpoint's R/W and LEN fields, for slot 0 (shift by 4 per slot)."""
        return (self.access | _LENGTH_CODE[self.length] << 2) << _RW_SHIFT


def watch_ranges(address: int, length: int) -> list[tuple[int, int]]:
    """Naturally aligned pieces of 1, 2, 4 or 8 bytes covering [address, address+length),
    as gdb's x86 code splits a watched range over DR slots (at most `SLOTS` pieces)."""
    if length <= 0:
        raise BreakpointError("a watchpoint covers at least one byte")
    pieces: list[tuple[int, int]] = []
    end = address + length
    while address < end:
        size = 8
        while size > 1 and (address % size or address + size > end):
            size //= 2
        pieces.append((address, size))
        address += size
        if len(pieces) > SLOTS:
            raise BreakpointError(f"{length} bytes at this address need more than {SLOTS} debug registers")
    return pieces


def encode_dr7(slots: Sequence[HardwareBreakpoint | None]) -> int:
    """DR7 enabling each occupied slot locally (L0-L3, SDM §18.2.4; KVM loads the
    value for the guest while it runs, so "local" and "global" mean the same here),
    with GE set when any data breakpoint is present."""
    if len(slots) > SLOTS:
        raise BreakpointError(f"only {SLOTS} debug address registers")
    dr7 = 0
    for index, breakpoint in enumerate(slots):
        if breakpoint is None:
            continue
        dr7 |= 1 << (2 * index)
        dr7 |= breakpoint.control_bits << (4 * index)
        if breakpoint.access is not Access.EXECUTE:
            dr7 |= DR7_GE
    return dr7


def debugreg(slots: Sequence[HardwareBreakpoint | None]) -> list[int]:
    """The eight `kvm_guest_debug_arch.debugreg` values: DR0-DR3, two unused, DR6 (0), DR7."""
    values = [0] * 8
    for index, breakpoint in enumerate(slots):
        if breakpoint is not None:
            values[index] = breakpoint.address
    values[DR7_INDEX] = encode_dr7(slots)
    return values


def hit_slots(dr6: int) -> list[int]:
    """The slots whose condition was met (DR6 B0-B3, SDM §18.2.3)."""
    return [index for index in range(SLOTS) if dr6 >> index & 1]


def control_flags(*, hardware: bool, software: bool, step: bool) -> GuestDebug:
    """The KVM_SET_GUEST_DEBUG control word for what the debugger has armed."""
    flags = GuestDebug(0)
    if hardware:
        flags |= GuestDebug.USE_HW_BP
    if software:
        flags |= GuestDebug.USE_SW_BP
    if step:
        flags |= GuestDebug.SINGLESTEP
    return flags | GuestDebug.ENABLE if flags else flags


def unsupported(control: int, supported_mask: int) -> GuestDebug:
    """The flags of `control` that KVM_CAP_SET_GUEST_DEBUG2's mask does not list
    (none when the host lacks the capability: mask 0 means "unknown", KVM then only
    refuses what it cannot do at KVM_SET_GUEST_DEBUG)."""
    if not supported_mask:
        return GuestDebug(0)
    return GuestDebug(control & ~supported_mask)


class Slots:
    """The four debug address registers as gdb fills them (Z1-Z4 / z1-z4)."""

    def __init__(self) -> None:
        self._slots: list[HardwareBreakpoint | None] = [None] * SLOTS

    @property
    def values(self) -> tuple[HardwareBreakpoint | None, ...]:
        return tuple(self._slots)

    def __bool__(self) -> bool:
        return any(slot is not None for slot in self._slots)

    def free(self) -> int:
        return self._slots.count(None)

    def add(self, breakpoint: HardwareBreakpoint) -> None:
        """Take a free slot (the same breakpoint twice takes one slot per insertion,
        as gdb removes it once per insertion)."""
        if None not in self._slots:
            raise BreakpointError(f"all {SLOTS} debug registers are in use")
        self._slots[self._slots.index(None)] = breakpoint

    def remove(self, breakpoint: HardwareBreakpoint) -> bool:
        if breakpoint not in self._slots:
            return False
        self._slots[self._slots.index(breakpoint)] = None
        return True

    def clear(self) -> None:
        self._slots = [None] * SLOTS

    def slot(self, index: int) -> HardwareBreakpoint | None:
        return self._slots[index]


__all__ = [
    "CAP_SET_GUEST_DEBUG2",
    "DR6_BS",
    "DR7_GE",
    "SLOTS",
    "Access",
    "BreakpointError",
    "GuestDebug",
    "HardwareBreakpoint",
    "Slots",
    "control_flags",
    "debugreg",
    "encode_dr7",
    "hit_slots",
    "unsupported",
    "watch_ranges",
]
