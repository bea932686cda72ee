"""The PCI platform on real buses (pyvmm/platform/pci.py): the host bridge through
both access mechanisms, BARs placed like firmware places them and moved by guest
configuration writes, overlaps with RAM, KVM's pages and other devices left
unmapped without an exception, INTx per the _PRT swizzle, MSI-X delivery, and what
it gives ACPI and the E820 map."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pc_platform import MEMORY, pc_devices

from pyvmm import Machine, MachineConfig
from pyvmm.arch.x86.acpi import build_acpi_tables
from pyvmm.arch.x86.acpi.pci_host import gsi_for
from pyvmm.arch.x86.layout import KVM_TSS_ADDRESS, MMIO_HOLE_START
from pyvmm.devices.device import DeviceState, PlacedDevice, mmio
from pyvmm.devices.pc_testdev import IOMEM_ADDRESS, IOMEM_LENGTH
from pyvmm.devices.pci_testdev import PciTestdev
from pyvmm.devices.ports import PortSinkState
from pyvmm.errors import StateError
from pyvmm.irq import MsiMessage
from pyvmm.machine import RunResult
from pyvmm.outcome import ExitKind
from pyvmm.pci import BarKind, BarSpec, InterruptPin, MsixCapability, MsixTable, PciFunction, PciIds
from pyvmm.pci.regions import BarRegions
from pyvmm.pci.registers import Command
from pyvmm.pci.state import PciHostState
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pc import ACPI_POWER
from pyvmm.platform.pci import LAPIC_ADDRESS, NoPci, PciPlatform
from pyvmm.platform.resources import IOAPIC_ADDRESS, ResourceAllocator

TEST_IDS = PciIds(0x1234, 0x5678, 0xFF, 0)


class Line:
    """An interrupt line that remembers its level changes."""

    def __init__(self, gsi: int) -> None:
        self.gsi = gsi
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)


class Msi:
    """An MSI vector that records what it sends (the KVM side is tests/irq's)."""

    def __init__(self, sent: list[tuple[int, int]]) -> None:
        self.message: MsiMessage | None = None
        self._sent = sent

    def trigger(self) -> None:
        if self.message is not None:
            self._sent.append((self.message.address, self.message.data))

    def update(self, message: MsiMessage | None) -> None:
        self.message = message

    def close(self) -> None:
        self.message = None


class Pci:
    """A PCI platform in a device manager with the PC's devices, as the machine builds it."""

    def __init__(self, manager: DeviceManager) -> None:
        self.manager = manager
        self.lines: dict[int, Line] = {}
        self.messages: list[tuple[int, int]] = []
        self.platform = PciPlatform(manager, [(0, MEMORY)], self.line, self.send)
        manager.add(self.platform)

    def line(self, gsi: int) -> Line:
        return self.lines.setdefault(gsi, Line(gsi))

    def send(self) -> Msi:
        return Msi(self.messages)

    def ecam(self, slot: int, register: int, size: int, value: int | None = None) -> int:
        address = self.platform.resources.ecam_base + (slot << 15) + register
        if value is None:
            return self.manager.mmio.read(address, size)
        self.manager.mmio.write(address, size, value)
        return 0

    def cf8(self, slot: int, register: int, size: int, value: int | None = None) -> int:
        ports = self.manager.ports
        ports.write(0xCF8, 4, 1 << 31 | slot << 11 | register & 0xFC)
        port = 0xCFC + (register & 3)
        if value is None:
            return ports.read(port, size)
        ports.write(port, size, value)
        return 0


@pytest.fixture
def pci() -> Iterator[Pci]:
    with pc_devices() as manager:
        yield Pci(manager)


def name_of_test(read: Callable[[int, int], int], base: int) -> bytes:
    """The name of the test selected on a pci-testdev BAR (lib/pci-testdev.c reads it)."""
    return bytes(read(base + 16 + i, 1) for i in range(15))


def test_the_host_bridge_answers_on_both_mechanisms(pci: Pci) -> None:
    assert pci.cf8(0, 0x00, 4) == 0x0008_1B36
    assert pci.ecam(0, 0x00, 4) == 0x0008_1B36
    assert pci.ecam(0, 0x0A, 2) == 0x0600  # host bridge class
    assert pci.cf8(5, 0x00, 2) == 0xFFFF  # empty slot
    assert pci.manager.mmio.find(pci.platform.resources.ecam_base, 4).name == "pci-ecam"
    assert pci.manager.ports.find(0xCF8, 4).name == "pci-config"


def test_bars_are_placed_in_the_windows_and_decode(pci: Pci) -> None:
    device = PciTestdev()
    slot = pci.platform.add_function(device.function, name="pci-testdev")
    assert slot == 1  # the host bridge has slot 0
    r = pci.platform.resources
    mmio_bar = pci.ecam(slot, 0x10, 4)
    io_bar = pci.cf8(slot, 0x14, 4)
    assert r.mmio32.start <= mmio_bar < r.mmio32.end and mmio_bar % 0x1000 == 0
    assert io_bar & 1 and r.io.start <= io_bar & ~3 < r.io.end
    assert pci.ecam(slot, 0x04, 2) & (Command.IO_SPACE | Command.MEMORY_SPACE) == 3
    # The device answers where its BARs say, on both buses (kvm-unit-tests' way).
    pci.manager.mmio.write(mmio_bar, 1, 0)
    assert name_of_test(pci.manager.mmio.read, mmio_bar) == b"mmio-no-eventfd"
    pci.manager.ports.write(io_bar & ~3, 1, 0)
    assert name_of_test(pci.manager.ports.read, io_bar & ~3) == b"portio-no-event"


def test_a_guest_moves_a_bar(pci: Pci) -> None:
    device = PciTestdev()
    slot = pci.platform.add_function(device.function)
    old = pci.ecam(slot, 0x10, 4)
    new = pci.platform.resources.mmio32.start + 0x10_0000
    pci.ecam(slot, 0x10, 4, new)
    mmio = pci.manager.mmio
    assert mmio.find(old, 1).name == "unclaimed"
    mmio.write(new, 1, 1)  # test 1, through the moved BAR
    assert mmio.read(new, 1) == 1
    # Sizing as an OS does: decode off, all ones, size read back, restore, decode on.
    pci.ecam(slot, 0x04, 2, 0)
    assert mmio.find(new, 1).name == "unclaimed"
    pci.ecam(slot, 0x10, 4, 0xFFFF_FFFF)
    assert pci.ecam(slot, 0x10, 4) == 0xFFFF_F000  # 4 KiB, 32-bit, not prefetchable
    pci.ecam(slot, 0x10, 4, new)
    pci.ecam(slot, 0x04, 2, Command.MEMORY_SPACE | Command.IO_SPACE)
    assert mmio.read(new, 1) == 1


@pytest.mark.parametrize(
    "where",
    [
        0x10_0000,  # RAM
        MEMORY - 0x800,  # straddling the end of RAM
        IOAPIC_ADDRESS,
        LAPIC_ADDRESS,
        KVM_TSS_ADDRESS,
        IOMEM_ADDRESS + IOMEM_LENGTH - 0x1000,  # pc-testdev's iomem, once it is on the bus
        "ecam",  # the ECAM window itself
        "other",  # another function's BAR
    ],
)
def test_a_bar_over_something_else_is_left_unmapped(pci: Pci, where: int | str) -> None:
    pci.manager.add(PlacedDevice("iomem", None, (mmio(IOMEM_ADDRESS, IOMEM_LENGTH, _Ram(), "iomem"),)))
    other = PciTestdev()
    other_slot = pci.platform.add_function(other.function)
    device = PciTestdev()
    slot = pci.platform.add_function(device.function)
    home = pci.ecam(slot, 0x10, 4)
    target = {"ecam": pci.platform.resources.ecam_base, "other": pci.ecam(other_slot, 0x10, 4)}.get(
        str(where), where
    )
    assert isinstance(target, int)
    target &= 0xFFFF_F000
    before = pci.manager.mmio.find(target, 1)
    pci.ecam(slot, 0x10, 4, target)  # must not raise
    assert pci.ecam(slot, 0x10, 4) == target  # the register holds what the guest wrote
    assert pci.manager.mmio.find(target, 1) is before  # whatever was there stays
    assert pci.manager.mmio.find(home, 1).name == "unclaimed"
    # Moved somewhere free, it is mapped again.
    pci.ecam(slot, 0x10, 4, home)
    pci.manager.mmio.write(home, 1, 2)
    assert pci.manager.mmio.read(home, 1) == 2


def _answers(pci: Pci, base: int, test: int) -> bool:
    """Whether a pci-testdev's BAR 0 decodes at `base`: it takes a test number there
    and reads it back (nothing else on the bus would)."""
    pci.manager.mmio.write(base, 1, test)
    return pci.manager.mmio.find(base, 1).name.endswith("BAR0") and pci.manager.mmio.read(base, 1) == test


def _overlapped(pci: Pci) -> tuple[int, int, int, list[tuple[int, object]]]:
    """Function A (slot returned first) moved onto function B's BAR 0 and refused
    there; A's observer's reports. (A's slot, B's slot, the contested address, reports)."""
    reports: list[tuple[int, object]] = []
    b = pci.platform.add_function(PciTestdev().function, name="b")
    a = pci.platform.add_function(
        PciTestdev().function, name="a", observer=lambda index, mapped: reports.append((index, mapped))
    )
    target = pci.ecam(b, 0x10, 4)
    pci.ecam(a, 0x10, 4, target)
    assert pci.manager.mmio.find(target, 1).name == "b 00:01.0 BAR0"  # the newcomer lost
    assert reports[-1] == (0, None)
    return a, b, target, reports


@pytest.mark.parametrize("how", ["moved", "decode off", "removed", "moved, then A rewritten"])
def test_a_refused_bar_decodes_once_the_overlap_is_gone(pci: Pci, how: str) -> None:
    """A BAR decodes wherever it is programmed (PCI 3.0 §6.2.5.1): refused only while
    another range holds its place, it is mapped as soon as that range goes, whichever
    way it goes, as an OS that reassigns BARs one by one through an overlap expects."""
    a, b, target, reports = _overlapped(pci)
    elsewhere = pci.platform.resources.mmio32.start + 0x20_0000
    if how == "decode off":
        pci.ecam(b, 0x04, 2, Command.IO_SPACE)
    elif how == "removed":
        pci.platform.remove_function(b)
    else:
        pci.ecam(b, 0x10, 4, elsewhere)
        assert _answers(pci, elsewhere, 1)
    if how == "moved, then A rewritten":
        pci.ecam(a, 0x10, 4, target)
    assert pci.manager.mmio.find(target, 1).name == "a 00:02.0 BAR0"
    assert _answers(pci, target, 2)
    assert reports[-1] == (0, pci.platform.slots[a].function.bars.decoded(0))
    # Sized and put back as an OS does, it stays where it is.
    pci.ecam(a, 0x10, 4, 0xFFFF_FFFF)
    pci.ecam(a, 0x10, 4, target)
    assert _answers(pci, target, 0)


def test_a_refused_bar_rewritten_with_the_same_value_maps_once_free(pci: Pci) -> None:
    """The overlap goes without any PCI register changing (a range of another device
    leaves the bus): writing the BAR again with the value it holds maps it, as it
    would decode on real hardware."""
    slot = pci.platform.add_function(PciTestdev().function, name="a")
    target = pci.platform.resources.mmio32.start + 0x30_0000
    other = pci.manager.mmio.insert(target, 0x1000, _Ram(), "other")
    pci.ecam(slot, 0x10, 4, target)
    assert pci.manager.mmio.find(target, 1) is other
    pci.manager.mmio.remove(other)
    pci.ecam(slot, 0x10, 4, target)  # the same value: no byte of the register changes
    assert _answers(pci, target, 1)
    # So does an unchanged Command write (Memory Space already on).
    pci.ecam(slot, 0x10, 4, target + 0x1000)
    other = pci.manager.mmio.insert(target, 0x1000, _Ram(), "other")
    pci.ecam(slot, 0x10, 4, target)
    assert pci.manager.mmio.find(target, 1) is other
    pci.manager.mmio.remove(other)
    pci.ecam(slot, 0x04, 2, pci.ecam(slot, 0x04, 2))
    assert _answers(pci, target, 2)


def test_a_refusal_over_ram_stays_refused_on_rewrites(pci: Pci) -> None:
    """Retrying does not map what can never be mapped."""
    slot = pci.platform.add_function(PciTestdev().function)
    pci.ecam(slot, 0x10, 4, 0x10_0000)
    pci.ecam(slot, 0x10, 4, 0x10_0000)
    pci.ecam(slot, 0x04, 2, pci.ecam(slot, 0x04, 2))
    assert pci.manager.mmio.find(0x10_0000, 1).name == "unclaimed"
    assert pci.platform.slots[slot].mapped.get(0) is None


def test_a_guest_looping_over_ram_is_logged_once(pci: Pci, caplog: pytest.LogCaptureFixture) -> None:
    device = PciTestdev()
    slot = pci.platform.add_function(device.function)
    caplog.set_level(logging.WARNING, logger="pyvmm.platform.pci")
    for attempt in range(50):
        pci.ecam(slot, 0x10, 4, 0x10_0000 + attempt * 0x1000)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "overlaps RAM" in warnings[0].getMessage()


def test_an_io_bar_over_a_legacy_device_is_left_unmapped(pci: Pci) -> None:
    device = PciTestdev()
    slot = pci.platform.add_function(device.function)
    pci.cf8(slot, 0x14, 4, 0x3F8)  # COM1 (256 ports from 0x300: the UART's among them)
    assert pci.manager.ports.find(0x3F8, 1).name == "serial (COM1)"
    assert pci.manager.ports.find(0x300, 1).name == "unclaimed"
    pci.cf8(slot, 0x14, 4, 0xD000)
    assert pci.manager.ports.find(0xD000, 1).name.endswith("BAR1")


class _Ram:
    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def test_a_64_bit_bar_moves_in_two_reports(pci: Pci) -> None:
    function = PciFunction(TEST_IDS, bars={0: BarSpec(BarKind.MEMORY64, 0x4000, prefetchable=True)})
    function.set_bar_handler(0, _Ram())
    slot = pci.platform.add_function(function)
    r = pci.platform.resources
    placed = pci.ecam(slot, 0x14, 4) << 32 | pci.ecam(slot, 0x10, 4) & ~0xF
    assert r.mmio64.start <= placed < r.mmio64.end
    assert pci.manager.mmio.find(placed, 8).name.endswith("BAR0")
    target = r.mmio64.start + 0x1_0000_0000
    pci.ecam(slot, 0x10, 4, target & 0xFFFF_FFFF)  # low half first: a range below 4 GiB for a moment
    pci.ecam(slot, 0x14, 4, target >> 32)
    assert pci.manager.mmio.find(target, 8).name.endswith("BAR0")
    assert pci.manager.mmio.find(placed, 8).name == "unclaimed"
    # The moment in between was at (old high << 32) | new low; nothing is left there.
    assert pci.manager.mmio.find(placed & ~0xFFFF_FFFF | target & 0xFFFF_FFFF, 8).name == "unclaimed"


def test_intx_follows_the_swizzle_and_gsis_are_shared(pci: Pci) -> None:
    # The _PRT's GSIs are PCI's in the resource allocator: no other device gets them.
    assert [pci.manager.resources.gsis.owner(gsi) for gsi in range(16, 21)] == ["PCI INTx"] * 4 + [None]
    functions = []
    for pin in (InterruptPin.INTA, InterruptPin.INTA, InterruptPin.INTB):
        functions.append(PciFunction(TEST_IDS, interrupt_pin=pin))
    slots = [pci.platform.add_function(f) for f in functions]
    gsis = [gsi_for(slot, pin - 1) for slot, pin in zip(slots, (1, 1, 2), strict=True)]
    for slot, gsi in zip(slots, gsis, strict=True):
        assert pci.cf8(slot, 0x3C, 1) == gsi  # Interrupt Line, as a BIOS writes it
    assert gsis == [17, 18, 16]  # slots 1, 2 (INTA) and 3 (INTB)
    shared = PciFunction(TEST_IDS, interrupt_pin=InterruptPin.INTA)
    shared_slot = pci.platform.add_function(shared, slots[0] + 4)  # +4 slots: the same GSI
    line = pci.lines[gsis[0]]
    functions[0].set_intx(True)
    shared.set_intx(True)
    functions[0].set_intx(False)
    assert line.levels == [True]  # still asserted by the other pin
    shared.set_intx(False)
    assert line.levels == [True, False]
    # Interrupt Disable holds the pin low.
    pci.cf8(shared_slot, 0x04, 2, Command.INTX_DISABLE)
    shared.set_intx(True)
    assert line.levels == [True, False]


def test_msix_messages_reach_the_sender(pci: Pci) -> None:
    function = PciFunction(TEST_IDS, bars={0: BarSpec(BarKind.MEMORY32, 0x1000)})
    table = MsixTable(2)
    capability = MsixCapability(
        function.capabilities, table, table_bar=0, table_offset=0, pba_bar=0, pba_offset=0x800
    )
    regions = BarRegions(0x1000)
    regions.add(0, table.table_size, table.table)
    regions.add(0x800, table.pba_size, table.pba)
    function.set_bar_handler(0, regions)
    slot = pci.platform.add_function(function, msix=table)
    bar = pci.ecam(slot, 0x10, 4)
    mmio = pci.manager.mmio
    mmio.write(bar + 16, 4, 0xFEE0_0000)  # vector 1: address, data, unmask
    mmio.write(bar + 24, 4, 0x4041)
    mmio.write(bar + 28, 4, 0)
    pci.ecam(slot, capability.offset + 2, 2, 1 << 15)  # MSI-X Enable
    assert table.signal(1)
    assert pci.messages == [(0xFEE0_0000, 0x4041)]
    mmio.write(bar + 24, 4, 0x4042)  # rewritten while unmasked: the route follows
    assert table.signal(1)
    assert pci.messages[-1] == (0xFEE0_0000, 0x4042)
    pci.platform.remove_function(slot)  # the function's vectors are closed with it
    table.signal(1)
    assert len(pci.messages) == 2


def test_acpi_and_the_memory_map(pci: Pci) -> None:
    r = pci.platform.resources
    tables = build_acpi_tables(
        1, power=ACPI_POWER, devices=pci.manager.aml(), tables=pci.platform.acpi_tables()
    )
    mcfg = tables.table("MCFG").data
    base, segment, start, end = struct.unpack_from("<QHBB", mcfg, 44)
    assert (base, segment, start, end) == (r.ecam_base, 0, 0, 0)
    xsdt = tables.table("XSDT").data
    pointers = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    assert tables.table("MCFG").address in pointers
    assert pci.platform.reserved() == ((r.ecam_base, r.ecam_base + r.ecam_size),)
    dsdt = tables.table("DSDT").data
    assert b"PCI0" in dsdt and b"_PRT" in dsdt and b"PCIR" in dsdt
    # The windows avoid RAM, the ECAM window, the IOAPIC/LAPIC pages, pc-testdev and KVM's pages.
    windows = pci.platform.windows
    avoid = [(0, MEMORY), (r.ecam_base, r.ecam_base + r.ecam_size), (IOAPIC_ADDRESS, 0x1_0000_0000)]
    for base, length in (windows.mmio32, windows.mmio64):
        assert base >= MMIO_HOLE_START
        for lo, hi in avoid:
            assert base + length <= lo or hi <= base, (hex(base), hex(lo))
    assert windows.io == [(0xC000, 0x4000)]


def test_remove_function_takes_its_ranges_off(pci: Pci) -> None:
    device = PciTestdev()
    slot = pci.platform.add_function(device.function)
    bar = pci.ecam(slot, 0x10, 4)
    pci.platform.remove_function(slot)
    assert pci.manager.mmio.find(bar, 1).name == "unclaimed"
    assert pci.ecam(slot, 0, 2) == 0xFFFF
    again = PciTestdev()
    assert pci.platform.add_function(again.function) == slot
    assert pci.ecam(slot, 0x10, 4) == bar  # its window space was given back too


# --- a real guest on /dev/kvm (tests/guests/pcitest) ------------------------------


def run_pcitest(guests: Path, *devices: str) -> tuple[RunResult, str]:
    config = MachineConfig(
        kernel=str(guests / "pcitest.elf"), memory="128M", timeout=120, test_devices=devices
    )
    result = Machine(config).run()
    return result, result.console_text


@pytest.mark.kvm
def test_a_guest_walks_sizes_moves_and_tests_pci_testdev(guests: Path) -> None:
    result, text = run_pcitest(guests, "pci-testdev", "pc-testdev")
    assert "pcitest ok failures=0" in text, text
    assert result.exit.kind is ExitKind.DEBUG_EXIT and result.status == 1, result.exit.describe()
    lines = text.splitlines()
    assert "cf8 00:00.0 id=1b36:0008 class=060000" in lines
    assert "cf8 00:01.0 id=1b36:0005 class=ff0000" in lines
    assert "ecam 00:01.0 id=1b36:0005" in lines
    assert "mcfg ecam=0xe0000000" in lines
    assert "testdev bar0=0xc0000000 bar1=0xc001 command=0x3" in lines
    assert "testdev size0=0x1000 size1=0x100" in lines
    for name in ("mmio-no-eventfd", "mmio-datamatch-eventfd", "portio-wildcard-eventfd"):
        assert f"testdev {name} count=16" in lines
    assert "testdev tests=6" in lines and "overlap survived" in lines and "pc-testdev ok" in lines


@pytest.mark.kvm
def test_without_pci_testdev_the_guest_finds_only_the_bridge(guests: Path) -> None:
    result, text = run_pcitest(guests)
    assert "cf8 00:00.0 id=1b36:0008 class=060000" in text
    assert "FAIL pci-testdev on bus 0" in text
    assert result.status == 3  # debug-exit code 1


# --- a machine without PCI (--transport mmio) ---------------------------------------


def test_no_pci_is_a_device_with_nothing_but_pci_off() -> None:
    manager = DeviceManager(ResourceAllocator(MEMORY))
    manager.add(NoPci())
    assert manager.kernel_cmdline("console=ttyS0 -- init-arg") == b"console=ttyS0 pci=off -- init-arg"
    assert manager.aml() == [] and manager.ports.find(0xCF8, 4).name == "unclaimed"
    states = manager.save()
    manager.restore(states)
    assert states == {"pci": DeviceState(())}
    with pytest.raises(StateError, match="pci"):
        manager.restore({"pci": DeviceState((PortSinkState(0),))})


@pytest.mark.kvm
@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_an_mmio_machine_has_no_pci_and_tells_linux(guests: Path, transport: str) -> None:
    config = MachineConfig(kernel=str(guests / "hello.elf"), rng=True, transport=transport)
    machine = Machine(config)
    result = machine.run()
    assert "Hello from the pyvmm demo guest!" in result.console_text, result.exit.describe()
    words = machine.devices.kernel_parameters()
    if transport == "mmio":
        assert machine.pci is None and "pci=off" in words
        assert machine.ports.find(0xCF8, 4).name == "unclaimed"
        assert not any(name.startswith("pci") for name in (r.name for r in result.stats.ranges))
    else:  # the PC keeps its PCI: the host bridge answers, and Linux is not told otherwise
        assert machine.pci is not None and "pci=off" not in words
        assert machine.ports.find(0xCF8, 4).name == "pci-config"


# --- the platform's own saved state (PciHostState) -------------------------------------


@pytest.fixture
def two_pcis() -> Iterator[tuple[Pci, Pci]]:
    """Two PCI platforms built the same way, each with pci-testdev in slot 1."""
    with pc_devices() as first, pc_devices() as second:
        made = (Pci(first), Pci(second))
        for pci in made:
            pci.platform.add_function(PciTestdev().function, name="pci-testdev")
        yield made


LATCHED = 1 << 31 | 1 << 11 | 0x10  # CONFIG_ADDRESS: 00:01.0, BAR 0


def program(pci: Pci) -> None:
    """What a guest leaves in the platform's own registers: the host bridge's Command
    and Cache Line Size, and CONFIG_ADDRESS pointing at pci-testdev's BAR 0."""
    pci.cf8(0, 0x04, 2, Command.BUS_MASTER | Command.SERR_ENABLE)
    pci.cf8(0, 0x0C, 1, 0x10)
    pci.manager.ports.write(0xCF8, 4, LATCHED)


def test_the_platform_saves_its_latch_and_bridge_and_another_takes_them(two_pcis: tuple[Pci, Pci]) -> None:
    first, second = two_pcis
    program(first)
    (state,) = first.platform.save().models
    assert isinstance(state, PciHostState)
    assert state.config_address == LATCHED and state.slots == ((0, 0x1B36, 0x0008), (1, 0x1B36, 0x0005))
    assert second.platform.save() != first.platform.save()

    second.platform.restore(first.platform.save())
    assert second.platform.save() == first.platform.save()
    ports = second.manager.ports
    assert ports.read(0xCF8, 4) == LATCHED
    # No CONFIG_ADDRESS write here: the data port reaches what the first guest latched.
    assert ports.read(0xCFC, 4) == second.ecam(1, 0x10, 4)
    assert second.ecam(0, 0x04, 2) == Command.BUS_MASTER | Command.SERR_ENABLE
    assert second.ecam(0, 0x0C, 1) == 0x10


def test_a_platform_reset_clears_the_latch_and_the_bridge(pci: Pci) -> None:
    pci.platform.add_function(PciTestdev().function)
    bar = pci.ecam(1, 0x10, 4)
    program(pci)
    pci.platform.reset()
    assert pci.manager.ports.read(0xCF8, 4) == 0
    assert pci.ecam(0, 0x04, 2) == 0 and pci.ecam(0, 0x0C, 1) == 0
    assert pci.ecam(1, 0x10, 4) == bar  # the functions are their devices' to reset


def _other_bridge(good: PciHostState) -> PciHostState:
    return replace(good, bridge=replace(good.bridge, config=b"\x86\x80" + good.bridge.config[2:]))


SPOILS: dict[str, Callable[[PciHostState], object]] = {
    "not a DeviceState": lambda good: good,
    "two models": lambda good: DeviceState((good, good)),
    "another model's state": lambda good: DeviceState((PortSinkState(0),)),
    "reserved latch bits": lambda good: DeviceState((replace(good, config_address=LATCHED | 1),)),
    "a latch that is not an int": lambda good: DeviceState((replace(good, config_address=True),)),
    "another bridge": lambda good: DeviceState((_other_bridge(good),)),
    "no function state": lambda good: DeviceState((replace(good, bridge=good.bridge.config),)),
    "a function missing": lambda good: DeviceState((replace(good, slots=good.slots[:1]),)),
    "a function elsewhere": lambda good: DeviceState((replace(good, slots=(good.slots[0], (2, 0x1B36, 5))),)),
    "a slot entry too short": lambda good: DeviceState((replace(good, slots=(good.slots[0], (1, 0x1B36))),)),
    "a slot past 31": lambda good: DeviceState((replace(good, slots=(*good.slots, (32, 0x1B36, 5))),)),
    "slots in a list": lambda good: DeviceState((replace(good, slots=list(good.slots)),)),
}


@pytest.mark.parametrize("spoil", list(SPOILS))
def test_a_spoiled_platform_state_changes_nothing(two_pcis: tuple[Pci, Pci], spoil: str) -> None:
    first, second = two_pcis
    program(first)
    (good,) = first.platform.save().models
    assert isinstance(good, PciHostState)
    before = second.platform.save()
    with pytest.raises(StateError, match=r"^pci"):
        second.platform.restore(SPOILS[spoil](good))
    assert second.platform.save() == before
    assert second.manager.ports.read(0xCF8, 4) == 0  # the latch was not taken either
