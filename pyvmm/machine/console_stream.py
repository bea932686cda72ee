"""`ConsoleStream`: the guest's console output on its way to a sink that may block.

The guest prints from a vCPU thread (COM1, with the UART's lock held) and from the
I/O thread (virtio-console, with its transmit lock held). Neither may wait for the
host's stdout: a pipe nobody reads would stop the vCPU or the I/O thread inside a
lock, and with it `Machine.stop()` and the teardown. So `write()` only appends to a
bounded buffer (`STREAM_BUFFER_BYTES`, 1 MiB) and returns; a writer thread of the
stream's own moves the buffer to the sink. What does not fit is dropped and counted,
as the UART drops host input its buffer has no room for.

`close(timeout)` lets the writer flush what it can within `timeout` seconds and never
waits longer: a writer stuck in the sink (a write to a pipe nobody reads does not
return) is abandoned. It is a daemon thread, so it does not keep the process alive;
what it had not written is counted as dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)

STREAM_BUFFER_BYTES = 1 << 20  # what may wait for a slow sink: a whole Linux boot log
FLUSH_SECONDS = 1.0  # how long close() waits for the sink by default
STALL_SECONDS = 0.2  # close() gives up sooner when the sink took nothing for this long
_CHUNK_BYTES = 64 * 1024  # one sink call at most: a pipe's capacity


class ConsoleStream:
    """A non-blocking front for `sink` (e.g. a write to stdout), drained by a thread.

    `write()` is safe from any thread and never waits for the sink. Bytes reach the
    sink whole and in order, up to the first one dropped: when the buffer is full,
    the part of a write that does not fit is dropped (the newest output, so what the
    sink gets stays contiguous up to each gap). After the sink raised (`OSError`: a
    closed pipe) nothing more is written to it; the rest is dropped and counted.
    """

    def __init__(
        self,
        sink: Callable[[bytes], object],
        limit: int = STREAM_BUFFER_BYTES,
        name: str = "console-writer",
    ) -> None:
        if limit <= 0:
            raise ValueError("the console stream needs room for at least one byte")
        self.limit = limit
        self._sink = sink
        self._buffer = bytearray()
        self._in_flight = 0  # bytes handed to the sink, not yet returned from it
        self._state = threading.Condition()  # never held while the sink runs
        self._closing = False
        self.written = 0  # bytes the sink took
        self.dropped = 0  # bytes that never reached the sink (full buffer, failed or stuck sink)
        self.error: Exception | None = None  # why the sink stopped taking output
        self.abandoned = False  # close() left the writer stuck in the sink
        self._thread = threading.Thread(target=self._drain, name=name, daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Queue `data` for the sink; drop (and count) what the buffer has no room for."""
        with self._state:
            if self._closing or self.error is not None:
                self.dropped += len(data)
                return
            room = max(0, self.limit - len(self._buffer) - self._in_flight)
            if len(data) > room:
                if not self.dropped:
                    log.info("console output is faster than its sink: dropping what does not fit")
                self.dropped += len(data) - room
                data = data[:room]
            if data:
                self._buffer += data
                self._state.notify()

    def close(self, timeout: float = FLUSH_SECONDS) -> None:
        """Take no more output and let the writer flush for up to `timeout` seconds,
        or until the sink has taken nothing for `STALL_SECONDS` (a pipe nobody reads:
        waiting longer only makes the end late). Whatever is still unwritten then is
        counted in `dropped` and the writer is abandoned. Idempotent."""
        with self._state:
            self._closing = True
            self._state.notify_all()
        deadline = time.monotonic() + timeout
        written = self.written
        while self._thread.is_alive() and (left := deadline - time.monotonic()) > 0:
            self._thread.join(min(STALL_SECONDS, left))
            if self.written == written:
                break  # no progress: the sink is stuck
            written = self.written
        with self._state:
            if self._thread.is_alive():
                self.abandoned = True
                self.dropped += len(self._buffer) + self._in_flight  # not known to have arrived
                self._buffer.clear()
                self._in_flight = 0

    def __enter__(self) -> ConsoleStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _drain(self) -> None:
        """The writer thread: buffer to sink, a chunk at a time, until closed and empty."""
        while True:
            with self._state:
                while not self._buffer and not self._closing:
                    self._state.wait()
                if not self._buffer:
                    return
                chunk = bytes(self._buffer[:_CHUNK_BYTES])
                del self._buffer[:_CHUNK_BYTES]
                self._in_flight = len(chunk)
            try:
                self._sink(chunk)
            except Exception as exc:  # OSError: a closed pipe; anything else: a bug, logged
                with self._state:
                    if not self.abandoned:
                        self.dropped += self._in_flight + len(self._buffer)
                    self.error = exc
                    self._buffer.clear()
                    self._in_flight = 0
                if isinstance(exc, OSError):
                    log.info("console output stopped (%s); the guest runs on", exc)
                else:
                    log.exception("console output failed; the guest runs on")
                return
            with self._state:
                if not self.abandoned:
                    self.written += len(chunk)
                self._in_flight = 0
