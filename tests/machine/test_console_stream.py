"""The console stream: guest output never waits for its sink (stdout), what does not
fit in the buffer is dropped and counted, and closing it never hangs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from pyvmm.cli.console import write_all
from pyvmm.machine.console_stream import STALL_SECONDS, STREAM_BUFFER_BYTES, ConsoleStream

MIB = 1 << 20


def pieces(total: int, size: int = 4096) -> Iterator[bytes]:
    """`total` bytes in writes of `size`, each piece different, so order shows."""
    for number in range(total // size):
        yield bytes([number % 251]) * size


def test_a_sink_that_keeps_up_gets_everything_whole_and_in_order() -> None:
    received = bytearray()
    sent = bytearray()
    with ConsoleStream(received.extend) as stream:
        for number in range(20000):  # as a UART writes: a byte or a few at a time
            piece = str(number).encode()
            sent += piece
            stream.write(piece)
    assert received == sent
    assert (stream.written, stream.dropped, stream.abandoned, stream.error) == (len(sent), 0, False, None)


def test_writes_never_wait_for_a_sink_that_blocks_and_close_gives_up() -> None:
    """The sink never returns (a write to a pipe nobody reads): 3 MiB of writes still
    return at once; the first MiB waits, the rest is dropped; close() gives up once
    the sink has taken nothing for STALL_SECONDS, well before its timeout, and counts
    everything as dropped."""
    release = threading.Event()
    calls: list[int] = []

    def blocked(data: bytes) -> None:
        calls.append(len(data))
        release.wait()

    stream = ConsoleStream(blocked)
    try:
        started = time.monotonic()
        for piece in pieces(3 * MIB):
            stream.write(piece)
        writing = time.monotonic() - started
        assert stream.dropped == 3 * MIB - STREAM_BUFFER_BYTES  # the buffer counts what the sink holds
        started = time.monotonic()
        stream.close(timeout=5.0)
        closing = time.monotonic() - started
    finally:
        release.set()
    assert writing < 2.0, writing  # 768 writes; a blocked one would be stuck for good
    assert STALL_SECONDS <= closing < 1.5, closing  # no progress: not the whole timeout
    assert stream.abandoned and len(calls) == 1
    assert (stream.dropped, stream.written) == (3 * MIB, 0)


def test_a_pipe_nobody_reads() -> None:
    """stdout as it really stalls: os.write() on a full pipe does not return."""
    read_end, write_end = os.pipe()
    try:
        stream = ConsoleStream(lambda data: write_all(write_end, data))
        for piece in pieces(2 * MIB):
            stream.write(piece)
        started = time.monotonic()
        stream.close(timeout=0.5)
        assert time.monotonic() - started < 2.0
        assert stream.abandoned
        assert stream.written + stream.dropped == 2 * MIB
        assert stream.dropped >= 2 * MIB - STREAM_BUFFER_BYTES  # more than the pipe held
    finally:
        os.close(read_end)  # the stuck writer gets EPIPE and ends
        os.close(write_end)


def test_close_flushes_a_slow_sink_within_its_timeout() -> None:
    received = bytearray()

    def slow(data: bytes) -> None:
        time.sleep(0.01)
        received.extend(data)

    stream = ConsoleStream(slow)
    sent = b"".join(pieces(512 * 1024))
    for start in range(0, len(sent), 1000):
        stream.write(sent[start : start + 1000])
    stream.close(timeout=10)
    assert received == sent
    assert (stream.dropped, stream.abandoned) == (0, False)


def test_a_failed_sink_stops_the_output_and_the_rest_is_counted() -> None:
    """A closed pipe (`pyvmm run | head -1`): the first failure ends the writing; the
    guest's later output is dropped and counted, not raised to the vCPU."""
    received = bytearray()

    def closes(data: bytes) -> None:
        if received:
            raise BrokenPipeError(32, "Broken pipe")
        received.extend(data)

    stream = ConsoleStream(closes)
    stream.write(b"first")
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(100):
        stream.write(b"0123456789")
        time.sleep(0.001)
    stream.close(timeout=5)
    assert bytes(received) == b"first"
    assert isinstance(stream.error, BrokenPipeError)
    assert (stream.written, stream.dropped, stream.abandoned) == (5, 1000, False)


def test_output_after_close_is_dropped_and_counted() -> None:
    received = bytearray()
    stream = ConsoleStream(received.extend)
    stream.write(b"kept")
    stream.close()
    stream.write(b"late")
    stream.close()  # idempotent
    assert (bytes(received), stream.dropped) == (b"kept", 4)


def test_the_buffer_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        ConsoleStream(print, limit=0)
