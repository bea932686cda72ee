"""CmosRtc reset(), save() and restore(): the guest clock is saved as an offset from the
host's, so a restored RTC's clock has kept running; registers, alarm and flags carry over."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from devices.rtc_harness import BINARY_24H, NOW, FakeClock, Rtc

from pyvmm.devices.rtc_registers import Port, Register, RegisterA, RegisterB, RegisterC
from pyvmm.errors import StateError

STORED = [Register.SECONDS_ALARM, Register.MINUTES_ALARM, Register.HOURS_ALARM, Register.A, Register.B]
STORED += list(range(0x0E, 0x80))


@pytest.fixture
def rtcs() -> Iterator[list[Rtc]]:
    made: list[Rtc] = []
    yield made
    for rtc in made:
        rtc.device.close()


def driven(rtcs: list[Rtc]) -> Rtc:
    """Binary mode, the clock set to 2099-12-31 23:59:50, day of week 3, an alarm at
    23:59:55, AIE on, CMOS RAM written; then 6 s pass, so AF and UF are up."""
    rtc = Rtc()
    rtcs.append(rtc)
    rtc.put(Register.B, BINARY_24H | RegisterB.SET)
    for index, value in ((9, 99), (8, 12), (7, 31), (4, 23), (2, 59), (0, 50), (6, 3)):
        rtc.put(index, value)
    rtc.put(Register.HOURS_ALARM, 23)
    rtc.put(Register.MINUTES_ALARM, 59)
    rtc.put(Register.SECONDS_ALARM, 55)
    rtc.put(0x40, 0xA5)
    rtc.put(Register.B, BINARY_24H | RegisterB.AIE)
    rtc.clock.now += 6
    rtc.put(0x41, 0x5A)  # an access: the alarm and the updates are replayed
    assert rtc.line.high
    rtc.device.write(Port.INDEX, 1, 0x80 | 0x41)  # NMI masked, index 0x41 left selected
    return rtc


def test_a_restored_rtc_answers_the_same_and_its_clock_ran_on(rtcs: list[Rtc]) -> None:
    source = driven(rtcs)
    state = source.device.save()
    later = Rtc(FakeClock(source.clock.now + 100))  # restored 100 s later on the host
    rtcs.append(later)
    later.device.restore(state)
    assert later.line.levels == [True]  # AF with AIE: IRQF, re-derived
    assert later.device.nmi_masked
    assert later.device.read(Port.DATA, 1) == 0x5A  # the saved index is still selected
    source.clock.now += 100
    assert later.time() == source.time() == (0, 1, 36, 4, 1, 1, 0)  # 2100-01-01 00:01:36, day 4
    assert [later.get(i) for i in STORED] == [source.get(i) for i in STORED]
    assert (
        later.get(Register.C)
        == source.get(Register.C)
        == RegisterC.IRQF | RegisterC.PF | RegisterC.AF | RegisterC.UF
    )
    assert not later.line.high
    assert later.get(Register.CENTURY) == 21  # the year written was 2099: now 2100


def test_a_stopped_clock_stays_stopped_at_its_second(rtcs: list[Rtc]) -> None:
    source = driven(rtcs)
    source.put(Register.B, BINARY_24H | RegisterB.SET)
    stopped = source.time()
    later = Rtc(FakeClock(NOW + 1000))
    rtcs.append(later)
    later.device.restore(source.device.save())
    later.clock.now += 50
    assert later.time() == stopped
    later.put(Register.B, BINARY_24H)  # released: it runs from there
    later.clock.now += 2
    assert later.get(Register.SECONDS) == (stopped[2] + 2) % 60


def test_reset_clears_enables_and_flags_and_keeps_the_clock_and_ram(rtcs: list[Rtc]) -> None:
    rtc = driven(rtcs)
    rtc.put(Register.B, BINARY_24H | RegisterB.PIE | RegisterB.AIE | RegisterB.SQWE)
    time_before = rtc.time()
    rtc.device.reset()
    assert not rtc.line.high
    assert not rtc.device.nmi_masked
    assert rtc.device.read(Port.DATA, 1) == rtc.get(Register.SECONDS)  # index back to 0
    assert rtc.get(Register.B) == BINARY_24H
    assert rtc.get(Register.C) == 0
    assert rtc.time() == time_before
    assert rtc.get(0x40) == 0xA5 and rtc.get(Register.SECONDS_ALARM) == 55
    rtc.put(Register.B, BINARY_24H | RegisterB.UIE)  # the line is still wired
    rtc.clock.now += 1
    rtc.get(Register.A)
    assert rtc.line.high


def cmos_with(index: int, value: int) -> bytes:
    cmos = bytearray(VALID.cmos)
    cmos[index] = value
    return bytes(cmos)


with_valid = Rtc()
VALID = with_valid.device.save()
with_valid.device.close()


@pytest.mark.parametrize(
    "changes",
    [
        {"cmos": bytes(127)},
        {"cmos": cmos_with(Register.SECONDS, 1)},  # the clock is computed, not stored
        {"cmos": cmos_with(Register.C, 0x80)},
        {"cmos": cmos_with(Register.A, 0xA6)},  # UIP
        {"cmos": cmos_with(Register.B, RegisterB.SET | RegisterB.UIE)},
        {"cmos": cmos_with(Register.B, RegisterB.SET)},  # stopped, but no stopped_at
        {"stopped_at": 5},  # running, with a stopped_at
        {"index": 0x80},
        {"nmi_masked": None},
        {"flags": RegisterC.IRQF},
        {"offset_ns": 1 << 80},
        {"offset_ns": 1.5},
        {"phase_ns": 1_000_000_000},
        {"weekday_adjust": 7},
    ],
)
def test_a_bad_state_is_refused_and_changes_nothing(rtcs: list[Rtc], changes: dict[str, object]) -> None:
    rtc = driven(rtcs)
    before = rtc.device.save()
    with pytest.raises(StateError):
        rtc.device.restore(dataclasses.replace(VALID, **changes))
    assert rtc.device.save() == before
    assert rtc.line.high


def test_a_divider_held_in_reset_restores_stopped(rtcs: list[Rtc]) -> None:
    state = dataclasses.replace(VALID, cmos=cmos_with(Register.A, 0x66), stopped_at=86400)
    rtc = Rtc()
    rtcs.append(rtc)
    rtc.device.restore(state)
    rtc.put(Register.B, BINARY_24H)
    rtc.clock.now += 5
    assert rtc.time()[:3] == (0, 0, 0)
    assert rtc.get(Register.A) & ~int(RegisterA.RATE_MASK) == 0x60
