"""`KvmHandle`: what the /dev/kvm, VM and vCPU fds have in common: an owned fd
(`FileDescriptor`) and checked ioctls on it that name themselves when they fail."""

from __future__ import annotations

import ctypes
import errno
from typing import TypeVar

from pyvmm.kvm import ioctls
from pyvmm.kvm.errors import KvmIoctlError
from pyvmm.kvm.fd import FileDescriptor

State = TypeVar("State", bound=ctypes.Structure)

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int


def checked_ioctl(fd: int, request: int, arg: int | ctypes._CData = 0, *, context: str = "") -> int:
    """Issue one ioctl; turn a failure into a `KvmIoctlError` that names it (by its
    name in linux/kvm.h, `ioctls.NAMES`) with `context`.

    `arg` is an integer (passed as an unsigned long) or a ctypes object (passed by
    reference). libc's ioctl is called through ctypes rather than `fcntl.ioctl`, which
    narrows integers to a C int and copies buffers.
    """
    argument = ctypes.c_ulong(arg) if isinstance(arg, int) else ctypes.byref(arg)
    result: int = _ioctl(fd, ctypes.c_ulong(request), argument)
    if result < 0:
        name = ioctls.NAMES.get(request, f"ioctl {request:#x}")
        raise KvmIoctlError(name, ctypes.get_errno() or errno.EIO, context)
    return result


class KvmHandle(FileDescriptor):
    """A KVM fd: /dev/kvm, a VM or a vCPU."""

    def _ioctl(self, request: int, arg: int | ctypes._CData = 0, *, context: str = "") -> int:
        return checked_ioctl(self.fd, request, arg, context=context)

    def _get(self, request: int, state: State) -> State:
        """An ioctl that fills `state` (KVM_GET_*); `state`, filled."""
        checked_ioctl(self.fd, request, state)
        return state
