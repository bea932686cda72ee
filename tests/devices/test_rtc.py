"""The MC146818A RTC and CMOS RAM through ports 0x70/0x71, with an injected host clock."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator

import pytest
from device_fakes import FakeLine
from devices.rtc_harness import BCD_24H, BINARY_24H, NOW, FakeClock, Rtc
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.devices import CmosRtc
from pyvmm.devices.rtc import MAX_TIMER_WAIT
from pyvmm.devices.rtc_registers import Port, Register, RegisterA, RegisterB, RegisterC
from pyvmm.errors import ConfigError

GIB = 1 << 30
MIB = 1 << 20


@pytest.fixture
def rtc() -> Iterator[Rtc]:
    device = Rtc()
    yield device
    device.device.close()


def test_reset_state(rtc: Rtc) -> None:
    assert rtc.get(Register.A) == 0x26
    assert rtc.get(Register.B) == RegisterB.HOURS_24
    assert rtc.get(Register.C) == 0
    assert rtc.get(Register.D) == 0x80  # VRT
    assert not rtc.line.levels


def test_bcd_time(rtc: Rtc) -> None:
    assert rtc.clock_registers() == [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]


def test_binary_time(rtc: Rtc) -> None:
    rtc.put(Register.B, BINARY_24H)
    assert rtc.clock_registers() == [7, 45, 13, 5, 29, 2, 24, 20]


def test_time_follows_the_host_clock(rtc: Rtc) -> None:
    rtc.clock.advance(60 * 60 * 11)  # to 00:45:07 on Friday 1 March
    assert rtc.clock_registers() == [0x07, 0x45, 0x00, 0x06, 0x01, 0x03, 0x24, 0x20]


@pytest.mark.parametrize(
    ("hour", "bcd", "binary"),
    [(0, 0x12, 12), (1, 0x01, 1), (11, 0x11, 11), (12, 0x92, 0x8C), (13, 0x81, 0x81), (23, 0x91, 0x8B)],
)
def test_12_hour_mode(hour: int, bcd: int, binary: int) -> None:
    clock = FakeClock(calendar.timegm((2024, 2, 29, hour, 0, 0)))
    rtc = Rtc(clock)
    rtc.put(Register.B, 0)
    assert rtc.get(Register.HOURS) == bcd
    rtc.put(Register.B, RegisterB.BINARY)
    assert rtc.get(Register.HOURS) == binary


def set_time(rtc: Rtc, *registers: tuple[int, int]) -> None:
    """Set the clock as Linux's mc146818_set_time does: SET and divider reset around it."""
    control = rtc.get(Register.B)
    rtc.put(Register.B, control | RegisterB.SET)
    freq_select = rtc.get(Register.A)
    rtc.put(Register.A, freq_select | 0x70)
    for index, value in registers:
        rtc.put(index, value)
    rtc.put(Register.B, control)
    rtc.put(Register.A, freq_select)


def test_setting_the_time_changes_only_the_guest_offset(rtc: Rtc) -> None:
    set_time(
        rtc,
        (Register.YEAR, 0x99),
        (Register.MONTH, 0x12),
        (Register.DAY_OF_MONTH, 0x31),
        (Register.HOURS, 0x23),
        (Register.MINUTES, 0x59),
        (Register.SECONDS, 0x58),
        (Register.CENTURY, 0x19),
    )
    assert rtc.clock.now == NOW  # the host clock is untouched
    assert rtc.get(Register.SECONDS) == 0x58
    target = calendar.timegm((1999, 12, 31, 23, 59, 58))
    assert rtc.device.guest_time() == target + 0.5  # the divider restarted half a second in
    rtc.clock.advance(0.4)
    assert rtc.get(Register.SECONDS) == 0x58
    rtc.clock.advance(0.2)  # the first update came 500 ms after the divider restarted
    assert rtc.get(Register.SECONDS) == 0x59
    rtc.clock.advance(1)
    # Linux does not write the day of the week; it counts on from Thursday, as on the chip.
    assert rtc.clock_registers() == [0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x00, 0x20]
    # Another RTC on the same host clock still reads the host's time.
    other = Rtc(rtc.clock)
    assert other.get(Register.YEAR) == 0x24


