"""Property: a state with arbitrary field values is refused with `StateError` (and the
device keeps its state), or restored into a device that still never raises on any
register access: a saved state is untrusted input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest
from device_fakes import FakeLine, FakeStop
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.devices import I8042, CmosRtc, FwCfg, PortSink, PowerControl, Serial16550
from pyvmm.devices.i8042 import I8042Port
from pyvmm.devices.power import SleepControl
from pyvmm.errors import StateError
from pyvmm.memory import GuestMemory

RAM = 64 * 1024

scalars = st.one_of(
    st.integers(-2, 300),
    st.integers(0, (1 << 64) + 1),
    st.integers(-(1 << 90), 1 << 90),
    st.booleans(),
    st.none(),
    st.binary(max_size=140),
    st.text(max_size=3),
)
values = st.one_of(scalars, st.tuples(st.integers(-1, 300), scalars, scalars), st.lists(scalars, max_size=3))
operations = st.lists(
    st.tuples(
        st.booleans(), st.integers(0, 15), st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1)
    ),
    max_size=40,
)


def mutated(state: object) -> st.SearchStrategy[object]:
    """`state` with each field either kept or replaced by an arbitrary value (nested
    dataclasses, the keyboard's state, mutated the same way)."""
    assert dataclasses.is_dataclass(state) and not isinstance(state, type)
    changes = {}
    for field in dataclasses.fields(state):
        kept = getattr(state, field.name)
        nested = mutated(kept) if dataclasses.is_dataclass(kept) else st.nothing()
        changes[field.name] = st.one_of(st.just(kept), st.just(kept), values, nested)
    return st.fixed_dictionaries(changes).map(lambda fields: dataclasses.replace(state, **fields))  # type: ignore[type-var]


@pytest.fixture(scope="module")
def memory() -> Iterator[GuestMemory]:
    ram = GuestMemory([(0, RAM)])
    yield ram
    ram.close()


def serial() -> tuple[object, list[object]]:
    device = Serial16550(FakeLine(), lambda data: None, host_buffer_size=64)
    device.write(2, 1, 0xC1)
    device.write(4, 1, 0x0B)
    device.feed(b"x" * 20)
    return device, [device]


def rtc() -> tuple[object, list[object]]:
    device = CmosRtc(FakeLine(), lambda: 1_700_000_000.5)
    device.write(0, 1, 0x0B)
    device.write(1, 1, 0x26)  # AIE, binary, 24 h: no timer thread (PIE/UIE off would too)
    return device, [device]


def i8042() -> tuple[object, list[object]]:
    device = I8042(FakeStop(), FakeLine(), FakeLine())
    device.write_command(0xD3)
    device.write_data(0x42)
    device.write_data(0xF2)
    return device, [device.data_port(), device.command_port()]


def power() -> tuple[object, list[object]]:
    device = PowerControl(FakeStop())
    return device, [device]


def sleep() -> tuple[object, list[object]]:
    device = SleepControl(FakeStop())
    return device, [device]


def sink() -> tuple[object, list[object]]:
    device = PortSink()
    device.write(0, 2, 0x1234)
    return device, [device]


def check(device: object, ports: list[object], state: object, ops: list[tuple[bool, int, int, int]]) -> None:
    before = device.save()  # type: ignore[attr-defined]
    try:
        device.restore(state)  # type: ignore[attr-defined]
    except StateError:
        assert device.save() == before  # type: ignore[attr-defined]
    for write, offset, size, value in ops:
        for port in ports:
            assert isinstance(
                port, (Serial16550, CmosRtc, I8042Port, PowerControl, SleepControl, PortSink, FwCfg)
            )
            if write:
                port.write(offset, size, value)
            else:
                assert 0 <= port.read(offset, size) < 1 << (8 * size)
    device.save()  # type: ignore[attr-defined]


@pytest.mark.parametrize("build", [serial, rtc, i8042, power, sleep, sink])
@settings(max_examples=150, deadline=None)
@given(data=st.data(), ops=operations)
def test_an_arbitrary_state_is_refused_or_harmless(
    build: Callable[[], tuple[object, list[object]]],
    data: st.DataObject,
    ops: list[tuple[bool, int, int, int]],
) -> None:
    device, ports = build()
    try:
        state = data.draw(mutated(device.save()))  # type: ignore[attr-defined]
        check(device, ports, state, ops)
    finally:
        if isinstance(device, CmosRtc):
            device.close()


@settings(max_examples=150, deadline=None)
@given(data=st.data(), ops=operations)
def test_fw_cfg_arbitrary_state(
    memory: GuestMemory, data: st.DataObject, ops: list[tuple[bool, int, int, int]]
) -> None:
    device = FwCfg(memory, ram_size=RAM, cpus=1, max_cpus=1)
    device.add_file("etc/test", b"data")
    device.write(0, 2, 0x20)
    state = data.draw(mutated(device.save()))
    check(device, [device], state, ops)
