"""The saved state of the CMOS RTC (`CmosRtc.save` / `restore`), and its checks.

The clock is saved as the guest's offset from the host clock (or, while the guest
holds it stopped, the second it stands at), never as an absolute host time: a state
restored later, or on another host, gives a guest clock that kept running with the
host's, as a battery-backed RTC does while the machine is off. The divider's phase is
the offset of its second boundaries within a host second. Register C's flags are
saved as they stand at `save()`; the interrupt line's level follows from them and
register B, and `restore` drives the line to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.devices.rtc_registers import (
    CLOCK_REGISTERS,
    DIVIDER_RESET,
    INDEX_MASK,
    Register,
    RegisterA,
    RegisterB,
    RegisterC,
)
from pyvmm.snapshot.checks import (
    check_bool,
    check_bytes,
    check_int,
    check_mask,
    check_type,
    fail,
)
from pyvmm.snapshot.registry import saved_state

DEVICE = "cmos-rtc"
CMOS_SIZE = 128
NS = 1_000_000_000
# The clock registers reach years 1 to 9999 (`ClockFields`), so no guest time or offset
# from the host's can lie further than 10,000 years away.
TIME_LIMIT_S = 10_000 * 366 * 86400
FLAGS = RegisterC.PF | RegisterC.AF | RegisterC.UF
# CMOS bytes the device never stores: the clock is computed, C and D are read only.
_UNSTORED = frozenset({*CLOCK_REGISTERS, Register.C, Register.D})


@saved_state("cmos-rtc")
@dataclass(frozen=True)
class RtcState:
    """A `CmosRtc`'s state as plain data."""

    cmos: bytes  # the 128 bytes, with the clock registers, C and D as 0 (not stored)
    index: int  # the register port 0x71 reaches
    nmi_masked: bool
    flags: int  # register C's PF / AF / UF
    offset_ns: int  # guest time - host time, while the clock runs
    stopped_at: int | None  # guest time in whole seconds, while SET or divider reset stop it
    phase_ns: int  # the divider's second boundaries fall on host times ≡ this mod 1 s
    weekday_adjust: int  # the guest-written day of week - the computed one, mod 7


def check_rtc_state(state: object) -> RtcState:
    """`state` as an `RtcState` whose fields are in range and agree; else `StateError`."""
    state = check_type(DEVICE, state, RtcState)
    cmos = check_bytes(DEVICE, "cmos", state.cmos, CMOS_SIZE, CMOS_SIZE)
    check_int(DEVICE, "index", state.index, 0, INDEX_MASK)
    check_bool(DEVICE, "nmi_masked", state.nmi_masked)
    check_mask(DEVICE, "flags", state.flags, FLAGS)
    check_int(DEVICE, "offset_ns", state.offset_ns, -TIME_LIMIT_S * NS, TIME_LIMIT_S * NS)
    check_int(DEVICE, "phase_ns", state.phase_ns, 0, NS - 1)
    check_int(DEVICE, "weekday_adjust", state.weekday_adjust, 0, 6)
    stored = [index for index in sorted(_UNSTORED) if cmos[index]]
    if stored:
        raise fail(DEVICE, f"cmos bytes {stored} are computed, not stored, and must be 0")
    a, b = cmos[Register.A], cmos[Register.B]
    if a & RegisterA.UIP:
        raise fail(DEVICE, "register A's UIP bit is computed, not stored")
    if b & RegisterB.SET and b & RegisterB.UIE:
        raise fail(DEVICE, "register B has UIE with SET, which clears it")
    stopped = bool(b & RegisterB.SET) or a & DIVIDER_RESET == DIVIDER_RESET
    if stopped:
        check_int(DEVICE, "stopped_at", state.stopped_at, -TIME_LIMIT_S, TIME_LIMIT_S)
    elif state.stopped_at is not None:
        raise fail(DEVICE, "stopped_at is set while registers A and B let the clock run")
    return state