def test_set_freezes_the_clock_and_resumes_on_the_divider_phase(rtc: Rtc) -> None:
    rtc.put(Register.B, BCD_24H | RegisterB.SET)
    rtc.clock.advance(5)
    assert rtc.get(Register.SECONDS) == 0x07  # no updates while SET
    rtc.put(Register.B, BCD_24H)
    assert rtc.get(Register.SECONDS) == 0x07
    assert rtc.device.guest_time() == NOW - int(NOW) + calendar.timegm((2024, 2, 29, 13, 45, 7))
    rtc.clock.advance(0.75)  # the divider's second boundary is still on the host's
    assert rtc.get(Register.SECONDS) == 0x08


def test_writing_a_register_while_running_keeps_the_phase(rtc: Rtc) -> None:
    rtc.put(Register.MINUTES, 0x10)
    assert rtc.device.guest_time() == calendar.timegm((2024, 2, 29, 13, 10, 7)) + 0.25
    rtc.put(Register.B, BINARY_24H)
    rtc.put(Register.YEAR, 28)
    rtc.put(Register.CENTURY, 21)
    assert rtc.clock_registers() == [7, 10, 13, 5, 29, 2, 28, 21]


def test_impossible_dates_are_clamped(rtc: Rtc) -> None:
    set_time(rtc, (Register.YEAR, 0x23), (Register.DAY_OF_MONTH, 0x31), (Register.HOURS, 0x99))
    assert rtc.get(Register.DAY_OF_MONTH) == 0x28  # February 2023 has 28 days
    assert rtc.get(Register.HOURS) == 0x23


def test_day_of_week_counts_on_from_what_the_guest_wrote(rtc: Rtc) -> None:
    rtc.put(Register.DAY_OF_WEEK, 0x01)
    assert rtc.get(Register.DAY_OF_WEEK) == 0x01
    rtc.put(Register.DAY_OF_MONTH, 0x01)  # writing the date leaves it alone, as on the chip
    assert rtc.get(Register.DAY_OF_WEEK) == 0x01
    rtc.clock.advance(86400)
    assert rtc.get(Register.DAY_OF_WEEK) == 0x02


def test_uip_is_set_for_244_microseconds_before_each_update() -> None:
    base = calendar.timegm((2024, 2, 29, 13, 45, 7))
    clock = FakeClock(base + 0.9998)  # 200 µs before the update
    rtc = Rtc(clock)
    assert rtc.get(Register.A) == RegisterA.UIP | 0x26
    assert rtc.get(Register.SECONDS) == 0x07  # the update has not happened yet
    clock.now = base + 0.9997  # 300 µs before
    assert rtc.get(Register.A) == 0x26
    clock.now = base + 1.0
    assert rtc.get(Register.A) == 0x26
    assert rtc.get(Register.SECONDS) == 0x08
    clock.now = base + 1.9999
    rtc.put(Register.B, BCD_24H | RegisterB.SET)
    assert rtc.get(Register.A) == 0x26  # no update cycle while SET


def test_register_a_uip_is_read_only(rtc: Rtc) -> None:
    rtc.put(Register.A, 0xA6)
    assert rtc.get(Register.A) == 0x26


def test_register_c_flags_and_clearing(rtc: Rtc) -> None:
    assert rtc.get(Register.C) == 0
    rtc.clock.advance(1)
    assert rtc.get(Register.C) == RegisterC.UF | RegisterC.PF  # flags rise without enables
    assert rtc.get(Register.C) == 0  # the read cleared them
    rtc.put(Register.C, 0xFF)
    rtc.put(Register.D, 0x00)
    assert rtc.get(Register.C) == 0  # C and D are read only
    assert rtc.get(Register.D) == 0x80


def test_update_interrupt_raises_irqf_and_the_line() -> None:
    rtc = Rtc()
    try:
        rtc.put(Register.A, 0x20)  # no periodic rate, so only updates count
        rtc.put(Register.B, BCD_24H | RegisterB.UIE)
        rtc.clock.advance(1)
        assert rtc.get(Register.B) == BCD_24H | RegisterB.UIE  # any access catches up
        assert rtc.line.high
        assert rtc.get(Register.C) == RegisterC.IRQF | RegisterC.UF
        assert not rtc.line.high
    finally:
        rtc.device.close()


def test_setting_set_clears_uie(rtc: Rtc) -> None:
    rtc.put(Register.B, BCD_24H | RegisterB.UIE | RegisterB.SET)
    assert rtc.get(Register.B) == BCD_24H | RegisterB.SET


def test_enabling_an_interrupt_with_its_flag_up_raises_the_line(rtc: Rtc) -> None:
    rtc.clock.advance(1)
    rtc.put(Register.B, BCD_24H | RegisterB.UIE)
    assert rtc.line.high
    assert rtc.get(Register.C) & RegisterC.IRQF


