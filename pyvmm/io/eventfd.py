"""`EventFd`: a Linux eventfd (eventfd(2)), the doorbell between KVM, the vCPU threads
and the I/O thread.

KVM signals one when the guest writes a queue notification (KVM_IOEVENTFD) and
reads one to inject an interrupt (KVM_IRQFD); pyvmm's threads signal each other
through them too. The counter semantics of eventfd(2) make a signal impossible to
lose: writes add up until someone reads, and a read returns the sum and resets it.
The fd is non-blocking, so a reader that finds nothing gets 0 instead of waiting.
Owning it (close, context manager, `fileno()`) is the KVM binding's `FileDescriptor`,
the same as for the KVM handles.
"""

from __future__ import annotations

import os

from pyvmm.kvm.fd import FileDescriptor


class EventFd(FileDescriptor):
    """One eventfd, non-blocking and close-on-exec. Safe to signal from any thread."""

    def __init__(self) -> None:
        super().__init__(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))

    def signal(self, count: int = 1) -> None:
        """Add `count` to the counter: whoever waits on the fd wakes up. A no-op once
        closed (a late signal from a device being torn down is not an error)."""
        # Under the lock `close` takes: a signal racing the close must not write to a
        # reused fd number (cheap: uncontended on every path but close).
        with self._lock:
            if self.fd < 0:
                return
            try:
                os.eventfd_write(self.fd, count)
            except BlockingIOError:
                # The counter is at its maximum (2^64 - 2): the reader has plenty of
                # wake-ups pending already, and one more would tell it nothing new.
                pass

    def consume(self) -> int:
        """Read and reset the counter: how many signals arrived since the last read (0: none,
        or closed)."""
        if self.fd < 0:
            return 0
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0
