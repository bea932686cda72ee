"""virtio-console (virtio 1.2 §5.3) through a VirtioCore, with the test driver's rings in
a real GuestMemory: output in order, input in order across buffers, input that waits
for late buffers (up to its bound), floods, emergency write, and hostile chains."""

from __future__ import annotations

import threading
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from virtio.driver import WRITE, Driver
from virtio.handshake import start
from virtio.interrupts import Interrupts

from pyvmm.memory import GuestMemory
from pyvmm.virtio import DeviceStatus, Feature
from pyvmm.virtio.console import (
    MAX_TX_CHAIN_BYTES,
    OUTPUT_CHUNK,
    RECEIVEQ,
    TRANSMITQ,
    ConsoleDevice,
    ConsoleFeature,
)
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.models import console_device

NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)
RAM = 1 << 20
RX_DATA, TX_DATA = 0x10000, 0x80000


class Output:
    """The console stream: what the machine's `MachineConsole.write` would get."""

    def __init__(self, keep: bool = True) -> None:
        self.chunks: list[bytes] = []
        self.total = 0
        self.largest = 0
        self.keep = keep

    def __call__(self, data: bytes) -> None:
        self.total += len(data)
        self.largest = max(self.largest, len(data))
        if self.keep:
            self.chunks.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class Setup:
    def __init__(self, memory: GuestMemory, device: ConsoleDevice, *, indirect: bool = False) -> None:
        self.memory = memory
        self.device = device
        self.interrupts = Interrupts()
        self.core = VirtioCore(device, memory, self.interrupts)
        self.rx = Driver(memory, 16, desc=0x1000, data=RX_DATA, indirect=indirect)
        self.tx = Driver(memory, 16, desc=0x3000, data=TX_DATA, indirect=indirect)
        self.features = int(Feature.VERSION_1) | (int(Feature.INDIRECT_DESC) if indirect else 0)

    def start(self) -> Setup:
        start(self.core, self.features, [self.rx, self.tx])
        assert self.core.active
        return self

    def received(self) -> list[bytes]:
        """What the guest got in each receive buffer (the test posts one per chain)."""
        result = []
        for head, length in self.rx.get_used():
            addr = self.rx.read_desc(head)[0]
            result.append(self.memory.read(addr, length))
        return result

    def post_rx(self, *sizes: int) -> None:
        for size in sizes:
            self.rx.add([], [size])
        self.core.notify(RECEIVEQ)

    def send(self, *parts: bytes) -> int:
        head = self.tx.add(list(parts), [])
        self.core.notify(TRANSMITQ)
        return head


def make(memory: GuestMemory, **options: int) -> tuple[Setup, Output]:
    output = Output()
    return Setup(memory, ConsoleDevice(output, **options)).start(), output  # type: ignore[arg-type]


# --- output ------------------------------------------------------------------------


def test_output_reaches_the_stream_in_order(memory: GuestMemory) -> None:
    setup, output = make(memory)
    first = setup.send(b"hello, ")
    second = setup.send(b"wor", b"ld", b"")  # one chain in three buffers
    setup.send(b"\r\n")
    assert output.data == b"hello, world\r\n"
    used = setup.tx.get_used()
    assert [head for head, _ in used][:2] == [first, second]
    assert all(length == 0 for _, length in used)  # the device writes nothing back
    assert setup.device.tx_bytes == 14
    assert setup.interrupts.used == [TRANSMITQ] * 3


def test_writable_buffers_in_transmitq_are_left_alone(memory: GuestMemory) -> None:
    setup, output = make(memory)
    memory.fill(TX_DATA, 0x1000, 0x5A)
    head = setup.tx.add([b"abc"], [64])
    setup.core.notify(TRANSMITQ)
    assert output.data == b"abc"
    assert setup.tx.get_used() == [(head, 0)]
    assert memory.read(TX_DATA + 16, 64) == b"\x5a" * 64  # the writable buffer
    assert not setup.core.status & NEEDS_RESET


def test_a_flood_is_streamed_in_bounded_chunks(memory: GuestMemory) -> None:
    """Chains claiming 64 MiB each (one 64 KiB region named 1024 times through an
    indirect table) show their first MiB each, in chunks, and the rest is counted."""
    output = Output(keep=False)
    setup = Setup(memory, ConsoleDevice(output), indirect=True).start()
    memory.fill(TX_DATA, 0x10000, ord("A"))
    for _ in range(4):
        setup.tx.add_elements([(TX_DATA, 0x10000, 0)] * 1024)
    setup.core.notify(TRANSMITQ)
    assert not setup.core.status & NEEDS_RESET
    assert len(setup.tx.get_used()) == 4
    assert output.total == 4 * MAX_TX_CHAIN_BYTES
    assert output.largest <= OUTPUT_CHUNK
    assert setup.device.tx_dropped == 4 * (1024 * 0x10000 - MAX_TX_CHAIN_BYTES)


