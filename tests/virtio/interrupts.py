"""The `Interrupt` (pyvmm/virtio/device.py) the virtio tests hand a device: it records
what the device signalled instead of raising an interrupt (virtio 1.2 §2.3 for
configuration changes, §2.7.7 for used buffer notifications)."""

from __future__ import annotations

import threading


class Interrupts:
    """The queue of every used buffer notification in order, the number of
    configuration change notifications, and an event set at each used buffer for a
    test waiting on a device thread. Safe from any thread (block workers, the I/O
    thread)."""

    def __init__(self) -> None:
        self.used: list[int] = []
        self.config = 0
        self.event = threading.Event()
        self._lock = threading.Lock()

    def used_buffer(self, queue: int) -> None:
        with self._lock:
            self.used.append(queue)
        self.event.set()

    def config_changed(self) -> None:
        with self._lock:
            self.config += 1
