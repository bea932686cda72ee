"""Lifecycle events for the control front ends: QMP's names (STOP, RESUME, SHUTDOWN,
RESET, POWERDOWN) with their data, handed to every listener from whichever thread
made them. A listener must not block (QMP's queues the event for its loop); one that
raises is logged and the others still hear the event."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, object]], None]


class Listeners:
    """A thread-safe set of listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def __len__(self) -> int:
        return len(self._listeners)

    def emit(self, event: str, data: dict[str, object] | None = None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event, data or {})
            except Exception:  # a front end's bug must not stop the machine
                log.exception("event listener failed on %s", event)
