"""`EventFd`: a Linux eventfd (eventfd(2)), the doorbell between KVM, the vCPU threads
and the I/O thread.

KVM signals one when the guest writes a queue notification (KVM_IOEVENTFD) and
reads one to inject an interrupt (KVM_IRQFD); pyvmm's threads signal each other
through them too. The counter semantics of eventfd(2) make a signal impossible to
lose: writes add up until someone reads, and a read returns the sum and resets it.
The fd is non-blocking, so a reader that finds nothing gets 0 instead of waiting.
"""

from __future__ import annotations

import os
import threading


class EventFd:
    """One eventfd, non-blocking and close-on-exec. Safe to signal from any thread."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # Closing while another thread signals must not write to a reused fd number:
        # `signal` and `close` take this lock (cheap: uncontended on every path but close).
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The fd, for `selectors`, KVM_IRQFD and KVM_IOEVENTFD. -1 once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def signal(self, count: int = 1) -> None:
        """Add `count` to the counter: whoever waits on the fd wakes up. A no-op once
        closed (a late signal from a device being torn down is not an error)."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.eventfd_write(self._fd, count)
            except BlockingIOError:
                # The counter is at its maximum (2^64 - 2): the reader has plenty of
                # wake-ups pending already, and one more would tell it nothing new.
                pass

    def consume(self) -> int:
        """Read and reset the counter: how many signals arrived since the last read (0: none,
        or closed)."""
        if self._fd < 0:
            return 0
        try:
            return os.eventfd_read(self._fd)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> EventFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass
