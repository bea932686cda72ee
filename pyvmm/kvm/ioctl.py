"""ioctl request numbers, computed as `include/uapi/asm-generic/ioctl.h` does."""

from __future__ import annotations

import ctypes

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE

Layout = type[ctypes.Structure] | type[ctypes.Union] | type[ctypes._SimpleCData]  # type: ignore[type-arg]


def _IOC(direction: int, kind: int, nr: int, size: int) -> int:  # noqa: N802 - as in the header
    return (
        (direction << _IOC_DIRSHIFT)
        | (kind << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(nr: int) -> int:  # noqa: N802
    return _IOC(_IOC_NONE, KVMIO, nr, 0)


def _IOR(nr: int, layout: Layout) -> int:  # noqa: N802
    return _IOC(_IOC_READ, KVMIO, nr, ctypes.sizeof(layout))


def _IOW(nr: int, layout: Layout) -> int:  # noqa: N802
    return _IOC(_IOC_WRITE, KVMIO, nr, ctypes.sizeof(layout))


def _IOWR(nr: int, layout: Layout) -> int:  # noqa: N802
    return _IOC(_IOC_READ | _IOC_WRITE, KVMIO, nr, ctypes.sizeof(layout))