def test_a_big_chain_is_never_gathered_on_the_host(memory: GuestMemory) -> None:
    output = Output(keep=False)
    setup = Setup(memory, ConsoleDevice(output), indirect=True).start()
    setup.tx.add_elements([(TX_DATA, 0x10000, 0)] * 64)  # 4 MiB claimed, 1 MiB shown
    tracemalloc.start()
    try:
        setup.core.notify(TRANSMITQ)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert output.total == MAX_TX_CHAIN_BYTES
    assert peak < 3 * OUTPUT_CHUNK  # one chunk at a time, not the MiB


def test_emergency_write_outputs_a_byte_even_before_the_driver(memory: GuestMemory) -> None:
    output = Output()
    device = ConsoleDevice(output)
    core = VirtioCore(device, memory, Interrupts())
    assert core.offered & ConsoleFeature.EMERG_WRITE
    core.write_config(8, 4, ord("!"))  # emerg_wr, nothing negotiated yet
    core.write_config(8, 1, ord("?"))
    core.write_config(0, 4, 0x0102)  # cols/rows are read-only
    assert output.data == b"!?"
    assert core.read_config(0, 4) == 0 and core.read_config(8, 4) == 0


# --- input -------------------------------------------------------------------------


def test_input_fills_several_buffers_in_order(memory: GuestMemory) -> None:
    setup, _ = make(memory)
    setup.post_rx(3, 5, 100, 100)
    setup.device.feed(b"abcdefghij")
    setup.device.feed(b"KLMNOP")  # a buffer is returned with what there was: a new one
    assert setup.received() == [b"abc", b"defgh", b"ij", b"KLMNOP"]
    assert setup.device.rx_delivered == 16 and setup.device.pending_input == 0
    assert RECEIVEQ in setup.interrupts.used


def test_input_waits_for_late_buffers_and_nothing_is_lost(memory: GuestMemory) -> None:
    setup, _ = make(memory)
    typed = bytes(range(256)) * 40  # 10 KiB typed while the guest posts nothing
    for i in range(0, len(typed), 7):
        setup.device.feed(typed[i : i + 7])
    assert setup.rx.get_used() == [] and setup.device.pending_input == len(typed)
    got = b""
    while len(got) < len(typed):
        setup.post_rx(*[700] * 4)  # the notify delivers
        got += b"".join(setup.received())
    assert got == typed
    assert setup.device.rx_dropped == 0


def test_input_typed_before_the_driver_is_delivered_at_activation(memory: GuestMemory) -> None:
    device = ConsoleDevice(Output())
    device.feed(b"early")
    setup = Setup(memory, device)
    setup.rx.add([], [16])  # posted before DRIVER_OK, as Linux fills its receiveq
    setup.start()
    assert setup.received() == [b"early"]


def test_input_past_the_bound_is_dropped_and_counted(memory: GuestMemory) -> None:
    setup, _ = make(memory, host_buffer_size=1000)
    setup.device.feed(b"x" * 600)
    setup.device.feed(b"y" * 600)
    assert setup.device.pending_input == 1000
    assert setup.device.rx_dropped == 200 and setup.device.rx_bytes == 1000
    setup.post_rx(4096)
    assert setup.received() == [b"x" * 600 + b"y" * 400]
    setup.device.feed(b"z" * 10)  # room again
    setup.post_rx(64)
    assert setup.received() == [b"z" * 10]


def test_readable_buffers_in_receiveq_are_ignored(memory: GuestMemory) -> None:
    setup, _ = make(memory)
    head = setup.rx.add([b"do not read"], [])
    setup.device.feed(b"hi")
    setup.post_rx(8)
    used = setup.rx.get_used()
    assert used[0] == (head, 0)
    assert memory.read(setup.rx.read_desc(used[1][0])[0], 2) == b"hi"
    assert not setup.core.status & NEEDS_RESET


def test_a_receiveq_fault_found_by_feed_needs_a_reset_at_once(memory: GuestMemory) -> None:
    setup, output = make(memory)
    setup.rx.add_elements([(0xFFFF_0000, 64, WRITE)])  # outside RAM
    setup.device.feed(b"boom")  # must not raise on the feeding thread...
    assert setup.core.status & NEEDS_RESET  # ...but the driver is told (§2.1.2)
    assert setup.interrupts.config == 1
    setup.send(b"after")
    assert output.data == b""  # the device stays quiet until reset


def test_reset_keeps_waiting_input_for_the_next_driver(memory: GuestMemory) -> None:
    setup, _ = make(memory)
    setup.device.feed(b"kept")
    setup.core.write_status(0)
    setup.device.feed(b"!")  # no activation: waits
    again = Setup(memory, setup.device)
    again.core = setup.core
    again.interrupts = setup.interrupts
    again.rx.add([], [16])
    again.start()
    assert again.received() == [b"kept!"]


