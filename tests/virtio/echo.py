"""A small virtio device for transport tests: it copies what each chain's readable
part says into its writable part, and records what the transport did to it."""

from __future__ import annotations

from collections.abc import Sequence

from pyvmm.virtio.device import Activation, DeviceType, VirtioDevice

ECHO_FEATURE = 1 << 0


class Echo(VirtioDevice):
    """Copies what each chain's readable part says into its writable part."""

    device_type = DeviceType.ENTROPY
    kind = "test-device"
    name = "echo"

    def __init__(self) -> None:
        self.activations: list[Activation] = []
        self.resets = 0
        self.config_writes: list[tuple[int, bytes]] = []

    @property
    def queue_sizes(self) -> Sequence[int]:
        return (8,)

    def device_features(self) -> int:
        return ECHO_FEATURE

    def config(self) -> bytes:
        return b"\x11\x22\x33\x44"

    def write_config(self, offset: int, data: bytes) -> None:
        self.config_writes.append((offset, data))

    def activate(self, activation: Activation) -> None:
        self.activations.append(activation)

    def notify(self, queue: int) -> None:
        virtqueue = self.activations[-1].queues[queue]
        while (chain := virtqueue.pop()) is not None:
            written = chain.write(chain.read())
            virtqueue.add_used(chain.head, written)
        if virtqueue.needs_interrupt():
            self.activations[-1].interrupt.used_buffer(queue)

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        pass
