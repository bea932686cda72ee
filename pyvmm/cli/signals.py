"""Signals that end a VM from outside: SIGTERM (a service manager, `kill`) and SIGHUP
(the terminal went away). pyvmm stops the guest as it would for a timeout, so the run
ends the documented way: the terminal restored, every device closed, status 72.

Python runs signal handlers in the main thread only, between bytecodes; the main thread
of `pyvmm run` waits in `Machine.run()` on an event, which such a handler interrupts.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_on_signals(stop: Callable[[str], None]) -> Iterator[None]:
    """While in the block, SIGTERM and SIGHUP call `stop(signal name)` instead of
    killing the process. Outside the main thread (where Python cannot take signals)
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop(signal.Signals(signum).name)

    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
