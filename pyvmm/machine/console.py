"""The guest's interactive console as a machine's users see it (`Machine.send_input`,
`Machine.console_output`, `MachineConfig.console`).

Output comes from a vCPU thread (COM1) or the I/O thread (virtio-console) with the
device's lock held, so it never waits: it is kept as a bounded tail and handed to the
caller's sink through a `ConsoleStream` of the machine's own (a sink that blocks, such
as a pipe nobody reads, holds no device thread). Input goes to the console device
(the UART, or hvc0), and waits, up to `PENDING_INPUT_BYTES`, before that device
exists and while the machine is paused (a paused machine's devices must not change);
after the end it is dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pyvmm.machine.console_stream import ConsoleStream
from pyvmm.machine.console_tail import CONSOLE_TAIL_BYTES, ConsoleTail
from pyvmm.outcome import ConsoleInput

# Input typed before the console exists, or while paused, waits: up to what a console's
# host buffer holds.
PENDING_INPUT_BYTES = 64 * 1024
INPUT_ROOM_AFTER_END = 1 << 20


def _output_stream(
    sink: Callable[[bytes], object] | None,
) -> tuple[ConsoleStream | None, Callable[[bytes], object] | None]:
    """Where the guest's output goes: the caller's sink behind a `ConsoleStream` of
    the machine's own; a stream's own `write` (the CLI's, shared across reboots)
    already never blocks and is used as it is."""
    if sink is None:
        return None, None
    if isinstance(getattr(sink, "__self__", None), ConsoleStream):
        return None, sink
    stream = ConsoleStream(sink, name="pyvmm-console")
    return stream, stream.write


class MachineConsole:
    """One machine's console: the output tail and stream, the input and its holding."""

    def __init__(self, sink: Callable[[bytes], object] | None) -> None:
        self._sink = sink
        self._tail = ConsoleTail(CONSOLE_TAIL_BYTES)
        self._stream: ConsoleStream | None = None  # made when the machine starts
        self._output: Callable[[bytes], object] | None = None
        self._lock = threading.Lock()
        self._input: ConsoleInput | None = None
        self._pending = bytearray()
        self._held = False
        self._ended = False

    # --- output ---------------------------------------------------------------------------

    def start_output(self) -> None:
        """The machine starts: from now on output also goes to the caller's sink."""
        self._stream, self._output = _output_stream(self._sink)

    def write(self, data: bytes) -> None:
        """What the guest printed (the devices' sink); never waits."""
        self._tail.append(data)
        if self._output is not None:
            self._output(data)

    def printed(self) -> bytes:
        """The last `CONSOLE_TAIL_BYTES` the guest printed."""
        return self._tail.bytes()

    def finish_output(self) -> tuple[bytes, int]:
        """The machine has ended: flush the stream (while the sink takes it, at most
        `ConsoleStream.FLUSH_SECONDS`); the tail and how many bytes came before it."""
        if self._stream is not None:
            self._stream.close()
        return self._tail.snapshot()

    # --- input ----------------------------------------------------------------------------

    def attach(self, device: ConsoleInput | None) -> None:
        """The console device exists: what waited goes to it (unless held)."""
        with self._lock:
            self._input = device
            self._release()

    def hold(self) -> None:
        """The machine pauses: input waits from now on."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        """The machine runs again: what waited goes to the console."""
        with self._lock:
            self._held = False
            self._release()

    def end(self) -> None:
        """The machine is torn down: input is dropped from now on."""
        with self._lock:
            self._ended = True

    def send(self, data: bytes) -> None:
        with self._lock:
            if self._ended:
                return
            if self._input is None or self._held:
                self._pending += data[: max(PENDING_INPUT_BYTES - len(self._pending), 0)]
                return
            self._input.feed(data)

    def room(self) -> int:
        with self._lock:
            if self._ended:
                return INPUT_ROOM_AFTER_END
            if self._input is None or self._held:
                return max(PENDING_INPUT_BYTES - len(self._pending), 0)
            return self._input.input_room()

    def _release(self) -> None:
        """With the lock: hand what waited to the console."""
        if self._pending and self._input is not None and not self._held:
            self._input.feed(bytes(self._pending))
            self._pending.clear()
