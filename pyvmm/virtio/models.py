"""The virtio device models a machine can build, one function each: what the
transports call to turn a `MachineConfig`'s devices into `VirtioDevice`s.

Each function takes what the machine has (configs, the I/O thread, the console
stream) and raises a `VmmError` subclass for bad user input when the device is built.
"""

from __future__ import annotations

from pyvmm.virtio.device import VirtioDevice


def rng_device() -> VirtioDevice:
    """virtio-rng (§5.4) fed from the host's /dev/urandom (`MachineConfig.rng`)."""
    from pyvmm.virtio.rng import EntropyDevice

    return EntropyDevice()