def test_periodic_flag(rtc: Rtc) -> None:
    rtc.put(Register.A, 0x2F)  # 2 Hz
    rtc.get(Register.C)
    rtc.clock.advance(0.2)  # 13:45:07.45, no tick since .25
    assert rtc.get(Register.C) == 0
    rtc.clock.advance(0.1)  # past .5
    assert rtc.get(Register.C) == RegisterC.PF
    rtc.put(Register.A, 0x70 | 0x0F)  # divider in reset: no ticks
    rtc.clock.advance(3)
    assert rtc.get(Register.C) == 0


def test_alarm(rtc: Rtc) -> None:
    rtc.put(Register.A, 0x20)  # no periodic flag in the way
    rtc.put(Register.SECONDS_ALARM, 0x10)
    rtc.put(Register.MINUTES_ALARM, 0x45)
    rtc.put(Register.HOURS_ALARM, 0x13)
    rtc.put(Register.B, BCD_24H | RegisterB.AIE)
    rtc.clock.advance(2)  # 13:45:09
    assert rtc.get(Register.C) == RegisterC.UF
    assert not rtc.line.high
    rtc.clock.advance(1)  # 13:45:10
    assert rtc.get(Register.B) & RegisterB.AIE  # any access catches up
    assert rtc.line.high
    assert rtc.get(Register.C) == RegisterC.IRQF | RegisterC.AF | RegisterC.UF
    rtc.clock.advance(86400)  # a day later the alarm went off once more
    assert rtc.get(Register.C) & RegisterC.AF


def test_alarm_dont_care_and_never(rtc: Rtc) -> None:
    for index in (Register.SECONDS_ALARM, Register.MINUTES_ALARM, Register.HOURS_ALARM):
        rtc.put(index, 0xC0)
    rtc.clock.advance(1)
    assert rtc.get(Register.C) & RegisterC.AF  # every second
    rtc.put(Register.SECONDS_ALARM, 0x7A)  # not a BCD value: never matches
    rtc.clock.advance(3 * 86400)
    assert not rtc.get(Register.C) & RegisterC.AF


def test_alarm_in_12_hour_binary_mode(rtc: Rtc) -> None:
    rtc.put(Register.B, RegisterB.BINARY)
    rtc.put(Register.SECONDS_ALARM, 0xFF)
    rtc.put(Register.MINUTES_ALARM, 0)
    rtc.put(Register.HOURS_ALARM, 0x82)  # 2 PM
    rtc.get(Register.C)
    rtc.clock.advance(14 * 60)  # 13:59:07
    assert not rtc.get(Register.C) & RegisterC.AF
    rtc.clock.advance(60)  # 14:00:07
    assert rtc.get(Register.C) & RegisterC.AF


def test_nmi_bit_does_not_address(rtc: Rtc) -> None:
    rtc.device.write(Port.INDEX, 1, 0x80 | 0x40)
    rtc.device.write(Port.DATA, 1, 0x5A)
    assert rtc.device.nmi_masked
    assert rtc.get(0x40) == 0x5A
    assert not rtc.device.nmi_masked
    rtc.device.write(Port.INDEX, 1, 0x80 | Register.SECONDS)
    assert rtc.device.read(Port.DATA, 1) == 0x07
    assert rtc.device.read(Port.INDEX, 1) == 0xFF  # the index port is write only


def test_cmos_ram_round_trip(rtc: Rtc) -> None:
    ram = [index for index in range(0x0E, 0x80) if index != Register.CENTURY]
    for index in ram:
        rtc.put(index, index ^ 0xA5)
    for index in ram:
        assert rtc.get(index) == index ^ 0xA5


def test_wide_access_writes_index_then_data(rtc: Rtc) -> None:
    rtc.device.write(Port.INDEX, 2, 0x40 | (0x33 << 8))
    assert rtc.get(0x40) == 0x33
    rtc.device.write(Port.INDEX, 1, Register.SECONDS)
    assert rtc.device.read(Port.INDEX, 2) == 0x07FF


def cmos_word(rtc: Rtc, index: int, size: int = 2) -> int:
    return int.from_bytes(bytes(rtc.get(index + i) for i in range(size)), "little")


def test_memory_size_fields(rtc: Rtc) -> None:
    rtc.device.set_memory_size(3 * GIB, 2 * GIB)
    assert cmos_word(rtc, 0x15) == 640
    assert cmos_word(rtc, 0x17) == 0xFFFF  # capped
    assert cmos_word(rtc, 0x30) == 0xFFFF
    assert cmos_word(rtc, 0x34) == (3 * GIB - 16 * MIB) // 0x10000
    assert cmos_word(rtc, 0x5B, 3) == 2 * GIB // 0x10000
    checksum = sum(rtc.get(index) for index in range(0x10, 0x2E))
    assert cmos_word(rtc, 0x2E) == int.from_bytes(checksum.to_bytes(2, "little"), "big")


