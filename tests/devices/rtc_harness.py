"""A CmosRtc as the RTC tests drive it: through ports 0x70/0x71 (index, then data, as
a PC's firmware and Linux's mc146818 code do), on a host clock the test moves and a
fake interrupt line."""

from __future__ import annotations

import calendar

from device_fakes import FakeLine

from pyvmm.devices import CmosRtc
from pyvmm.devices.rtc_registers import CLOCK_REGISTERS, Port, RegisterB

# Thursday 29 February 2024, 13:45:07.25 UTC
NOW = calendar.timegm((2024, 2, 29, 13, 45, 7)) + 0.25
BCD_24H = RegisterB.HOURS_24
BINARY_24H = RegisterB.HOURS_24 | RegisterB.BINARY


class FakeClock:
    """A host clock (seconds since 1970, UTC) that moves only when a test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Rtc:
    """A CmosRtc with byte-wide register helpers, on a fake clock and a fake line."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.line = FakeLine()
        self.device = CmosRtc(self.line, self.clock)

    def get(self, index: int) -> int:
        self.device.write(Port.INDEX, 1, index)
        return self.device.read(Port.DATA, 1)

    def put(self, index: int, value: int) -> None:
        self.device.write(Port.INDEX, 1, index)
        self.device.write(Port.DATA, 1, value)

    def clock_registers(self) -> list[int]:
        """Seconds, minutes, hours, day of week, day, month, year, century: in index order."""
        return [self.get(index) for index in sorted(CLOCK_REGISTERS)]

    def time(self) -> tuple[int, ...]:
        """Hours, minutes, seconds, day of week, day, month, year (binary mode)."""
        return tuple(self.get(index) for index in (4, 2, 0, 6, 7, 8, 9))
