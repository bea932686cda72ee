"""The saved state of each virtio device model, and its checks (saved state is
untrusted input: each field is checked with `pyvmm.snapshot.checks`, as for every device).

A device model's state is what the guest was told or handed that the restoring VMM
does not know from its configuration: a network card's MAC and link status, the
console's size and the host input waiting for the guest. What the VMM opens again
from its configuration - the disk image, the TAP device, the entropy source - is not
state, as in Firecracker's `persist.rs`: a block device saves only what its disk
looked like to the guest (capacity, offered features, serial), so that a restore
onto a different disk is refused instead of corrupting the guest's view of it.

The queues are not here: `VirtioCore` saves them (`CoreState.queues`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.snapshot.registry import saved_state


@saved_state("virtio-blk")
@dataclass(frozen=True)
class BlockState:
    """virtio-blk (§5.2.4): what the guest knows of its disk, checked against the disk
    the restoring VMM opened."""

    capacity: int  # in 512-byte sectors
    features: int  # the device feature bits offered (RO, DISCARD... follow the disk)
    serial: bytes  # the 20-byte GET_ID answer


@saved_state("virtio-net")
@dataclass(frozen=True)
class NetState:
    """virtio-net (§5.1.4): the MAC address the guest read and the link status."""

    mac: bytes  # 6 bytes
    link_up: bool


@saved_state("virtio-rng")
@dataclass(frozen=True)
class EntropyState:
    """virtio-rng (§5.4): nothing beyond its queue."""


@saved_state("virtio-console")
@dataclass(frozen=True)
class ConsoleState:
    """virtio-console (§5.3.4): the console size offered with F_SIZE, and host input
    not yet delivered to the guest."""

    size: tuple[int, int] | None  # (cols, rows), or None without F_SIZE
    pending_input: bytes


VirtioDeviceState = BlockState | NetState | EntropyState | ConsoleState
"""The saved state of one virtio device model."""