def test_memory_size_small_guest(rtc: Rtc) -> None:
    rtc.device.set_memory_size(32 * MIB, 0)
    assert cmos_word(rtc, 0x17) == 31 * 1024
    assert cmos_word(rtc, 0x30) == 31 * 1024
    assert cmos_word(rtc, 0x34) == 16 * MIB // 0x10000
    assert cmos_word(rtc, 0x5B, 3) == 0
    rtc.device.set_memory_size(MIB // 2, 0)
    assert cmos_word(rtc, 0x17) == 0
    assert cmos_word(rtc, 0x34) == 0


def test_memory_size_rejects_what_it_cannot_describe(rtc: Rtc) -> None:
    for below, above in ((-1, 0), (4 * GIB + 1, 0), (GIB, -1)):
        with pytest.raises(ConfigError):
            rtc.device.set_memory_size(below, above)


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.005)
    return False


def test_timer_delivers_update_interrupts_on_the_real_clock() -> None:
    line = FakeLine()
    rtc = CmosRtc(line)
    try:
        rtc.write(Port.INDEX, 1, Register.A)
        rtc.write(Port.DATA, 1, 0x20)
        rtc.write(Port.INDEX, 1, Register.C)
        rtc.read(Port.DATA, 1)  # drop the periodic flag the default rate raised so far
        rtc.write(Port.INDEX, 1, Register.B)
        rtc.write(Port.DATA, 1, BCD_24H | RegisterB.UIE)
        assert wait_for(lambda: line.high, 2.5)
        rtc.write(Port.INDEX, 1, Register.C)
        flags = rtc.read(Port.DATA, 1)  # AF too, should the test run at midnight UTC
        assert flags & ~int(RegisterC.AF) == RegisterC.IRQF | RegisterC.UF
        assert not line.high
        assert wait_for(lambda: line.high, 2.5)  # and again the next second
    finally:
        rtc.close()


def test_timer_delivers_periodic_interrupts_on_the_real_clock() -> None:
    line = FakeLine()
    rtc = CmosRtc(line)
    try:
        rtc.write(Port.INDEX, 1, Register.B)
        rtc.write(Port.DATA, 1, BCD_24H | RegisterB.PIE)  # 1024 Hz
        rtc.write(Port.INDEX, 1, Register.C)
        for _ in range(5):
            assert wait_for(lambda: line.high, 1.0)
            assert rtc.read(Port.DATA, 1) & (RegisterC.IRQF | RegisterC.PF) == RegisterC.IRQF | RegisterC.PF
            assert not line.high
    finally:
        rtc.close()


# (is_write, offset, size, value) and how far the clock moves first.
accesses = st.lists(
    st.tuples(
        st.booleans(), st.integers(0, 1), st.sampled_from([1, 2]), st.integers(0, 0xFFFF), st.floats(0, 2)
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(accesses, st.floats(-1e11, 2.5e11))
def test_no_access_sequence_raises(ops: list[tuple[bool, int, int, int, float]], start: float) -> None:
    rtc = Rtc(FakeClock(start))
    try:
        for is_write, offset, size, value, step in ops:
            rtc.clock.advance(step)
            if is_write:
                rtc.device.write(offset, min(size, 2 - offset), value)
            else:
                assert 0 <= rtc.device.read(offset, min(size, 2 - offset)) < 1 << 16
    finally:
        rtc.device.close()


def test_a_paused_rtc_raises_no_interrupt_and_catches_up_on_resume() -> None:
    """The machine's pause: the timer thread raises nothing until resumed."""
    rtc = Rtc()
    try:
        rtc.put(Register.A, 0x20)  # updates only
        rtc.put(Register.B, BCD_24H | RegisterB.UIE)  # starts the timer thread
        assert rtc.device.pause(1.0)
        rtc.clock.advance(1)  # an update is due; only the timer could raise it now
        time.sleep(MAX_TIMER_WAIT + 0.3)
        assert not rtc.line.high
        rtc.device.resume()
        deadline = time.monotonic() + 5
        while not rtc.line.high:
            assert time.monotonic() < deadline, "no interrupt after resume"
            time.sleep(0.01)
    finally:
        rtc.device.close()
