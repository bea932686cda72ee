"""The saved state of the virtio device models (pyvmm/virtio/device_state.py, the
devices' save/restore): a driver sets a device up and uses it, the state is saved,
a fresh device - on the same disk, opened again as a restoring VMM would - restores it
in a fresh core, and the driver carries on; bad states are refused and change nothing.
(virtio-net's are in test_net.py, beside its TAP fixture; virtio-rng's in
test_core_state.py.)"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from virtio.blk_harness import IMAGE_SIZE, BlockHarness, held
from virtio.interrupts import Interrupts
from virtio.test_console import Output, Setup

from pyvmm.device_config import DiskConfig
from pyvmm.errors import StateError
from pyvmm.memory import GuestMemory
from pyvmm.virtio.block import F_RO, S_OK, T_IN, T_OUT, BlockDevice
from pyvmm.virtio.console import ConsoleDevice
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.device_state import BlockState, ConsoleState

MiB = 1 << 20
SECTORS = IMAGE_SIZE // 512  # the `image` fixture's (conftest.py)


def disk(path: Path, *, workers: int = 2, readonly: bool = False, serial: str | None = "s1") -> BlockDevice:
    return BlockDevice(DiskConfig(str(path), readonly, serial), workers=workers)


# --- virtio-blk ----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "pool"])
def test_a_restored_disk_serves_the_next_read_into_memory(
    ram: GuestMemory, image: Path, workers: int
) -> None:
    blk = BlockHarness(disk(image, workers=workers), ram)
    data = os.urandom(4096)
    assert blk.one(T_OUT, 16, out=data) == (S_OK, 1)
    state = blk.core.save()
    assert state.device == BlockState(SECTORS, blk.device.device_features(), b"s1".ljust(20, b"\0"))
    assert state.queues[0].next_used == 1
    blk.device.close()  # the VMM goes; the image's lock with it

    restored = disk(image, workers=workers)
    try:
        core = VirtioCore(restored, ram, Interrupts())
        core.restore(state)
        assert core.active and core.save() == state
        blk.core, blk.device = core, restored  # the same driver, on the restored device
        request = blk.post(T_IN, 16, in_len=4096)
        [(head, used)] = blk.run()
        assert (head, used) == (request.head, 4097)
        assert blk.status(request) == S_OK and blk.data(request) == data
        assert blk.driver.used_idx() == 2  # the used ring goes on where it was
    finally:
        restored.close()


def test_save_waits_for_the_requests_in_flight(ram: GuestMemory, image: Path) -> None:
    blk = BlockHarness(disk(image), ram)
    signal = blk.device._signal

    def late_signal(*args: object) -> None:
        time.sleep(0.2)  # the used element is in the ring; the interrupt not yet decided
        signal(*args)  # type: ignore[arg-type]

    blk.device._signal = late_signal  # type: ignore[method-assign]
    blk.driver.enable_cb()
    with closing(blk.device), held(blk.device.file, "read_into", seconds=5) as slow:
        blk.post(T_IN, 0, in_len=512)
        blk.core.notify(0)
        assert slow.started.wait(5)
        with pytest.raises(StateError, match="1 requests still in flight"):
            blk.device.save(timeout=0.05)
        threading.Timer(0.1, slow.release.set).start()
        state = blk.core.save()  # waits for the read to finish, and for its interrupt
        assert state.queues[0].next_used == 1 == state.queues[0].next_avail
        assert state.queues[0].unsignalled == 0 and blk.interrupts.used == [0]


@pytest.mark.parametrize(
    "other",
    [
        {"size": IMAGE_SIZE - 512},  # a shorter disk
        {"readonly": True},  # the guest was offered a writable one
        {"serial": "s2"},
    ],
)
def test_a_restore_onto_another_disk_is_refused(
    ram: GuestMemory, image: Path, tmp_path: Path, other: dict[str, object]
) -> None:
    blk = BlockHarness(disk(image), ram)
    state = blk.core.save()
    blk.device.close()
    path = tmp_path / "other.img"
    path.write_bytes(bytes(int(other.get("size", SECTORS * 512))))  # type: ignore[call-overload]
    second = disk(path, readonly=bool(other.get("readonly")), serial=str(other.get("serial", "s1")))
    try:
        core = VirtioCore(second, ram, Interrupts())
        before = core.save()
        with pytest.raises(StateError, match=r"is not this disk's|never offered"):
            core.restore(state)
        assert core.save() == before and not core.active
    finally:
        second.close()


def test_the_readonly_feature_is_part_of_the_check(ram: GuestMemory, image: Path) -> None:
    device = disk(image, readonly=True)
    try:
        state = device.save()
        assert state.features & F_RO
        device.restore(state)
        for change in ({"features": state.features & ~F_RO}, {"capacity": True}, {"serial": "s1"}):
            with pytest.raises(StateError):
                device.restore(dataclasses.replace(state, **change))  # type: ignore[arg-type]
    finally:
        device.close()


# --- virtio-console --------------------------------------------------------------------------


def console_setup(memory: GuestMemory, size: tuple[int, int] | None = (80, 25)) -> tuple[Setup, Output]:
    output = Output()
    return Setup(memory, ConsoleDevice(output, size=size)).start(), output


def test_a_restored_console_delivers_the_input_that_waited(memory: GuestMemory) -> None:
    setup, _ = console_setup(memory)
    setup.post_rx(4)
    setup.device.feed(b"abcdefgh")  # 4 delivered, 4 waiting for a buffer
    assert setup.received() == [b"abcd"]
    setup.device.resize(100, 40)
    state = setup.core.save()
    assert state.device == ConsoleState((100, 40), b"efgh")

    output = Output()
    restored = ConsoleDevice(output, size=(80, 25))  # this run's terminal size
    core = VirtioCore(restored, memory, setup.interrupts)
    core.restore(state)
    assert core.save() == state
    assert core.read_config(0, 2) == 100 and core.read_config(2, 2) == 40
    setup.core, setup.device = core, restored
    setup.post_rx(16)
    assert setup.received() == [b"efgh"]
    setup.send(b"out")
    assert output.data == b"out"
    assert setup.tx.used_idx() == 1


@pytest.mark.parametrize(
    ("size", "state"),
    [
        ((80, 25), ConsoleState(None, b"")),  # the console offers F_SIZE: a size is needed
        (None, ConsoleState((80, 25), b"")),
        ((80, 25), ConsoleState((80,), b"")),  # type: ignore[arg-type]
        ((80, 25), ConsoleState((80, 1 << 16), b"")),
        ((80, 25), ConsoleState((80, True), b"")),  # type: ignore[arg-type]
        ((80, 25), ConsoleState([80, 25], b"")),  # type: ignore[arg-type]
        ((80, 25), ConsoleState((80, 25), bytearray(b"x"))),  # type: ignore[arg-type]
        ((80, 25), ConsoleState((80, 25), bytes(64 * 1024 + 1))),  # more than the host buffer
    ],
)
def test_bad_console_states_are_refused(
    memory: GuestMemory, size: tuple[int, int] | None, state: ConsoleState
) -> None:
    setup, _ = console_setup(memory, size)
    setup.device.feed(b"typed")
    before = setup.core.save()
    with pytest.raises(StateError):
        setup.core.restore(dataclasses.replace(before, device=state))
    assert setup.core.save() == before and setup.core.active
    setup.post_rx(16)
    assert setup.received() == [b"typed"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pending=st.binary(max_size=3000), cols=st.integers(0, 0xFFFF), rows=st.integers(0, 0xFFFF))
def test_console_states_round_trip(memory: GuestMemory, pending: bytes, cols: int, rows: int) -> None:
    device = ConsoleDevice(Output(), size=(1, 1))
    state = ConsoleState((cols, rows), pending)
    device.restore(state)
    assert device.save() == state and device.pending_input == len(pending)
