"""pc-testdev's registers as kvm-unit-tests' x86 tests use them, through real buses."""

from __future__ import annotations

import pytest
from device_fakes import FakeLine
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.bus import MmioBus, PortBus
from pyvmm.devices.pc_testdev import IOMEM_ADDRESS, PcTestdev


@pytest.fixture
def setup() -> tuple[PcTestdev, PortBus, MmioBus, dict[int, FakeLine], list[int]]:
    lines: dict[int, FakeLine] = {}
    flushed: list[int] = []

    def line(irq: int) -> FakeLine:
        return lines.setdefault(irq, FakeLine())

    device = PcTestdev(line, flushed.append)
    ports, mmio = PortBus(), MmioBus()
    for region in device.regions():
        (ports if region.io else mmio).insert(region.base, region.length, region.device, region.name)
    return device, ports, mmio, lines, flushed


Setup = tuple[PcTestdev, PortBus, MmioBus, dict[int, FakeLine], list[int]]


def test_scratch_register_lanes(setup: Setup) -> None:
    _, ports, _, _, _ = setup
    ports.write(0xE0, 4, 0x1122_3344)
    assert ports.read(0xE0, 4) == 0x1122_3344
    assert ports.read(0xE2, 2) == 0x1122
    assert ports.read(0xE1, 1) == 0x33
    ports.write(0xE1, 2, 0xAABB)
    assert ports.read(0xE0, 4) == 0x11AA_BB44
    assert ports.read(0xE8, 4) == 0x11AA_BB44  # the byte view of the same register
    ports.write(0xEB, 1, 0x99)
    assert ports.read(0xE0, 4) == 0x99AA_BB44


def test_string_io_as_emulator_c_does_it(setup: Setup) -> None:
    # test_stringio: rep outsb of "abcdefghijklmnop" to 0xE0, then inb reads the last.
    _, ports, _, _, _ = setup
    for char in b"abcdefghijklmnop":
        ports.write(0xE0, 1, char)
    assert ports.read(0xE0, 1) == ord("p")


def test_irq_lines(setup: Setup) -> None:
    _, ports, _, lines, _ = setup
    ports.write(0x200E, 1, 1)  # toggle_irq_line(0x0e)
    ports.write(0x200E, 1, 0)
    assert lines[14].levels == [True, False]
    ports.write(0x2017, 1, 0x80)
    assert lines[23].levels == [True]
    ports.write(0x2000, 2, 1)  # not a byte access: QEMU refuses it
    assert 0 not in lines
    assert ports.read(0x200E, 1) == 0


def test_flush_page(setup: Setup) -> None:
    device, ports, _, _, flushed = setup
    ports.write(0xE4, 4, 0x0012_3ABC)
    ports.write(0xE4, 2, 0x5000)  # only 32-bit writes count
    assert flushed == [0x0012_3000]
    assert device.last_flushed == 0x0012_3000
    assert ports.read(0xE4, 4) == 0


def test_iomem_is_memory_that_exits(setup: Setup) -> None:
    _, _, mmio, _, _ = setup
    mmio.write(IOMEM_ADDRESS + 0x10, 8, 0x0123_4567_89AB_CDEF)
    assert mmio.read(IOMEM_ADDRESS + 0x10, 8) == 0x0123_4567_89AB_CDEF
    assert mmio.read(IOMEM_ADDRESS + 0x13, 2) == 0x6789
    mmio.write(IOMEM_ADDRESS + 0xFFFF, 1, 0x5A)
    assert mmio.read(IOMEM_ADDRESS + 0xFFFF, 1) == 0x5A
    assert mmio.read(IOMEM_ADDRESS + 0xFFFF, 2) == 0xFFFF  # past the end: not the device


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),
            st.integers(-2, 0x10010),
            st.sampled_from([1, 2, 4, 8]),
            st.integers(0, 2**64 - 1),
            st.booleans(),
        )
    )
)
def test_any_access_is_defined(ops: list[tuple[int, int, int, int, bool]]) -> None:
    device = PcTestdev(lambda irq: FakeLine())
    regions = device.regions()
    for which, offset, size, value, write in ops:
        handler = regions[which].device
        if write:
            handler.write(offset, size, value)
        else:
            assert 0 <= handler.read(offset, size) < 1 << (8 * size)
    assert 0 <= device.data < 1 << 32
    assert len(device.iomem) == 0x10000
