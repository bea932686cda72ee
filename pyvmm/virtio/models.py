"""The virtio device models a machine can build, one function each: what the
transports call to turn a `MachineConfig`'s devices into `VirtioDevice`s.

Each function takes what the machine has (configs, the I/O thread, the console
stream) and raises a `VmmError` subclass for bad user input when the device is built.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyvmm.device_config import DiskConfig
from pyvmm.virtio.device import VirtioDevice


def rng_device() -> VirtioDevice:
    """virtio-rng (§5.4) fed from the host's /dev/urandom (`MachineConfig.rng`)."""
    from pyvmm.virtio.rng import EntropyDevice

    return EntropyDevice()


def block_devices(disks: Sequence[DiskConfig], *, workers: int | None = None) -> list[VirtioDevice]:
    """One virtio-blk (§5.2) per `MachineConfig.disks` entry, in order (/dev/vda,
    /dev/vdb...). Each image is opened and locked here: a missing, unusable or
    locked one raises `DiskImageError` (an `ImageError`) naming it, after the disks
    already opened are closed again. `workers`: see `BlockDevice` (None: its default)."""
    from pyvmm.virtio.block import WORKERS, BlockDevice

    devices: list[VirtioDevice] = []
    try:
        for disk in disks:
            devices.append(BlockDevice(disk, workers=WORKERS if workers is None else workers))
    except BaseException:
        for device in devices:
            device.close()
        raise
    return devices
