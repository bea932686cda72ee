"""Fakes the device tests share: an interrupt line and a stop request that record calls."""

from __future__ import annotations

from pyvmm.outcome import GuestExit


class FakeLine:
    """An `InterruptLine` that remembers every level it was driven to."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)

    @property
    def high(self) -> bool:
        return bool(self.levels) and self.levels[-1]


class FakeStop:
    """A `StopRequest` that records the outcomes it was given."""

    def __init__(self) -> None:
        self.outcomes: list[GuestExit] = []

    def __call__(self, outcome: GuestExit) -> None:
        self.outcomes.append(outcome)
