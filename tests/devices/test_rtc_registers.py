"""The RTC's clock-field codecs: BCD or binary data, 12- or 24-hour hours, calendar fields."""

from __future__ import annotations

import calendar

import pytest

from pyvmm.devices.rtc_registers import (
    PM,
    ClockFields,
    decode_field,
    decode_hours,
    encode_field,
    encode_hours,
)


def test_fields_in_bcd_and_binary() -> None:
    assert encode_field(59, binary=False) == 0x59
    assert encode_field(59, binary=True) == 59
    assert decode_field(0x59, binary=False) == 59
    assert decode_field(0x5F, binary=False) == 65  # an invalid digit decodes past the range


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("hours_24", [False, True])
def test_every_hour_decodes_back(binary: bool, hours_24: bool) -> None:
    encoded = [encode_hours(hour, binary, hours_24) for hour in range(24)]
    assert [decode_hours(value, binary, hours_24) for value in encoded] == list(range(24))


def test_12_hour_mode_puts_midnight_at_12_am() -> None:
    assert encode_hours(0, binary=False, hours_24=False) == 0x12
    assert encode_hours(12, binary=False, hours_24=False) == PM | 0x12
    assert encode_hours(23, binary=True, hours_24=False) == PM | 11


def test_clock_fields_break_down_a_utc_time() -> None:
    fields = ClockFields(calendar.timegm((2024, 2, 29, 13, 45, 7)))
    assert (fields.year, fields.month, fields.day) == (2024, 2, 29)
    assert fields.weekday == 5  # Thursday, counting Sunday as 1
    assert (fields.hour, fields.minute, fields.second) == (13, 45, 7)


def test_clock_fields_clamp_what_does_not_exist() -> None:
    fields = ClockFields(calendar.timegm((2023, 2, 1, 0, 0, 0)))
    fields.day, fields.hour, fields.minute = 31, 99, 60
    assert fields.seconds() == calendar.timegm((2023, 2, 28, 23, 59, 0))
