"""virtio-pci, modern (virtio 1.2 §4.1), driven as Linux's virtio_pci_modern does:
find the capabilities in configuration space, then program BAR 0."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtio.driver import Driver
from virtio.echo import ECHO_FEATURE, Echo

from pyvmm.memory import GuestMemory
from pyvmm.pci.capabilities import walk
from pyvmm.pci.msix import MsixSink, MsixVector
from pyvmm.virtio import DeviceStatus, Feature
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.pci import (
    BAR_INDEX,
    ISR_OFFSET,
    MSIX_TABLE_OFFSET,
    NO_VECTOR,
    CapType,
    Common,
    VirtioPciFunction,
)

ACK, DRIVER, FEATURES_OK, DRIVER_OK = 1, 2, 8, 4
COMMAND = 0x04


class Line:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, high: bool) -> None:
        self.levels.append(high)


class Messages(MsixSink):
    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def vector_changed(self, index: int, vector: MsixVector) -> None:
        pass

    def deliver(self, index: int, vector: MsixVector) -> None:
        self.sent.append((index, vector.data))


class PciDriver:
    """The driver's side: capabilities from config space, registers through BAR 0."""

    def __init__(self, pci: VirtioPciFunction) -> None:
        self.pci = pci
        self.config = pci.function.config
        self.bar = pci.function.bar_handler(BAR_INDEX)
        self.caps: dict[int, tuple[int, int, int]] = {}  # cfg_type -> (offset in BAR, length, cap)
        for offset, cap_id in walk(self.config):
            if cap_id != 0x09:
                continue
            cfg_type = self.config.read(offset + 3, 1)
            bar = self.config.read(offset + 4, 1)
            assert bar == BAR_INDEX
            where = self.config.read(offset + 8, 4)
            length = self.config.read(offset + 12, 4)
            self.caps.setdefault(cfg_type, (where, length, offset))

    def common(self, field: Common, size: int, value: int | None = None) -> int:
        base = self.caps[CapType.COMMON][0]
        if value is None:
            return self.bar.read(base + field, size)
        self.bar.write(base + field, size, value)
        return value

    def features(self) -> int:
        self.common(Common.DEVICE_FEATURE_SELECT, 4, 0)
        low = self.common(Common.DEVICE_FEATURE, 4)
        self.common(Common.DEVICE_FEATURE_SELECT, 4, 1)
        return low | self.common(Common.DEVICE_FEATURE, 4) << 32

    def accept(self, features: int) -> int:
        self.common(Common.DEVICE_STATUS, 1, 0)
        self.common(Common.DEVICE_STATUS, 1, ACK)
        self.common(Common.DEVICE_STATUS, 1, ACK | DRIVER)
        for select in (0, 1):
            self.common(Common.DRIVER_FEATURE_SELECT, 4, select)
            self.common(Common.DRIVER_FEATURE, 4, (features >> (32 * select)) & 0xFFFF_FFFF)
        self.common(Common.DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK)
        return self.common(Common.DEVICE_STATUS, 1)

    def setup_queue(self, index: int, ring: Driver, vector: int = NO_VECTOR) -> None:
        self.common(Common.QUEUE_SELECT, 2, index)
        assert self.common(Common.QUEUE_SIZE, 2) >= ring.size
        self.common(Common.QUEUE_SIZE, 2, ring.size)
        for field, address in ((Common.QUEUE_DESC, ring.desc), (Common.QUEUE_DRIVER, ring.avail),
                               (Common.QUEUE_DEVICE, ring.used)):  # fmt: skip
            self.common(field, 4, address & 0xFFFF_FFFF)  # as vp_iowrite64_twopart does
            self.bar.write(self.caps[CapType.COMMON][0] + field + 4, 4, address >> 32)
        self.common(Common.QUEUE_MSIX_VECTOR, 2, vector)
        self.common(Common.QUEUE_ENABLE, 2, 1)

    def kick(self, index: int) -> None:
        self.common(Common.QUEUE_SELECT, 2, index)
        notify_off = self.common(Common.QUEUE_NOTIFY_OFF, 2)
        where, _, cap = self.caps[CapType.NOTIFY]
        multiplier = self.config.read(cap + 16, 4)
        self.bar.write(where + notify_off * multiplier, 2, index)

    def isr(self) -> int:
        return self.bar.read(self.caps[CapType.ISR][0], 1)


@pytest.fixture
def pci(memory: GuestMemory) -> VirtioPciFunction:
    function = VirtioPciFunction(Echo(), memory)
    function.function.intx_line = Line()
    return function


def test_identity_is_modern_only(pci: VirtioPciFunction) -> None:
    config = pci.function.config
    assert config.read(0, 2) == 0x1AF4
    assert config.read(2, 2) == 0x1040 + 4  # the echo device claims the entropy type
    assert config.read(8, 1) == 1  # revision 1: no transitional device
    assert config.read(0x3D, 1) == 1  # INTA


