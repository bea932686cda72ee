"""The virtio device models a machine can build, one function each: what the
transports call to turn a `MachineConfig`'s devices into `VirtioDevice`s.

Each function takes what the machine has (configs, the I/O thread, the console
stream) and raises a `VmmError` subclass for bad user input when the device is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyvmm.device_config import DiskConfig, NetConfig
from pyvmm.io.thread import IoThread
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


def console_device(output: Callable[[bytes], None], *, size: tuple[int, int] | None = None) -> VirtioDevice:
    """virtio-console (§5.3), one port: the guest's hvc0 (`MachineConfig.console_device
    == "virtio"`, with `console=hvc0` on the guest's command line).

    `output` is the machine's console stream (`MachineConsole.write`, as COM1's);
    the machine's `send_input` should hand keystrokes to the device's `feed(bytes)`
    (`ConsoleDevice.feed`, safe from any thread). `size` is (columns, rows), offered
    with VIRTIO_CONSOLE_F_SIZE when given.
    """
    from pyvmm.virtio.console import ConsoleDevice

    return ConsoleDevice(output, size=size)


def net_devices(nets: Sequence[NetConfig], io: IoThread) -> list[VirtioDevice]:
    """One virtio-net (§5.1) per `MachineConfig.nets` entry, in order (eth0, eth1...),
    its receive path on the VM's I/O thread `io` (registered now, served once `io`
    runs). Each TAP is opened here: `tap=NAME` attaches to an existing TAP, `tap=None`
    creates one (root only), removed when the device is closed or pyvmm exits. A
    missing TAP, no permission for /dev/net/tun, a TAP in use... raise `TapError` (a
    `ConfigError`) naming it, after the cards already opened are closed again. The
    MAC is `NetConfig.mac_bytes(index)`."""
    from pyvmm.net.tap import Tap
    from pyvmm.virtio.net import NetDevice

    devices: list[VirtioDevice] = []
    try:
        for index, net in enumerate(nets):
            tap = Tap.open(net.tap)
            try:
                devices.append(NetDevice(tap, net.mac_bytes(index), io))
            except BaseException:
                tap.close()
                raise
    except BaseException:
        for device in devices:
            device.close()
        raise
    return devices
