"""`FileDescriptor`: the one owner of a host file descriptor in pyvmm.

It lives in the bottom layer, the KVM binding, so that the KVM handles (`Kvm`, `Vm`,
`Vcpu`) and everything above them that owns an fd (`pyvmm.io.eventfd.EventFd`) share
one close, one context manager and one `fileno()` instead of each writing its own.
"""

from __future__ import annotations

import os
import threading
from typing import Self


class FileDescriptor:
    """Owns one fd: `close()` is idempotent and safe against a concurrent user.

    A subclass that uses the fd from another thread than the one closing it (an
    eventfd signalled by a device while the VM is torn down) does so under `_lock`:
    `close()` takes it too, so the fd number is never used after it was closed and
    possibly reused for another file.
    """

    fd = -1  # until __init__ has an fd: close() and __del__ of a half-built object are no-ops

    def __init__(self, fd: int) -> None:
        self._lock = threading.Lock()
        self.fd = fd

    def fileno(self) -> int:
        """The fd, for `selectors`, ioctls and KVM_IRQFD/KVM_IOEVENTFD. -1 once closed."""
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd < 0:
            return  # closed already, or never opened: no lock to take either
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass
