"""Configuration space masks and access rules (PCI Local Bus Specification 3.0 §6.1-6.2)."""

from __future__ import annotations

import pytest

from pyvmm.pci.config_space import ConfigSpace
from pyvmm.pci.errors import PciError


@pytest.fixture
def space() -> ConfigSpace:
    config = ConfigSpace()
    config.set(0x40, 4, 0x1122_3344)
    config.set_writable(0x40, 4, 0x0000_FF0F)  # byte 0 low nibble, byte 1 all
    config.set(0x44, 2, 0x8001)
    config.set_w1c(0x44, 2, 0x8001)
    return config


def test_reads_are_little_endian_at_any_offset_inside_a_dword(space: ConfigSpace) -> None:
    assert space.read(0x40, 4) == 0x1122_3344
    assert space.read(0x41, 2) == 0x2233
    assert space.read(0x43, 1) == 0x11
    assert space.read(0x41, 1) == 0x33


def test_write_mask_keeps_read_only_bits(space: ConfigSpace) -> None:
    space.write(0x40, 4, 0xFFFF_FFFF)
    assert space.read(0x40, 4) == 0x1122_FF4F
    space.write(0x40, 4, 0)
    assert space.read(0x40, 4) == 0x1122_0040


def test_rw1c_bits_clear_on_one_and_stay_on_zero(space: ConfigSpace) -> None:
    space.write(0x44, 2, 0x0000)
    assert space.read(0x44, 2) == 0x8001
    space.write(0x44, 2, 0x8000)
    assert space.read(0x44, 2) == 0x0001
    space.write(0x44, 1, 0x01)
    assert space.read(0x44, 2) == 0


@pytest.mark.parametrize(
    ("offset", "size"), [(0x43, 2), (0x42, 4), (0x41, 4), (0xFFF, 2), (0x1000, 1), (-1, 1)]
)
def test_accesses_outside_one_dword_read_all_ones_and_write_nothing(
    space: ConfigSpace, offset: int, size: int
) -> None:
    assert space.read(offset, size) == (1 << (8 * size)) - 1
    space.write(offset, size, 0)
    assert space.read(0x40, 4) == 0x1122_3344


@pytest.mark.parametrize("size", [0, 3, 8])
def test_odd_sizes_reach_nothing(space: ConfigSpace, size: int) -> None:
    assert space.read(0x40, size) == ((1 << (8 * size)) - 1)
    space.write(0x40, size, 0)
    assert space.read(0x40, 4) == 0x1122_3344


def test_extended_space_is_there_and_reads_zero() -> None:
    # PCIe base §7.2.2: 4 KiB per function; no extended capability means 0 at 0x100.
    config = ConfigSpace()
    assert config.read(0x100, 4) == 0
    assert config.read(0xFFC, 4) == 0
    config.write(0x100, 4, 0xFFFF_FFFF)
    assert config.read(0x100, 4) == 0


def test_watchers_run_after_writes_that_touch_their_range(space: ConfigSpace) -> None:
    seen: list[int] = []
    space.watch(0x41, 1, lambda: seen.append(space.get(0x40, 4)))
    space.write(0x40, 1, 0x0F)  # byte 0x40: not watched
    assert seen == []
    space.write(0x40, 2, 0x5500)
    assert seen == [0x1122_5540]
    space.write(0x40, 2, 0x5500)  # nothing changes: nothing to see
    assert seen == [0x1122_5540]


def test_watchers_that_ask_for_every_write_see_unchanged_ones(space: ConfigSpace) -> None:
    seen: list[int] = []
    space.watch(0x40, 4, lambda: seen.append(space.get(0x40, 4)), always=True)
    space.write(0x40, 4, 0x0000_3304)  # the value it holds
    space.write(0x42, 1, 0xAA)  # a read-only byte
    assert seen == [0x1122_3344, 0x1122_3344]
    space.write(0x44, 2, 0)  # another register: not watched
    assert len(seen) == 2


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.calls.append(("read", offset, size, 0))
        return 0xABCD_EF01_2345

    def write(self, offset: int, size: int, value: int) -> None:
        self.calls.append(("write", offset, size, value))


def test_intercepted_dwords_go_to_their_handler(space: ConfigSpace) -> None:
    handler = Recorder()
    space.intercept(0x48, 8, handler)
    assert space.read(0x4D, 2) == 0x2345  # clipped to the access width
    space.write(0x48, 4, 0x1_0000_0007)
    assert handler.calls == [("read", 5, 2, 0), ("write", 0, 4, 7)]
    assert space.get(0x48, 4) == 0


def test_intercepts_must_be_whole_dwords_and_disjoint(space: ConfigSpace) -> None:
    with pytest.raises(PciError):
        space.intercept(0x49, 4, Recorder())
    space.intercept(0x48, 4, Recorder())
    with pytest.raises(PciError):
        space.intercept(0x48, 8, Recorder())


def test_device_side_rejects_registers_outside_the_space() -> None:
    with pytest.raises(PciError):
        ConfigSpace().set(0xFFE, 4, 0)
    with pytest.raises(PciError):
        ConfigSpace(0x100).get(0x100, 1)


def test_clear_guest_bits_resets_writable_and_rw1c_bits_only(space: ConfigSpace) -> None:
    space.write(0x40, 4, 0xFFFF_FFFF)
    seen: list[bool] = []
    space.watch(0x40, 4, lambda: seen.append(True))
    space.clear_guest_bits()
    assert space.read(0x40, 4) == 0x1122_0040
    assert space.read(0x44, 2) == 0
    assert seen == [True]
