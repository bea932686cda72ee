"""Sub-ranges behind one BAR: each handler sees offsets from its own start."""

from __future__ import annotations

import pytest

from pyvmm.pci.errors import PciError
from pyvmm.pci.regions import BarRegions


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.calls.append(("read", offset, size, 0))
        return 0xEF01_2345

    def write(self, offset: int, size: int, value: int) -> None:
        self.calls.append(("write", offset, size, value))


def test_accesses_reach_the_region_they_fall_in() -> None:
    regions = BarRegions(0x1000)
    first, second = Recorder(), Recorder()
    regions.add(0x800, 0x10, second)
    regions.add(0, 0x30, first)
    assert regions.read(0x804, 4) == 0xEF01_2345
    regions.write(0x20, 2, 7)
    assert second.calls == [("read", 4, 4, 0)]
    assert first.calls == [("write", 0x20, 2, 7)]


def test_gaps_and_straddling_accesses_reach_nothing() -> None:
    regions = BarRegions(0x1000)
    handler = Recorder()
    regions.add(0, 0x30, handler)
    assert regions.read(0x100, 4) == 0xFFFF_FFFF
    assert regions.read(0x2E, 4) == 0xFFFF_FFFF
    regions.write(0x2E, 4, 0)
    assert handler.calls == []


@pytest.mark.parametrize(("offset", "length"), [(0x20, 0x20), (0xFF0, 0x20), (0, 0), (-1, 2)])
def test_regions_must_fit_and_not_overlap(offset: int, length: int) -> None:
    regions = BarRegions(0x1000)
    regions.add(0x10, 0x20, Recorder())
    with pytest.raises(PciError):
        regions.add(offset, length, Recorder())
