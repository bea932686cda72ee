"""The host side of a virtio-net card: a TAP device (Documentation/networking/tuntap.rst).

`Tap.open(name)` attaches to an existing TAP; `Tap.open(None)` creates one (root, or
CAP_NET_ADMIN). Either way the fd is a TAP without packet information (IFF_NO_PI),
with a virtio-net header in front of every frame (IFF_VNET_HDR) of the 12 bytes of
`struct virtio_net_hdr_v1` (TUNSETVNETHDRSZ): the layout a VERSION_1 virtio-net driver
uses (virtio 1.2 §5.1.6), so frames go between the TAP and guest memory unchanged.
The fd is non-blocking: its reader waits in the I/O thread's poll, never in read().

A created TAP is not persistent (no TUNSETPERSIST): the kernel removes it when its
last fd closes, so it is gone at `close()`, and also when pyvmm is killed by any
signal, SIGKILL included, which no cleanup code of ours could promise.

Only the TAP's own fd is touched for an existing TAP: its addresses, link state and
offload settings beyond TUNSETOFFLOAD belong to whoever set it up.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from pyvmm.errors import ConfigError
from pyvmm.kvm.fd import FileDescriptor
from pyvmm.net.if_tun import (
    TUNSETIFF,
    TUNSETOFFLOAD,
    TUNSETVNETHDRSZ,
    IfFlag,
    TunOffload,
    ifreq,
    ifreq_name,
)

log = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"
VNET_HDR_SIZE = 12  # struct virtio_net_hdr_v1, num_buffers included (§5.1.6)
CREATE_PATTERN = "pyvmm%d"  # the kernel picks the first free number (dev_alloc_name)
_TAP_FLAGS = int(IfFlag.IFF_TAP | IfFlag.IFF_NO_PI | IfFlag.IFF_VNET_HDR)
_CSUM = int(TunOffload.TUN_F_CSUM)
# What is probed, each on top of TUN_F_CSUM (the kernel ignores segmentation offloads
# without it). USO4 and USO6 are accepted only together (tun_set_offload).
_PROBES = (
    int(TunOffload.TUN_F_TSO4),
    int(TunOffload.TUN_F_TSO6),
    int(TunOffload.TUN_F_UFO),
    int(TunOffload.TUN_F_USO4 | TunOffload.TUN_F_USO6),
)
_EXISTING_HINT = "create one with: ip tuntap add dev NAME mode tap"


class TapError(ConfigError):
    """The TAP device cannot be opened, created or configured as asked."""


class Tap(FileDescriptor):
    """One open TAP device: its fd, its name, and the offloads its kernel accepts.

    The fd is owned as every fd in pyvmm is (`FileDescriptor`: closed once, by
    `close()`, the context manager or when the Tap is dropped); a TAP we created lives
    exactly as long as it.
    """

    def __init__(self, fd: int, name: str, created: bool) -> None:
        super().__init__(fd)  # ours from here on, also when probing fails below
        self.name = name
        self.created = created  # removed by the kernel when the fd closes
        try:
            self.offloads = self._probe_offloads()  # TUN_F_* flags TUNSETOFFLOAD accepts
        except BaseException:
            self.close()
            raise
        self.offload = 0  # what is set now

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, name: str | None) -> Tap:
        """Attach to the TAP `name`, or create one when `name` is None.

        Raises `TapError` (a ConfigError) with one clear line: /dev/net/tun missing or
        not permitted, no interface of that name, an interface that is not a TAP, a
        TAP in use or owned by someone else, or creation without the privilege.
        """
        if name is not None:
            try:
                # Checked first: TUNSETIFF with an unknown name would quietly create a
                # TAP when we are root, and the user asked for an existing one.
                socket.if_nametoindex(name)
            except OSError:
                raise TapError(f"TAP device {name!r} does not exist ({_EXISTING_HINT})") from None
        fd = _open_tun()
        try:
            actual = _set_iff(fd, name)
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        except BaseException:
            os.close(fd)  # not a Tap's yet
            raise
        tap = cls(fd, actual, created=name is None)  # owns the fd, closed if it raises
        try:
            if tap.created:
                _link_up(actual)
        except BaseException:
            tap.close()
            raise
        log.info("%s TAP device %s", "created" if tap.created else "attached to", actual)
        return tap

    def _probe_offloads(self) -> int:
        """Which TUN_F_* flags this kernel's TUNSETOFFLOAD accepts (EINVAL: not known)."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, _CSUM)
        except OSError:
            return 0  # no partial checksums, so no segmentation offloads either
        accepted = _CSUM
        for flags in _PROBES:
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, _CSUM | flags)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise TapError(f"TAP {self.name}: TUNSETOFFLOAD failed: {exc.strerror}") from None
                continue
            accepted |= flags
        self._set_offload_raw(0)  # nothing until a guest says what it takes
        return accepted

    # --- use --------------------------------------------------------------------------

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD: what the kernel may hand us unfinished (partial checksums,
        TCP/UDP segments up to 64 KiB); only flags in `offloads` are allowed."""
        if flags & ~self.offloads:
            raise ValueError(f"TAP {self.name}: offloads {flags & ~self.offloads:#x} are not supported")
        if flags != self.offload:
            self._set_offload_raw(flags)

    def _set_offload_raw(self, flags: int) -> None:
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as exc:
            raise TapError(f"TAP {self.name}: TUNSETOFFLOAD {flags:#x} failed: {exc.strerror}") from None
        self.offload = flags

    def close(self) -> None:
        """Close the fd; a TAP we created disappears with it. Idempotent."""
        was_open = not self.closed
        super().close()
        if was_open and self.created:
            log.info("removed TAP device %s", self.name)

    def __repr__(self) -> str:
        return f"Tap({self.name!r}, fd={self.fd}, created={self.created})"


def _open_tun() -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TapError(f"{TUN_PATH} does not exist (load the tun module: modprobe tun)") from None
    except PermissionError:
        raise TapError(f"no permission to open {TUN_PATH} (TAP networking needs access to it)") from None
    except OSError as exc:
        raise TapError(f"cannot open {TUN_PATH}: {exc.strerror}") from None


def _set_iff(fd: int, name: str | None) -> str:
    """TUNSETIFF: attach `fd` to TAP `name`, or to a new TAP when None; its name."""
    request = ifreq(os.fsencode(name if name is not None else CREATE_PATTERN), _TAP_FLAGS)
    try:
        return ifreq_name(fcntl.ioctl(fd, TUNSETIFF, request))
    except OSError as exc:
        raise TapError(_iff_error(name, exc)) from None


def _iff_error(name: str | None, exc: OSError) -> str:
    if name is None:
        if exc.errno == errno.EPERM:
            return (
                "creating a TAP device needs root (CAP_NET_ADMIN); "
                f"or name an existing one with tap=NAME ({_EXISTING_HINT})"
            )
        return f"cannot create a TAP device: {exc.strerror}"
    if exc.errno == errno.EPERM:
        return f"no permission to use TAP device {name!r} (it belongs to another user or group)"
    if exc.errno == errno.EBUSY:
        return f"TAP device {name!r} is in use by another process"
    if exc.errno == errno.EINVAL:
        return f"{name!r} is not a single-queue TAP device (a TUN, a multi-queue TAP or another kind of link)"
    return f"cannot attach to TAP device {name!r}: {exc.strerror}"


def _link_up(name: str) -> None:
    """Bring a TAP we created up (netlink, through pyroute2), as QEMU's ifup script
    would: its carrier follows our fd, the administrative state is set here."""
    try:
        with IPRoute() as ipr:
            ipr.link("set", index=socket.if_nametoindex(name), state="up")
    except (OSError, NetlinkError) as exc:
        raise TapError(f"cannot bring up TAP device {name}: {exc}") from None
