"""Typed errors of the KVM binding: every failed ioctl names itself and its errno."""

from __future__ import annotations

import errno
import os


class KvmError(Exception):
    """Base of the binding's errors."""


class KvmUnavailableError(KvmError):
    """/dev/kvm is missing or cannot be opened."""


class KvmIoctlError(KvmError):
    """An ioctl failed; `errno` holds the kernel's error code."""

    def __init__(self, name: str, err: int, context: str = "") -> None:
        self.name = name
        self.errno = err
        detail = f" ({context})" if context else ""
        super().__init__(
            f"{name} failed{detail}: {errno.errorcode.get(err, str(err))} ({os.strerror(err)})"
        )


class KvmCapabilityError(KvmError):
    """The host's KVM lacks a capability pyvmm needs for what was asked."""
