"""The last bytes a guest printed: a bounded tail of its console.

A guest can print forever (a UART flood from a hostile or broken guest), so pyvmm keeps
only the newest `CONSOLE_TAIL_BYTES` in memory; everything is streamed as it comes to
`MachineConfig.console` for whoever wants all of it.
"""

from __future__ import annotations

import threading

CONSOLE_TAIL_BYTES = 1 << 20  # 1 MiB: a whole Linux boot log, a bounded cost per VM


class ConsoleTail:
    """Append-only byte log that keeps at most `limit` of its newest bytes.

    Trimming happens when the buffer reaches twice the limit, so appending stays
    amortised O(1) however small each write is (a UART writes one byte at a time).
    """

    def __init__(self, limit: int = CONSOLE_TAIL_BYTES) -> None:
        if limit <= 0:
            raise ValueError("the console tail needs room for at least one byte")
        self.limit = limit
        self._trimmed = 0  # bytes deleted from the front of the buffer
        self._buffer = bytearray()
        self._lock = threading.Lock()  # vCPU threads append; any thread reads

    def append(self, data: bytes) -> None:
        with self._lock:
            self._buffer += data
            excess = len(self._buffer) - self.limit
            if excess >= self.limit:
                del self._buffer[:excess]
                self._trimmed += excess

    def snapshot(self) -> tuple[bytes, int]:
        """The newest `limit` bytes (all of them while fewer were printed), and how
        many bytes came before them."""
        with self._lock:
            excess = max(0, len(self._buffer) - self.limit)
            return bytes(self._buffer[excess:]), self._trimmed + excess

    def bytes(self) -> bytes:
        return self.snapshot()[0]

    @property
    def dropped(self) -> int:
        """How many of the bytes printed are no longer kept."""
        return self.snapshot()[1]

    @property
    def total(self) -> int:
        """How many bytes the guest printed in all."""
        with self._lock:
            return self._trimmed + len(self._buffer)
