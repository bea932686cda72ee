"""Property: no sequence of guest register accesses makes a device raise.

A device's read/write run on a vCPU thread for any value a guest chooses; an exception
there would take the VM down, so every device must absorb any offset, width and value.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from device_fakes import FakeLine, FakeStop
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.bus import BusDevice
from pyvmm.devices import DebugExit, FwCfg, PortSink, PowerControl, Serial16550
from pyvmm.memory import GuestMemory

RAM = 64 * 1024

# (kind, offset, size, value): kind 0 reads, 1 writes, 2 feeds host input or pokes RAM.
operations = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(0, 15),
        st.sampled_from([1, 2, 4, 8]),
        st.integers(0, (1 << 64) - 1),
    ),
    max_size=60,
)


# An FWCfgDmaAccess the guest builds: key, control bits, length, target address.
dma_accesses = st.tuples(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.one_of(st.integers(0, 64), st.integers(0, (1 << 32) - 1)),
    st.one_of(st.integers(0, RAM), st.integers(0, (1 << 64) - 1)),
)
ACCESS = 0x100


@pytest.fixture(scope="module")
def memory() -> Iterator[GuestMemory]:
    ram = GuestMemory([(0, RAM)])
    yield ram
    ram.close()


def run(device: BusDevice, ops: list[tuple[int, int, int, int]], side: object = None) -> None:
    for kind, offset, size, value in ops:
        if kind == 0:
            result = device.read(offset, size)
            assert 0 <= result < 1 << (8 * size)
        elif kind == 1:
            device.write(offset, size, value)
        elif isinstance(side, Serial16550):
            side.feed(value.to_bytes(8, "little")[:size])
        elif isinstance(side, GuestMemory):
            # Put guest-chosen bytes where DMA access structures are likely to point.
            side.write((value >> 40) % (RAM - 16), value.to_bytes(8, "big") * 2)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_serial(ops: list[tuple[int, int, int, int]]) -> None:
    output: list[bytes] = []
    device = Serial16550(FakeLine(), output.append, host_buffer_size=64)
    run(device, ops, device)


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(dma_accesses, max_size=10))
def test_fw_cfg(
    memory: GuestMemory,
    ops: list[tuple[int, int, int, int]],
    accesses: list[tuple[int, int, int, int]],
) -> None:
    device = FwCfg(memory, ram_size=RAM, cpus=1, max_cpus=1)
    device.add_file("etc/test", b"data")
    run(device, ops, memory)
    for key, control, length, target in accesses:
        memory.write(ACCESS, struct.pack(">IIQ", key << 16 | control, length, target))
        device.write(4, 4, 0)  # high half first, as a guest with a 32-bit address does
        device.write(8, 4, int.from_bytes(ACCESS.to_bytes(4, "big"), "little"))
        status = memory.read(ACCESS, 4)
        assert status in (bytes(4), b"\0\0\0\1")


@settings(max_examples=100, deadline=None)
@given(operations)
def test_simple_devices(ops: list[tuple[int, int, int, int]]) -> None:
    for device in (DebugExit(FakeStop()), PowerControl(FakeStop()), PortSink(), PortSink(0)):
        run(device, ops)