def test_feeding_from_another_thread_keeps_the_order(memory: GuestMemory) -> None:
    setup, _ = make(memory)
    typed = bytes(i % 251 for i in range(20000))
    done = threading.Event()

    def typist() -> None:
        for i in range(0, len(typed), 13):
            setup.device.feed(typed[i : i + 13])
        done.set()

    thread = threading.Thread(target=typist)
    thread.start()
    got = b""
    deadline = time.monotonic() + 30
    while len(got) < len(typed) and time.monotonic() < deadline:
        if setup.rx.num_free:
            setup.post_rx(*[97] * min(4, setup.rx.num_free))
        got += b"".join(setup.received())
    thread.join()
    assert done.is_set()
    assert got == typed


# --- configuration -----------------------------------------------------------------


def test_size_is_offered_and_resize_notifies(memory: GuestMemory) -> None:
    output = Output()
    device = console_device(output, size=(80, 25))
    assert isinstance(device, ConsoleDevice)
    setup = Setup(memory, device)
    setup.features |= int(ConsoleFeature.SIZE)
    setup.start()
    assert setup.core.read_config(0, 2) == 80 and setup.core.read_config(2, 2) == 25
    device.resize(132, 43)
    assert setup.core.read_config(0, 4) == 132 | 43 << 16
    assert setup.interrupts.config == 1
    with pytest.raises(ValueError):
        device.resize(1 << 16, 1)


def test_without_a_size_no_size_feature(memory: GuestMemory) -> None:
    device = ConsoleDevice(Output())
    assert not device.device_features() & ConsoleFeature.SIZE
    device.resize(100, 100)
    assert device.config()[:4] == b"\0\0\0\0"


# --- hostile chains -----------------------------------------------------------------

# Receive buffers each get a slot of their own (so that what the device wrote can be
# read back), or a bad address; transmit buffers may overlap (they are only read).
RX_SLOTS, TX_AREA = 0x20000, 0x50000
bad_addresses = st.sampled_from([RAM - 1, RAM, RAM - 16, 0xFFFF_FFFF_FFFF_FFF0])
rx_elements = st.tuples(
    st.one_of(st.none(), st.none(), st.none(), bad_addresses),
    st.one_of(st.integers(0, 0x800), st.just(0xFFFF_FFFF)),
    st.sampled_from([WRITE, WRITE, WRITE, 0, 4]),
)
tx_elements = st.tuples(
    st.one_of(st.integers(TX_AREA, TX_AREA + 0x20000), bad_addresses),
    st.one_of(st.integers(0, 0x800), st.sampled_from([0x10000, 0xFFFF_FFFF])),
    st.sampled_from([0, 0, 0, WRITE, 4]),
)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rx_chains=st.lists(st.lists(rx_elements, min_size=1, max_size=5), max_size=5),
    tx_chains=st.lists(st.lists(tx_elements, min_size=1, max_size=5), max_size=5),
    typed=st.binary(max_size=3000),
    indirect=st.booleans(),
)
def test_any_chains_get_a_defined_answer(
    memory: GuestMemory,
    rx_chains: list[list[tuple[int | None, int, int]]],
    tx_chains: list[list[tuple[int, int, int]]],
    typed: bytes,
    indirect: bool,
) -> None:
    """Output is the readable bytes of the transmit chains, in order (each cut at the
    bound); input is a prefix of what was typed, split over the receive buffers in
    order; or the device needs a reset. Nothing else escapes."""
    output = Output()
    setup = Setup(memory, ConsoleDevice(output, max_tx_chain_bytes=0x4000), indirect=indirect).start()
    memory.fill(RX_SLOTS, 0x70000, 0x11)
    setup.device.feed(typed)
    slots = iter(range(RX_SLOTS, TX_AREA, 0x1000))
    rx_writable = {}
    for chain in rx_chains:
        placed = [(next(slots) if addr is None else addr, n, f) for addr, n, f in chain]
        if len(placed) <= setup.rx.num_free:
            rx_writable[setup.rx.add_elements(placed)] = [(a, n) for a, n, f in placed if f == WRITE]
    expected_out = b""
    tx_heads = []
    for tx_chain in tx_chains:
        if len(tx_chain) <= setup.tx.num_free:
            tx_heads.append(setup.tx.add_elements(tx_chain))
            if all(memory.contains(a, n) for a, n, _ in tx_chain):
                expected_out += b"".join(memory.read(a, n) for a, n, f in tx_chain if f == 0)[:0x4000]
    setup.core.notify(RECEIVEQ)
    setup.core.notify(TRANSMITQ)
    event("needs reset" if setup.core.status & NEEDS_RESET else "answered")
    if setup.core.status & NEEDS_RESET:
        return  # some chain broke a queue rule
    assert output.data == expected_out
    assert setup.tx.get_used() == [(head, 0) for head in tx_heads]
    received = b""
    for head, length in setup.rx.get_used():
        remaining = length
        for addr, n in rx_writable[head]:
            take = min(n, remaining)
            received += memory.read(addr, take)
            remaining -= take
        assert remaining == 0
    assert typed.startswith(received)
    assert setup.device.pending_input == len(typed) - len(received)
