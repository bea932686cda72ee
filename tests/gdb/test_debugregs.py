"""DR7 encodings (Intel SDM Vol. 3B §18.2.4, Figure 18-1), alignment rules (§18.2.5)
and the KVM_SET_GUEST_DEBUG control word."""

from __future__ import annotations

import pytest

from pyvmm.gdb.debugregs import (
    DR7_GE,
    Access,
    BreakpointError,
    GuestDebug,
    HardwareBreakpoint,
    Slots,
    control_flags,
    debugreg,
    encode_dr7,
    hit_slots,
    unsupported,
    watch_ranges,
)


@pytest.mark.parametrize(
    ("slot", "breakpoint", "dr7"),
    [
        # L0, R/W0 = 00 (execute), LEN0 = 00
        (0, HardwareBreakpoint(0xFFFF_FFFF_8100_0000, Access.EXECUTE), 0x1),
        # L1, R/W1 (bits 21:20) = 01 write, LEN1 (bits 23:22) = 11: 4 bytes
        (1, HardwareBreakpoint(0x1000, Access.WRITE, 4), 0x4 | 0b01 << 20 | 0b11 << 22 | DR7_GE),
        # L2, R/W2 (25:24) = 01, LEN2 (27:26) = 01: 2 bytes
        (2, HardwareBreakpoint(0x1002, Access.WRITE, 2), 0x10 | 0b01 << 24 | 0b01 << 26 | DR7_GE),
        # L3, R/W3 (29:28) = 11 read or write, LEN3 (31:30) = 10: 8 bytes
        (3, HardwareBreakpoint(0x1008, Access.READ_WRITE, 8), 0x40 | 0b11 << 28 | 0b10 << 30 | DR7_GE),
        # LEN = 00: one byte, any address
        (0, HardwareBreakpoint(0x1003, Access.READ_WRITE, 1), 0x1 | 0b11 << 16 | DR7_GE),
    ],
)
def test_dr7_per_slot(slot: int, breakpoint: HardwareBreakpoint, dr7: int) -> None:
    slots: list[HardwareBreakpoint | None] = [None] * 4
    slots[slot] = breakpoint
    assert encode_dr7(slots) == dr7
    values = debugreg(slots)
    assert values[slot] == breakpoint.address and values[7] == dr7
    assert [v for i, v in enumerate(values) if i not in (slot, 7)] == [0] * 6


def test_four_at_once() -> None:
    slots = [
        HardwareBreakpoint(0x100000, Access.EXECUTE),
        HardwareBreakpoint(0x200000, Access.WRITE, 8),
        HardwareBreakpoint(0x100010, Access.EXECUTE),
        HardwareBreakpoint(0x300004, Access.READ_WRITE, 4),
    ]
    assert encode_dr7(slots) == 0x55 | (0b1001 << 20) | (0b1111 << 28) | DR7_GE
    assert debugreg(slots)[:4] == [0x100000, 0x200000, 0x100010, 0x300004]


@pytest.mark.parametrize(
    ("address", "access", "length"),
    [
        (0x1001, Access.WRITE, 2),  # misaligned
        (0x1004, Access.WRITE, 8),
        (0x1000, Access.WRITE, 3),  # not a DR7 length
        (0x1000, Access.EXECUTE, 4),  # instruction breakpoints have LEN 00
        (0x1000, Access.IO, 1),
        (1 << 64, Access.EXECUTE, 1),
    ],
)
def test_what_dr7_cannot_express_is_refused(address: int, access: Access, length: int) -> None:
    with pytest.raises(BreakpointError):
        HardwareBreakpoint(address, access, length)


def test_watch_ranges_split_into_aligned_pieces() -> None:
    assert watch_ranges(0x1000, 4) == [(0x1000, 4)]
    assert watch_ranges(0x1003, 4) == [(0x1003, 1), (0x1004, 2), (0x1006, 1)]
    assert watch_ranges(0x1000, 16) == [(0x1000, 8), (0x1008, 8)]
    with pytest.raises(BreakpointError):
        watch_ranges(0x1001, 40)
    with pytest.raises(BreakpointError):
        watch_ranges(0x1000, 0)


def test_slots_fill_and_empty() -> None:
    slots = Slots()
    breakpoints = [HardwareBreakpoint(0x1000 + i, Access.EXECUTE) for i in range(4)]
    for breakpoint in breakpoints:
        slots.add(breakpoint)
    with pytest.raises(BreakpointError):
        slots.add(HardwareBreakpoint(0x2000, Access.EXECUTE))
    assert slots.remove(breakpoints[1]) and not slots.remove(breakpoints[1])
    assert slots.values[1] is None and slots.free() == 1
    slots.add(HardwareBreakpoint(0x2000, Access.EXECUTE))
    assert slots.values[1] == HardwareBreakpoint(0x2000, Access.EXECUTE)


def test_dr6_hits_and_control_flags() -> None:
    assert hit_slots(0xFFFF0FF1) == [0] and hit_slots(0xFFFF4FF0) == [] and hit_slots(0b1010) == [1, 3]
    assert control_flags(hardware=False, software=False, step=False) == 0
    assert control_flags(hardware=True, software=False, step=True) == 0x20003
    assert control_flags(hardware=False, software=True, step=False) == 0x10001
    # KVM_CAP_SET_GUEST_DEBUG2 as this host reports it: 0x1f0003
    assert unsupported(GuestDebug.ENABLE | GuestDebug.USE_HW_BP, 0x1F0003) == 0
    assert unsupported(GuestDebug.ENABLE | GuestDebug.USE_SW_BP, 0x20003) == GuestDebug.USE_SW_BP
    assert unsupported(GuestDebug.ENABLE | GuestDebug.USE_SW_BP, 0) == 0
