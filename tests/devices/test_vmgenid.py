"""The VM generation ID: 16 bytes in guest memory at the address the DSDT's ADDR
names, a fresh random one per machine, changed by the host with a notification."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyvmm.devices.vmgenid import GENERATION_ID_SIZE, VmGenId, VmGenIdState
from pyvmm.errors import ConfigError, StateError
from pyvmm.memory import GuestMemory
from pyvmm.snapshot.registry import state_class

ADDRESS = 0xFF000
FIRST = bytes(range(16))
SECOND = bytes(range(100, 116))


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    memory = GuestMemory([(0, 2 << 20)])
    yield memory
    memory.close()


class Notes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_a_new_device_writes_a_random_id_where_it_says(memory: GuestMemory) -> None:
    one, two = VmGenId(memory, ADDRESS, Notes()), VmGenId(memory, ADDRESS + 16, Notes())
    assert len(one.generation_id) == GENERATION_ID_SIZE
    assert one.generation_id != two.generation_id  # os.urandom: two machines never share one
    assert memory.read(ADDRESS, 16) == one.generation_id
    assert memory.read(ADDRESS + 16, 16) == two.generation_id


def test_setting_an_id_writes_it_then_notifies(memory: GuestMemory) -> None:
    seen: list[bytes] = []
    device = VmGenId(memory, ADDRESS, lambda: seen.append(memory.read(ADDRESS, 16)), FIRST)
    assert seen == []  # the ID a guest finds at boot needs no notification
    device.set_generation_id(SECOND)
    assert seen == [SECOND]  # the guest, notified, reads the new ID
    assert device.generation_id == SECOND


@pytest.mark.parametrize("bad", [b"", bytes(15), bytes(17), bytearray(16), "0" * 16, None])
def test_only_sixteen_bytes_are_an_id(memory: GuestMemory, bad: object) -> None:
    notes = Notes()
    device = VmGenId(memory, ADDRESS, notes, FIRST)
    with pytest.raises(ConfigError, match="16 bytes"):
        device.set_generation_id(bad)  # type: ignore[arg-type]
    assert notes.count == 0
    assert memory.read(ADDRESS, 16) == FIRST


def test_reset_keeps_the_id_and_puts_it_back_in_memory(memory: GuestMemory) -> None:
    device = VmGenId(memory, ADDRESS, Notes(), FIRST)
    memory.write(ADDRESS, bytes(16))  # the guest scribbled over reserved memory
    device.reset()
    assert memory.read(ADDRESS, 16) == FIRST


def test_save_and_restore_without_a_notification(memory: GuestMemory) -> None:
    notes = Notes()
    source = VmGenId(memory, ADDRESS, Notes(), FIRST)
    target = VmGenId(memory, ADDRESS + 16, notes, SECOND)
    state = source.save()
    assert state == VmGenIdState(FIRST)
    assert state_class("vmgenid") is VmGenIdState
    target.restore(state)
    assert target.generation_id == FIRST
    assert memory.read(ADDRESS + 16, 16) == FIRST
    assert notes.count == 0


@pytest.mark.parametrize(
    "state",
    [
        VmGenIdState(bytes(15)),
        VmGenIdState(bytes(17)),
        VmGenIdState(bytearray(16)),  # type: ignore[arg-type]
        VmGenIdState("0123456789abcdef"),  # type: ignore[arg-type]
        object(),
    ],
)
def test_a_bad_state_is_refused_and_changes_nothing(memory: GuestMemory, state: object) -> None:
    device = VmGenId(memory, ADDRESS, Notes(), FIRST)
    with pytest.raises(StateError, match="vmgenid state"):
        device.restore(state)
    assert device.generation_id == FIRST
    assert memory.read(ADDRESS, 16) == FIRST