def test_capabilities_point_into_bar_0(pci: VirtioPciFunction) -> None:
    driver = PciDriver(pci)
    assert set(driver.caps) == {CapType.COMMON, CapType.NOTIFY, CapType.ISR, CapType.DEVICE, CapType.PCI}
    assert [cap_id for _, cap_id in walk(pci.function.config)].count(0x11) == 1  # MSI-X
    assert driver.caps[CapType.COMMON][1] >= 56


def test_intx_handshake_echo_and_isr(pci: VirtioPciFunction, memory: GuestMemory) -> None:
    driver = PciDriver(pci)
    offered = driver.features()
    assert offered & Feature.VERSION_1 and offered & ECHO_FEATURE
    assert driver.accept(int(Feature.VERSION_1)) & FEATURES_OK
    ring = Driver(memory, 8)
    driver.setup_queue(0, ring)
    driver.common(Common.DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    head = ring.add([b"hello"], [5])
    driver.kick(0)
    assert ring.get_used() == [(head, 5)]
    line = pci.function.intx_line
    assert isinstance(line, Line) and line.levels[-1] is True
    assert driver.isr() == 1  # used buffer; reading clears and lowers INTx
    assert line.levels[-1] is False and driver.isr() == 0


def test_a_legacy_driver_is_refused(pci: VirtioPciFunction) -> None:
    assert not PciDriver(pci).accept(ECHO_FEATURE) & FEATURES_OK


def test_msix_vectors_per_queue(pci: VirtioPciFunction, memory: GuestMemory) -> None:
    driver = PciDriver(pci)
    sink = Messages()
    pci.msix.sink = sink
    cap = next(offset for offset, cap_id in walk(pci.function.config) if cap_id == 0x11)
    pci.function.config.write(cap + 2, 2, 1 << 15)  # MSI-X Enable
    for vector in range(2):  # address, data = 0x40 + vector, unmasked
        entry = MSIX_TABLE_OFFSET + 16 * vector
        driver.bar.write(entry, 4, 0xFEE0_0000)
        driver.bar.write(entry + 8, 4, 0x40 + vector)
        driver.bar.write(entry + 12, 4, 0)
    driver.accept(int(Feature.VERSION_1))
    driver.common(Common.CONFIG_MSIX_VECTOR, 2, 0)
    assert driver.common(Common.CONFIG_MSIX_VECTOR, 2) == 0
    ring = Driver(memory, 8)
    driver.setup_queue(0, ring, vector=1)
    driver.common(Common.QUEUE_SELECT, 2, 0)
    assert driver.common(Common.QUEUE_MSIX_VECTOR, 2) == 1
    driver.common(Common.DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    ring.add([b"x"], [1])
    driver.kick(0)
    assert sink.sent == [(1, 0x41)]
    driver.common(Common.QUEUE_MSIX_VECTOR, 2, 7)  # past the table (2 vectors): not mapped
    assert driver.common(Common.QUEUE_MSIX_VECTOR, 2) == NO_VECTOR
    ring.add([b"y"], [1])
    driver.kick(0)
    assert sink.sent == [(1, 0x41)]  # §4.1.5.4: NO_VECTOR with MSI-X on: no interrupt


def test_an_unmappable_vector_reads_back_no_vector(pci: VirtioPciFunction) -> None:
    driver = PciDriver(pci)
    driver.common(Common.CONFIG_MSIX_VECTOR, 2, 5)
    assert driver.common(Common.CONFIG_MSIX_VECTOR, 2) == NO_VECTOR


def test_a_bad_ring_needs_reset_with_a_config_interrupt(pci: VirtioPciFunction, memory: GuestMemory) -> None:
    driver = PciDriver(pci)
    driver.accept(int(Feature.VERSION_1))
    ring = Driver(memory, 8)
    driver.setup_queue(0, ring)
    driver.common(Common.DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    ring.write_desc(0, 0x20000, 4, 1, 0)  # a loop
    ring.publish(0)
    driver.kick(0)
    assert driver.common(Common.DEVICE_STATUS, 1) & DeviceStatus.DEVICE_NEEDS_RESET
    assert driver.isr() & 2


def test_the_pci_cfg_capability_reaches_the_bar(pci: VirtioPciFunction) -> None:
    driver = PciDriver(pci)
    cap = driver.caps[CapType.PCI][2]
    config = pci.function.config
    config.write(cap + 8, 4, Common.NUM_QUEUES)  # offset in BAR 0 of num_queues
    config.write(cap + 12, 4, 2)
    assert config.read(cap + 16, 4) == 1
    config.write(cap + 8, 4, Common.QUEUE_SELECT)
    config.write(cap + 16, 4, 3)
    assert pci.core.queue_select == 3


def test_common_config_is_little_endian_and_bounded(pci: VirtioPciFunction) -> None:
    driver = PciDriver(pci)
    assert driver.common(Common.NUM_QUEUES, 2) == 1
    assert driver.bar.read(0x1000 - 4, 4) == 0  # inside the page, past the structure
    assert driver.bar.read(ISR_OFFSET + 8, 1) == 0
    driver.common(Common.QUEUE_SELECT, 2, 9)
    assert driver.common(Common.QUEUE_SIZE, 2) == 0  # no such queue


class RacingSelect(VirtioCore):
    """A core whose queue_select another vCPU rewrites right after every read of it:
    a read returns what the field holds, then `then` lands there. `reads` counts them."""

    then = 0
    reads = 0

    @property
    def queue_select(self) -> int:
        value: int = vars(self)["_select"]
        vars(self)["_select"] = self.then
        self.reads += 1
        return value

    @queue_select.setter
    def queue_select(self, value: int) -> None:
        vars(self)["_select"] = value


def race_queue_select(pci: VirtioPciFunction, then: int) -> RacingSelect:
    """From now on, every read of `pci`'s queue_select is followed by a write of `then`."""
    core = pci.core
    vars(core)["_select"] = vars(core).pop("queue_select")
    core.__class__ = RacingSelect
    assert isinstance(core, RacingSelect)
    core.then = then
    return core


def programmed_queue_0(pci: VirtioPciFunction, memory: GuestMemory) -> tuple[PciDriver, Driver]:
    """Queue 0 programmed (vector 1, not enabled) and selected, features accepted."""
    driver = PciDriver(pci)
    driver.accept(int(Feature.VERSION_1))
    ring = Driver(memory, 4)
    driver.common(Common.QUEUE_SELECT, 2, 0)
    driver.common(Common.QUEUE_SIZE, 2, ring.size)
    driver.common(Common.QUEUE_DESC, 8, ring.desc)
    driver.common(Common.QUEUE_MSIX_VECTOR, 2, 1)
    return driver, ring


@pytest.mark.parametrize(
    ("field", "size", "expected"),
    [
        (Common.QUEUE_SIZE, 2, 4),
        (Common.QUEUE_MSIX_VECTOR, 2, 1),
        (Common.QUEUE_ENABLE, 2, 0),
        (Common.QUEUE_NOTIFY_OFF, 2, 0),
        (Common.QUEUE_DESC, 8, None),
        (Common.QUEUE_SELECT, 2, 0),
        (Common.NUM_QUEUES, 2, 1),
    ],
)
def test_a_common_read_uses_the_queue_select_it_read_once(
    pci: VirtioPciFunction, memory: GuestMemory, field: Common, size: int, expected: int | None
) -> None:
    """Another vCPU selects a queue past the last in the middle of the read: the read
    answers for the queue selected when it began (a second look at queue_select used
    to index the vectors past their end: IndexError on the vCPU thread)."""
    driver, ring = programmed_queue_0(pci, memory)
    core = race_queue_select(pci, then=0xFFFF)
    assert driver.common(field, size) == (ring.desc if expected is None else expected)
    assert core.reads == 1
    assert driver.common(Common.QUEUE_SIZE, 2) == 0  # the other vCPU's select has landed


@pytest.mark.parametrize(
    ("field", "size", "value"),
    [(Common.QUEUE_MSIX_VECTOR, 2, 0), (Common.QUEUE_SIZE, 2, 2), (Common.QUEUE_DESC, 4, 0x5000)],
)
def test_a_common_write_uses_the_queue_select_it_read_once(
    pci: VirtioPciFunction, memory: GuestMemory, field: Common, size: int, value: int
) -> None:
    driver, ring = programmed_queue_0(pci, memory)
    core = race_queue_select(pci, then=0xFFFF)
    driver.common(field, size, value)
    assert core.reads == 1
    queue = core.queues[0]
    assert (pci.queue_vectors[0], queue.size, queue.desc_table) == {
        Common.QUEUE_MSIX_VECTOR: (0, 4, ring.desc),
        Common.QUEUE_SIZE: (1, 2, ring.desc),
        Common.QUEUE_DESC: (1, 4, ring.desc & ~0xFFFF_FFFF | 0x5000),
    }[field]


def test_queue_enable_enables_the_queue_selected_when_the_write_began(
    pci: VirtioPciFunction, memory: GuestMemory
) -> None:
    """VirtioCore.enable_queue used to read queue_select again: another vCPU's select
    in between enabled that queue, or none."""
    driver, _ring = programmed_queue_0(pci, memory)
    core = race_queue_select(pci, then=0xFFFF)
    driver.common(Common.QUEUE_ENABLE, 2, 1)
    assert core.reads == 1
    assert core.queues[0].ready


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x8000), st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**64 - 1),
                          st.booleans()), max_size=40))  # fmt: skip
def test_arbitrary_bar_and_config_accesses_never_raise(accesses: list[tuple[int, int, int, bool]]) -> None:
    memory = GuestMemory([(0, 1 << 20)])
    try:
        pci = VirtioPciFunction(Echo(), memory)
        bar = pci.function.bar_handler(BAR_INDEX)
        for offset, size, value, is_write in accesses:
            if is_write:
                bar.write(offset, size, value & ((1 << (8 * size)) - 1))
                pci.function.config_write(offset & 0xFFF, min(size, 4), value & 0xFFFF_FFFF)
            else:
                assert 0 <= bar.read(offset, size) < 1 << (8 * size)
                pci.function.config_read(offset & 0xFFF, min(size, 4))
        struct.pack("<H", pci.core.queue_select & 0xFFFF)
    finally:
        memory.close()
