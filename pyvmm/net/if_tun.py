"""The TUN/TAP driver's user-space interface, as `include/uapi/linux/if_tun.h` and
`include/uapi/linux/if.h` name it (see also Documentation/networking/tuntap.rst).

ioctl request numbers are computed the way the header computes them, with
`_IOW('T', nr, type)` / `_IOR('T', nr, type)` (include/uapi/asm-generic/ioctl.h).
"""

from __future__ import annotations

import ctypes
import struct
from enum import IntFlag

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_WRITE = 1
_IOC_READ = 2
_TUN_IOC_TYPE = ord("T")  # #define TUNSETIFF _IOW('T', 202, int)


def _ioc(direction: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (_TUN_IOC_TYPE << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


_INT = ctypes.sizeof(ctypes.c_int)
_UINT = ctypes.sizeof(ctypes.c_uint)

TUNSETIFF = _ioc(_IOC_WRITE, 202, _INT)
TUNSETPERSIST = _ioc(_IOC_WRITE, 203, _INT)
TUNGETFEATURES = _ioc(_IOC_READ, 207, _UINT)
TUNSETOFFLOAD = _ioc(_IOC_WRITE, 208, _UINT)
TUNGETIFF = _ioc(_IOC_READ, 210, _UINT)
TUNGETVNETHDRSZ = _ioc(_IOC_READ, 215, _INT)
TUNSETVNETHDRSZ = _ioc(_IOC_WRITE, 216, _INT)


class IfFlag(IntFlag):
    """ifr_flags for TUNSETIFF (if_tun.h)."""

    IFF_TUN = 0x0001
    IFF_TAP = 0x0002
    IFF_NO_PI = 0x1000
    IFF_VNET_HDR = 0x4000
    IFF_MULTI_QUEUE = 0x0100


class TunOffload(IntFlag):
    """TUNSETOFFLOAD flags (if_tun.h): what the TAP may hand to its reader unfinished,
    i.e. what the guest agreed to receive (VIRTIO_NET_F_GUEST_*)."""

    TUN_F_CSUM = 0x01  # partial checksums
    TUN_F_TSO4 = 0x02
    TUN_F_TSO6 = 0x04
    TUN_F_TSO_ECN = 0x08
    TUN_F_UFO = 0x10
    TUN_F_USO4 = 0x20
    TUN_F_USO6 = 0x40


IFNAMSIZ = 16
# struct ifreq: char ifr_name[IFNAMSIZ]; then a union whose largest member (struct
# ifmap) makes the whole 40 bytes on x86-64; TUNSETIFF reads ifr_flags, a short.
IFREQ = struct.Struct("=16sH22x")
assert IFREQ.size == 40


def ifreq(name: bytes, flags: int) -> bytes:
    """A struct ifreq with `ifr_name` and `ifr_flags` set."""
    return IFREQ.pack(name, flags)


def ifreq_name(data: bytes) -> str:
    """The interface name the kernel wrote back into a struct ifreq."""
    raw: bytes = IFREQ.unpack(data)[0]
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")
