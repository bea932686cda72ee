"""The register map of the PC's MC146818A RTC and CMOS RAM, and the clock-field codecs.

Motorola MC146818A datasheet, "Address Map" and "Registers". The guest reaches the 128
bytes through two ports: it writes a register index (bits 0-6) to the index port, where
bit 7 is the PC's NMI mask, then reads or writes the register at the data port. Bytes
0x00-0x09 are the clock and its alarm, 0x0A-0x0D the control registers A to D, and the
rest CMOS RAM. Of the RAM, this map names the bytes a PC BIOS reads: the memory sizes
with the checksum over 0x10-0x2D, and the century at 0x32, as the ACPI FADT's CENTURY
field names it.

The clock registers hold their values in the data mode register B selects: BCD or
binary, 12 or 24 hours, with bit 7 of the hours marking PM in 12-hour mode.
`ClockFields` breaks a UTC time down into those values; its `seconds()` turns them back,
clamping a date that does not exist to the nearest one that does.
"""

from __future__ import annotations

import calendar
import datetime
import enum


class Port(enum.IntEnum):
    """Offsets from the RTC's first I/O port."""

    INDEX = 0
    DATA = 1


INDEX_MASK = 0x7F
NMI_DISABLE = 0x80  # bit 7 of an index write


class Register(enum.IntEnum):
    """Clock registers and the CMOS bytes this device gives a meaning."""

    SECONDS = 0x00
    SECONDS_ALARM = 0x01
    MINUTES = 0x02
    MINUTES_ALARM = 0x03
    HOURS = 0x04
    HOURS_ALARM = 0x05
    DAY_OF_WEEK = 0x06
    DAY_OF_MONTH = 0x07
    MONTH = 0x08
    YEAR = 0x09
    A = 0x0A
    B = 0x0B
    C = 0x0C
    D = 0x0D
    BASE_MEMORY_LOW = 0x15  # KiB below 1 MiB
    BASE_MEMORY_HIGH = 0x16
    EXTENDED_MEMORY_LOW = 0x17  # KiB above 1 MiB, capped at 0xFFFF
    EXTENDED_MEMORY_HIGH = 0x18
    CHECKSUM_HIGH = 0x2E  # sum of bytes 0x10-0x2D
    CHECKSUM_LOW = 0x2F
    EXTENDED_MEMORY2_LOW = 0x30  # a copy of 0x17/0x18
    EXTENDED_MEMORY2_HIGH = 0x31
    CENTURY = 0x32
    MEMORY_ABOVE_16M_LOW = 0x34  # 64 KiB units between 16 MiB and 4 GiB
    MEMORY_ABOVE_16M_HIGH = 0x35
    MEMORY_ABOVE_4G_LOW = 0x5B  # 64 KiB units above 4 GiB, 24 bits
    MEMORY_ABOVE_4G_MID = 0x5C
    MEMORY_ABOVE_4G_HIGH = 0x5D


CHECKSUM_FIRST = 0x10
CHECKSUM_END = 0x2E

# The registers computed from the clock rather than stored.
CLOCK_REGISTERS = frozenset(
    {
        Register.SECONDS,
        Register.MINUTES,
        Register.HOURS,
        Register.DAY_OF_WEEK,
        Register.DAY_OF_MONTH,
        Register.MONTH,
        Register.YEAR,
        Register.CENTURY,
    }
)


class RegisterA(enum.IntFlag):
    """Register A: update in progress, divider select (DV) and periodic rate select."""

    UIP = 0x80  # update in progress, read only
    DIVIDER_MASK = 0x70
    RATE_MASK = 0x0F


DIVIDER_32K = 0x20  # DV = 010: 32.768 kHz time base, running
DIVIDER_RESET = 0x60  # DV = 11x holds the divider chain in reset
INITIAL_A = DIVIDER_32K | 0x06  # 1024 Hz periodic rate, as a PC BIOS leaves it


class RegisterB(enum.IntFlag):
    """Register B: update stop, interrupt enables and data mode."""

    SET = 0x80  # stop updates so the guest can set the clock
    PIE = 0x40  # periodic interrupt enable
    AIE = 0x20  # alarm interrupt enable
    UIE = 0x10  # update-ended interrupt enable
    SQWE = 0x08
    BINARY = 0x04  # data mode: binary instead of BCD
    HOURS_24 = 0x02
    DSE = 0x01


INITIAL_B = RegisterB.HOURS_24
INTERRUPT_ENABLES = RegisterB.PIE | RegisterB.AIE | RegisterB.UIE


class RegisterC(enum.IntFlag):
    """Register C: interrupt flags, read only and cleared by a read."""

    IRQF = 0x80
    PF = 0x40  # periodic
    AF = 0x20  # alarm
    UF = 0x10  # update ended


REGISTER_D = 0x80  # VRT: the battery is fine
PM = 0x80  # bit 7 of an hours value in 12-hour mode
ALARM_DONT_CARE = 0xC0  # an alarm byte with both top bits set matches any value

BASE_MEMORY_KIB = 640
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

_UNIX_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_FIRST_DAY = 1 - _UNIX_EPOCH_ORDINAL  # days from 1970 to 0001-01-01 (negative)
_LAST_DAY = datetime.date.max.toordinal() - _UNIX_EPOCH_ORDINAL


def encode_field(value: int, binary: bool) -> int:
    """A clock value as its register holds it: BCD, or binary when `binary`."""
    return value & 0xFF if binary else ((value // 10 % 10) << 4) | (value % 10)


def decode_field(value: int, binary: bool) -> int:
    """A clock register's byte as a number, in BCD or binary data mode."""
    # Invalid BCD digits decode to large numbers, which ClockFields.seconds() clamps.
    return value if binary else (value >> 4) * 10 + (value & 0x0F)


def encode_hours(hours: int, binary: bool, hours_24: bool) -> int:
    """An hour 0-23 as the hours register holds it, with PM in bit 7 in 12-hour mode."""
    if hours_24:
        return encode_field(hours, binary)
    return encode_field(hours % 12 or 12, binary) | (PM if hours >= 12 else 0)


def decode_hours(value: int, binary: bool, hours_24: bool) -> int:
    """An hours register byte as an hour 0-23."""
    if hours_24:
        return decode_field(value, binary)
    return decode_field(value & ~PM, binary) % 12 + (12 if value & PM else 0)


class ClockFields:
    """A UTC time broken down into the values the clock registers hold."""

    def __init__(self, seconds: int) -> None:
        days, in_day = divmod(seconds, 86400)
        days = min(max(days, _FIRST_DAY), _LAST_DAY)
        date = datetime.date.fromordinal(days + _UNIX_EPOCH_ORDINAL)
        self.year, self.month, self.day = date.year, date.month, date.day
        self.weekday = date.isoweekday() % 7 + 1  # Sunday is 1
        self.hour, rest = divmod(in_day, 3600)
        self.minute, self.second = divmod(rest, 60)

    def seconds(self) -> int:
        """Back to seconds since 1970, clamping each field to a valid value."""
        year = min(max(self.year, 1), 9999)
        month = min(max(self.month, 1), 12)
        day = min(max(self.day, 1), calendar.monthrange(year, month)[1])
        days = datetime.date(year, month, day).toordinal() - _UNIX_EPOCH_ORDINAL
        hour, minute, second = min(self.hour, 23), min(self.minute, 59), min(self.second, 59)
        return days * 86400 + hour * 3600 + minute * 60 + second
