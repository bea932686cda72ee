"""virtio-net's feature bits (virtio 1.2 §5.1.3) and how they map onto a TAP
device's offloads (TUNSETOFFLOAD, pyvmm/net/if_tun.py).

Two directions: what the device offers follows what the TAP takes in a header it is
given (`offered_features`: the host-side CSUM / HOST_* bits, and the guest-side ones
the TAP can produce), and what the driver accepted decides which offloads the TAP
may use towards the guest (`tap_offload`), so the kernel only hands over frames the
guest can take.
"""

from __future__ import annotations

from enum import IntFlag

from pyvmm.net.if_tun import TunOffload


class NetFeature(IntFlag):
    """virtio-net feature bits (§5.1.3) that pyvmm knows. Values are masks."""

    CSUM = 1 << 0
    GUEST_CSUM = 1 << 1
    MAC = 1 << 5
    GUEST_TSO4 = 1 << 7
    GUEST_TSO6 = 1 << 8
    GUEST_UFO = 1 << 10
    HOST_TSO4 = 1 << 11
    HOST_TSO6 = 1 << 12
    HOST_UFO = 1 << 14
    MRG_RXBUF = 1 << 15
    STATUS = 1 << 16
    GUEST_USO4 = 1 << 54
    GUEST_USO6 = 1 << 55
    HOST_USO = 1 << 56


# The segmentation offloads towards the guest: with any of them a frame can be 64 KiB.
GSO_TO_GUEST = NetFeature.GUEST_TSO4 | NetFeature.GUEST_TSO6 | NetFeature.GUEST_UFO
GSO_TO_GUEST |= NetFeature.GUEST_USO4 | NetFeature.GUEST_USO6
_USO = int(TunOffload.TUN_F_USO4 | TunOffload.TUN_F_USO6)


def offered_features(offloads: int) -> int:
    """The device feature bits for a TAP that accepts `offloads` (TUN_F_* flags)."""
    features = NetFeature.MAC | NetFeature.STATUS | NetFeature.MRG_RXBUF
    if offloads & TunOffload.TUN_F_CSUM:
        # A TAP that takes partial checksums also takes TSO headers from us.
        features |= NetFeature.CSUM | NetFeature.GUEST_CSUM | NetFeature.HOST_TSO4 | NetFeature.HOST_TSO6
        if offloads & TunOffload.TUN_F_TSO4:
            features |= NetFeature.GUEST_TSO4
        if offloads & TunOffload.TUN_F_TSO6:
            features |= NetFeature.GUEST_TSO6
        if offloads & TunOffload.TUN_F_UFO:
            features |= NetFeature.GUEST_UFO | NetFeature.HOST_UFO
        if offloads & _USO == _USO:
            features |= NetFeature.GUEST_USO4 | NetFeature.GUEST_USO6 | NetFeature.HOST_USO
    return int(features)


def tap_offload(features: int, accepted_by_tap: int) -> int:
    """The TUNSETOFFLOAD flags for the negotiated `features` (as QEMU's
    tap_fd_set_offload): segmentation offloads only with partial checksums, which
    §5.1.3.1 makes them depend on; USO4 and USO6 only together, as the TAP takes them."""
    if not features & NetFeature.GUEST_CSUM:
        return 0
    flags = int(TunOffload.TUN_F_CSUM)
    if features & NetFeature.GUEST_TSO4:
        flags |= TunOffload.TUN_F_TSO4
    if features & NetFeature.GUEST_TSO6:
        flags |= TunOffload.TUN_F_TSO6
    if features & NetFeature.GUEST_UFO:
        flags |= TunOffload.TUN_F_UFO
    if features & NetFeature.GUEST_USO4 and features & NetFeature.GUEST_USO6:
        flags |= _USO
    return flags & accepted_by_tap
