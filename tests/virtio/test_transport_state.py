"""Saved state of the virtio transports (pyvmm/virtio/transport_state.py): for each
device model on virtio-pci and on virtio-mmio, a driver sets the device up through
the transport's registers and does I/O, the state is saved, a fresh device on a fresh
transport restores it, and the driver carries on with the same rings (used positions
and interrupts continue); each field of a saved transport state, spoiled, is refused
and changes nothing."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtio import test_mmio as mmio_driver
from virtio.driver import WRITE, Driver
from virtio.test_console import Output
from virtio.test_pci import ACK, DRIVER, DRIVER_OK, FEATURES_OK, Line, Messages, PciDriver

from pyvmm.device_config import DiskConfig
from pyvmm.errors import StateError
from pyvmm.memory import GuestMemory
from pyvmm.pci.bar import BarRange, Space
from pyvmm.pci.capabilities import walk
from pyvmm.pci.registers import COMMAND, Command
from pyvmm.virtio import Feature
from pyvmm.virtio.block import HEADER, S_OK, T_IN, BlockDevice
from pyvmm.virtio.console import ConsoleDevice
from pyvmm.virtio.device import VirtioDevice
from pyvmm.virtio.mmio import Reg, VirtioMmio
from pyvmm.virtio.pci import BAR_SIZE, NO_VECTOR, Common, VirtioPciFunction
from pyvmm.virtio.rng import EntropyDevice
from pyvmm.virtio.transport_state import VirtioMmioState, VirtioPciState

FEATURES = int(Feature.VERSION_1 | Feature.EVENT_IDX)
RING = 16
BAR_BASE = 0x1_C000_0000


class Kind(Protocol):
    """A device model, one request of its kind, and how to check it was served."""

    queues: int
    queue: int  # the queue the request goes on

    def make(self) -> VirtioDevice: ...

    def request(self, ring: Driver, memory: GuestMemory) -> Callable[[int], None]: ...


class Rng:
    queues, queue = 1, 0

    def make(self) -> VirtioDevice:
        return EntropyDevice()

    def request(self, ring: Driver, memory: GuestMemory) -> Callable[[int], None]:
        buffer = ring.alloc(32)
        memory.fill(buffer, 32, 0)
        ring.add_elements([(buffer, 32, WRITE)])
        return lambda used: (used == 32 and memory.read(buffer, 32) != bytes(32)) or pytest.fail("no bytes")


class Blk:
    queues, queue = 1, 0

    def __init__(self, image: Path) -> None:
        self.image = image
        self.contents = image.read_bytes()

    def make(self) -> VirtioDevice:
        return BlockDevice(DiskConfig(str(self.image), False, None), workers=0)

    def request(self, ring: Driver, memory: GuestMemory) -> Callable[[int], None]:
        sector = len(ring.chains) + ring.last_used  # a different sector each time
        header = ring.alloc(16, HEADER.pack(T_IN, 0, sector))
        data = ring.alloc(513)
        ring.add_elements([(header, 16, 0), (data, 512, WRITE), (data + 512, 1, WRITE)])

        def check(used: int) -> None:
            assert used == 513 and memory.read_u8(data + 512) == S_OK
            assert memory.read(data, 512) == self.contents[512 * sector : 512 * sector + 512]

        return check


class Console:
    queues, queue = 2, 1  # transmitq

    def __init__(self) -> None:
        self.output = Output()

    def make(self) -> VirtioDevice:
        self.output = Output()
        return ConsoleDevice(self.output, size=(80, 25))

    def request(self, ring: Driver, memory: GuestMemory) -> Callable[[int], None]:
        text = os.urandom(8)
        ring.add([text], [])
        return lambda used: (used == 0 and self.output.data.endswith(text)) or pytest.fail("no output")


@pytest.fixture(params=["rng", "blk", "console"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Kind:
    if request.param == "blk":
        image = tmp_path / "disk.img"
        image.write_bytes(os.urandom(1 << 16))
        return Blk(image)
    return Rng() if request.param == "rng" else Console()


@pytest.fixture
def devices() -> Iterator[list[VirtioDevice]]:
    made: list[VirtioDevice] = []
    yield made
    for device in made:
        device.close()


def rings(memory: GuestMemory, count: int) -> list[Driver]:
    return [
        Driver(memory, RING, desc=0x1000 + 0x1000 * i, data=0x10000 + 0x10000 * i, event_idx=True)
        for i in range(count)
    ]


# --- virtio-pci --------------------------------------------------------------------------


def pci_transport(device: VirtioDevice, memory: GuestMemory) -> tuple[VirtioPciFunction, Messages]:
    transport = VirtioPciFunction(device, memory)
    transport.function.intx_line = Line()
    sink = Messages()
    transport.msix.sink = sink
    return transport, sink


def pci_started(
    kind: Kind, device: VirtioDevice, memory: GuestMemory
) -> tuple[VirtioPciFunction, Messages, PciDriver, list[Driver]]:
    transport, sink = pci_transport(device, memory)
    config = transport.function.config
    config.write(0x10, 4, BAR_BASE & 0xFFFF_FFFF)
    config.write(0x14, 4, BAR_BASE >> 32)
    config.write(COMMAND, 2, Command.MEMORY_SPACE | Command.BUS_MASTER)
    driver = PciDriver(transport)
    # MSI-X on, one vector per queue (vector i + 1), configuration changes on vector 0.
    for index in range(transport.msix.count):
        transport.msix.table.write(16 * index, 4, 0xFEE0_0000)
        transport.msix.table.write(16 * index + 8, 4, 0x30 + index)
        transport.msix.table.write(16 * index + 12, 4, 0)
    control = driver.config.read(msix_offset(transport) + 2, 2)
    driver.config.write(msix_offset(transport) + 2, 2, control | 1 << 15)
    assert driver.accept(FEATURES) & FEATURES_OK
    driver.common(Common.CONFIG_MSIX_VECTOR, 2, 0)
    queues = rings(memory, kind.queues)
    for index, ring in enumerate(queues):
        driver.setup_queue(index, ring, vector=index + 1)
    driver.common(Common.DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    return transport, sink, driver, queues


def msix_offset(transport: VirtioPciFunction) -> int:
    return next(offset for offset, cap in walk(transport.function.config) if cap == 0x11)


def serve(kind: Kind, ring: Driver, memory: GuestMemory, kick: Callable[[], None]) -> int:
    check = kind.request(ring, memory)
    ring.enable_cb()
    kick()
    used = ring.get_used()
    assert len(used) == 1
    check(used[0][1])
    return used[0][0]


def test_a_device_on_virtio_pci_carries_on_after_restore(
    kind: Kind, memory: GuestMemory, devices: list[VirtioDevice]
) -> None:
    devices.append(kind.make())
    transport, sink, driver, queues = pci_started(kind, devices[0], memory)
    ring = queues[kind.queue]
    serve(kind, ring, memory, lambda: driver.kick(kind.queue))
    assert (kind.queue + 1, 0x31 + kind.queue) in sink.sent
    state = transport.save()
    assert state.queue_vectors == tuple(range(1, kind.queues + 1)) and state.config_vector == 0
    devices.pop().close()  # the old VMM is gone (and the disk's lock with it)

    devices.append(kind.make())
    fresh, fresh_sink = pci_transport(devices[0], memory)
    changes: list[tuple[int, BarRange | None, BarRange | None]] = []
    fresh.function.bars.on_bar_change = lambda index, old, new: changes.append((index, old, new))
    fresh.restore(state)
    assert fresh.save() == state
    assert changes == [(0, None, BarRange(Space.MEMORY, BAR_BASE, BAR_SIZE))]  # as a guest's BAR write
    fresh_driver = PciDriver(fresh)
    assert fresh_driver.common(Common.DEVICE_STATUS, 1) == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    fresh_driver.common(Common.QUEUE_SELECT, 2, kind.queue)
    assert fresh_driver.common(Common.QUEUE_MSIX_VECTOR, 2) == kind.queue + 1
    serve(kind, ring, memory, lambda: fresh_driver.kick(kind.queue))
    assert ring.used_idx() == 2
    assert fresh_sink.sent == [(kind.queue + 1, 0x31 + kind.queue)]  # the same vector, the same message


def test_an_intx_device_restores_its_isr_and_line(memory: GuestMemory, devices: list[VirtioDevice]) -> None:
    devices.append(EntropyDevice())
    transport, _ = pci_transport(devices[0], memory)
    driver = PciDriver(transport)
    assert driver.accept(FEATURES) & FEATURES_OK
    (ring,) = rings(memory, 1)
    driver.setup_queue(0, ring)
    driver.common(Common.DEVICE_STATUS, 1, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    check = Rng().request(ring, memory)
    ring.enable_cb()
    driver.kick(0)
    check(ring.get_used()[0][1])
    state = transport.save()
    assert state.isr == 1 and state.function.intx_asserted

    devices.append(EntropyDevice())
    fresh, _ = pci_transport(devices[1], memory)
    fresh.restore(state)
    line = fresh.function.intx_line
    assert isinstance(line, Line) and line.levels[-1] is True
    assert PciDriver(fresh).isr() == 1 and line.levels[-1] is False


def pci_spoilers(state: VirtioPciState) -> dict[str, st.SearchStrategy[object]]:
    queues = len(state.queue_vectors)
    return {
        "config_vector": st.sampled_from([-1, 0x10000, queues + 1, 0xFFFE, True, None]),
        "queue_vectors": st.sampled_from(
            [(), (NO_VECTOR,) * (queues + 1), [1] * queues, (queues + 1,) * queues]
        ),
        "isr": st.sampled_from([4, -1, 0x100, "1"]),
        "function": st.sampled_from(
            [
                None,
                state.msix,
                dataclasses.replace(state.function, config=state.function.config[:256]),
                dataclasses.replace(state.function, config=bytes(4096)),  # not this function's IDs
                dataclasses.replace(state.function, intx_asserted=True),  # Status says no
            ]
        ),
        "msix": st.sampled_from(
            [
                None,
                dataclasses.replace(state.msix, enabled=False),  # Message Control says on
                dataclasses.replace(state.msix, entries=state.msix.entries[:-1]),
            ]
        ),
        "core": st.sampled_from(
            [
                None,
                dataclasses.replace(state.core, status=ACK),  # active, not DRIVER_OK
                dataclasses.replace(state.core, queues=state.core.queues[:-1]),
                dataclasses.replace(state.core, device=None),
            ]
        ),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_spoiled_pci_state_is_refused_and_changes_nothing(memory: GuestMemory, data: st.DataObject) -> None:
    made: list[VirtioDevice] = [EntropyDevice(), EntropyDevice()]
    try:
        source, _, _, _ = pci_started(Rng(), made[0], memory)
        state = source.save()
        target, _, _, _ = pci_started(Rng(), made[1], memory)
        target.function.config.write(0x10, 4, 0xD000_0000)  # somewhere else than the saved one
        before = target.save()
        spoilers = pci_spoilers(state)
        field = data.draw(st.sampled_from(sorted(spoilers)))
        bad = dataclasses.replace(state, **{field: data.draw(spoilers[field])})
        with pytest.raises(StateError):
            target.restore(bad)
        assert target.save() == before
        assert target.function.bars.decoded(0) == BarRange(Space.MEMORY, 0x1_D000_0000, BAR_SIZE)
    finally:
        for device in made:
            device.close()


def test_reset_is_a_function_level_reset(memory: GuestMemory, devices: list[VirtioDevice]) -> None:
    devices.append(EntropyDevice())
    transport, _, _, _ = pci_started(Rng(), devices[0], memory)
    transport.reset()
    assert transport.function.bars.decoded(0) is None and not transport.msix.enabled
    assert transport.core.status == 0 and transport.config_vector == NO_VECTOR


# --- virtio-mmio -------------------------------------------------------------------------


def mmio_started(
    kind: Kind, device: VirtioDevice, memory: GuestMemory
) -> tuple[VirtioMmio, Line, list[Driver]]:
    line = Line()
    transport = VirtioMmio(device, memory, line)
    queues = rings(memory, kind.queues)
    assert mmio_driver.negotiate(transport, FEATURES) & FEATURES_OK
    for index, ring in enumerate(queues):
        mmio_driver.setup_queue(transport, index, ring)
    mmio_driver.write(transport, Reg.STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    return transport, line, queues


def test_a_device_on_virtio_mmio_carries_on_after_restore(
    kind: Kind, memory: GuestMemory, devices: list[VirtioDevice]
) -> None:
    devices.append(kind.make())
    transport, line, queues = mmio_started(kind, devices[0], memory)
    ring = queues[kind.queue]
    serve(kind, ring, memory, lambda: mmio_driver.write(transport, Reg.QUEUE_NOTIFY, kind.queue))
    assert line.levels[-1] is True  # the driver has not acknowledged yet
    state = transport.save()
    assert state.interrupt_status == 1
    devices.pop().close()

    devices.append(kind.make())
    fresh_line = Line()
    fresh = VirtioMmio(devices[0], memory, fresh_line)
    fresh.restore(state)
    assert fresh.save() == state
    assert fresh_line.levels[-1] is True and mmio_driver.read(fresh, Reg.INTERRUPT_STATUS) == 1
    mmio_driver.write(fresh, Reg.INTERRUPT_ACK, 1)
    assert fresh_line.levels[-1] is False
    serve(kind, ring, memory, lambda: mmio_driver.write(fresh, Reg.QUEUE_NOTIFY, kind.queue))
    assert ring.used_idx() == 2 and fresh_line.levels[-1] is True


@pytest.mark.parametrize(
    "change",
    [
        {"interrupt_status": 4},
        {"interrupt_status": -1},
        {"interrupt_status": True},
        {"core": None},
        {"core": "state"},
    ],
)
def test_a_spoiled_mmio_state_is_refused_and_changes_nothing(
    memory: GuestMemory, devices: list[VirtioDevice], change: dict[str, object]
) -> None:
    devices.extend([EntropyDevice(), EntropyDevice()])
    source, _, _ = mmio_started(Rng(), devices[0], memory)
    state = source.save()
    target, line, _ = mmio_started(Rng(), devices[1], memory)
    before = target.save()
    levels = list(line.levels)
    with pytest.raises(StateError):
        target.restore(dataclasses.replace(state, **change))
    assert target.save() == before and line.levels == levels


def test_a_core_state_refused_inside_an_mmio_state_changes_nothing(
    memory: GuestMemory, devices: list[VirtioDevice]
) -> None:
    devices.extend([EntropyDevice(), EntropyDevice()])
    source, _, _ = mmio_started(Rng(), devices[0], memory)
    state = source.save()
    target, _, _ = mmio_started(Rng(), devices[1], memory)
    before = target.save()
    queue = dataclasses.replace(state.core.queues[0], used_ring=1 << 40)
    with pytest.raises(StateError, match=r"not usable|inside RAM"):
        target.restore(dataclasses.replace(state, core=dataclasses.replace(state.core, queues=(queue,))))
    assert target.save() == before
    assert isinstance(before, VirtioMmioState)
