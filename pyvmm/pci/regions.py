"""What sits behind one BAR: sub-ranges of it handed to different handlers (device
registers, an MSI-X table, its PBA), as a single BusDevice for the platform to put on
a bus at the BAR's current address.

Offsets are relative to the BAR, so moving the BAR moves nothing here. An access that
is not wholly inside one sub-range reaches nothing: reads all ones, writes dropped,
as on a bus.
"""

from __future__ import annotations

from pyvmm.bus import BusDevice, all_ones
from pyvmm.pci.errors import PciError


class BarRegions:
    """Sub-ranges of a BAR of `size` bytes, each with its own handler."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._regions: list[tuple[int, int, BusDevice]] = []  # (start, end, handler), sorted

    def add(self, offset: int, length: int, handler: BusDevice) -> None:
        if length < 1 or offset < 0 or offset + length > self.size:
            raise PciError(f"region {offset:#x}+{length:#x} does not fit a BAR of {self.size:#x} bytes")
        for start, end, _ in self._regions:
            if offset < end and start < offset + length:
                raise PciError(f"region {offset:#x}+{length:#x} overlaps {start:#x}-{end - 1:#x} of its BAR")
        self._regions.append((offset, offset + length, handler))
        self._regions.sort(key=lambda region: region[0])

    def _find(self, offset: int, size: int) -> tuple[int, BusDevice] | None:
        for start, end, handler in self._regions:
            if start <= offset and offset + size <= end:
                return start, handler
        return None

    def read(self, offset: int, size: int) -> int:
        found = self._find(offset, size)
        if found is None:
            return all_ones(size)
        return found[1].read(offset - found[0], size)

    def write(self, offset: int, size: int, value: int) -> None:
        found = self._find(offset, size)
        if found is not None:
            found[1].write(offset - found[0], size, value)
