"""pci-testdev as kvm-unit-tests' lib/pci-testdev.c drives it: found by its IDs through
mechanism #1, its BARs programmed and enabled, then every test of each BAR run
through real port and MMIO buses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.bus import Bus, MmioBus, PortBus
from pyvmm.devices.pci_testdev import PciTestdev
from pyvmm.pci.bar import BarRange, Space
from pyvmm.pci.config_access import CONFIG_IO_LENGTH, CONFIG_IO_PORT
from pyvmm.pci.host_bridge import PciHost
from pyvmm.pci.registers import Command

MMIO_BASE = 0xFEBF_0000
IO_BASE = 0xC000
SLOT = 2


class Platform:
    """The smallest platform: BAR ranges go on the buses when they start decoding."""

    def __init__(self) -> None:
        self.host = PciHost()
        self.ports, self.mmio = PortBus(), MmioBus()
        self.ports.insert(CONFIG_IO_PORT, CONFIG_IO_LENGTH, self.host.config_io, "pci-config")
        self.device = PciTestdev()
        self.host.bus.add(self.device.function, SLOT)
        self.device.function.bars.on_bar_change = self.moved

    def moved(self, index: int, old: BarRange | None, new: BarRange | None) -> None:
        assert old is None  # these tests place each BAR once
        if new is not None:
            bus: Bus = self.ports if new.space is Space.IO else self.mmio
            bus.insert(new.base, new.size, self.device.function.bar_handler(index), f"bar{index}")

    def config(self, register: int, size: int, value: int | None = None) -> int:
        self.ports.write(0xCF8, 4, 1 << 31 | SLOT << 11 | register & 0xFC)
        port = 0xCFC + (register & 3)
        if value is None:
            return self.ports.read(port, size)
        self.ports.write(port, size, value)
        return 0


def enabled() -> Platform:
    platform = Platform()
    platform.config(0x10, 4, MMIO_BASE)
    platform.config(0x14, 4, IO_BASE)
    platform.config(0x04, 2, Command.IO_SPACE | Command.MEMORY_SPACE)
    return platform


def test_identity_and_bars() -> None:
    platform = Platform()
    assert platform.config(0x00, 4) == 0x0005_1B36
    assert platform.config(0x08, 4) >> 8 == 0xFF0000  # class "other"
    assert platform.config(0x3D, 1) == 0  # no interrupt pin
    platform.config(0x10, 4, 0xFFFF_FFFF)
    assert platform.config(0x10, 4) == 0xFFFF_F000  # 4 KiB of 32-bit memory
    platform.config(0x14, 4, 0xFFFF_FFFF)
    assert platform.config(0x14, 4) == 0xFF01  # 256 ports


def run_one(bus: Bus, base: int, number: int) -> bool:
    """lib/pci-testdev.c's pci_testdev_one, in Python."""
    bus.write(base, 1, number)
    if bus.read(base + 12, 4) != 0:
        return False
    width = bus.read(base + 1, 1)
    if width not in (1, 2, 4):
        return False
    data, offset = bus.read(base + 8, 4), bus.read(base + 4, 4)
    for _ in range(16):
        bus.write(base + offset, width, data)
    count = bus.read(base + 12, 4)
    return count in (0, 16)


def name(bus: Bus, base: int) -> str:
    chars = []
    for index in range(64):
        char = bus.read(base + 16 + index, 1)
        if not char:
            break
        chars.append(chr(char))
    return "".join(chars)


def test_kvm_unit_tests_runs_three_tests_per_bar() -> None:
    platform = enabled()
    for bus, base, kind in ((platform.mmio, MMIO_BASE, "mmio"), (platform.ports, IO_BASE, "portio")):
        passed = []
        for number in range(10):
            if not run_one(bus, base, number):
                break
            passed.append(name(bus, base))
        assert passed == [f"{kind}-no-eventfd", f"{kind}-wildcard-eventfd", f"{kind}-datamatch-eventfd"]


def test_counts_only_matching_writes() -> None:
    platform = enabled()
    mmio = platform.mmio
    mmio.write(MMIO_BASE, 1, 2)  # mmio-datamatch-eventfd
    assert mmio.read(MMIO_BASE, 1) == 2
    assert mmio.read(MMIO_BASE + 4, 4) == 2048 + 2
    mmio.write(MMIO_BASE + 2050, 1, 0x11)  # wrong data
    mmio.write(MMIO_BASE + 2051, 1, 0xFA)  # wrong offset
    mmio.write(MMIO_BASE + 2050, 2, 0x11FA)  # split into bytes: 0xFA at the offset counts
    assert mmio.read(MMIO_BASE + 12, 4) == 1
    mmio.write(MMIO_BASE, 1, 1)  # wildcard: anything at the offset
    mmio.write(MMIO_BASE + 2049, 1, 0x00)
    assert mmio.read(MMIO_BASE + 12, 4) == 1
    assert mmio.read(MMIO_BASE + 8, 1) == 0xCE


def test_no_test_selected_reads_zero() -> None:
    platform = enabled()
    assert platform.mmio.read(MMIO_BASE, 4) == 0
    platform.ports.write(IO_BASE, 1, 3)  # past the last test: none
    assert platform.ports.read(IO_BASE + 12, 4) == 0
    platform.ports.write(IO_BASE, 1, 0)
    assert platform.ports.read(IO_BASE, 1) == 3  # portio tests are numbers 3-5
    assert platform.ports.read(IO_BASE + 16 + len("portio-no-eventfd"), 1) == 0
    assert platform.ports.read(IO_BASE + 200, 4) == 0


def test_reset_deselects() -> None:
    device = PciTestdev()
    window = device.function.bar_handler(0)
    window.write(0, 1, 1)
    assert window.read(0, 1) == 1
    device.function.reset()
    assert window.read(0, 1) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(), st.integers(0, 0x1000), st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**64 - 1)
        )
    )
)
def test_any_bar_access_is_defined(ops: list[tuple[bool, int, int, int]]) -> None:
    device = PciTestdev()
    for write, offset, size, value in ops:
        window = device.function.bar_handler(offset & 1)
        if write:
            window.write(offset, size, value)
        else:
            assert 0 <= window.read(offset, size) < 1 << (8 * size)
