"""virtio (1.2): the split virtqueue, device side, which every transport and device uses.

`Virtqueue` (queue.py) is one queue; `DescriptorChain` (chain.py) one checked chain
of buffers; `QueueState` (state.py) its snapshot; `VirtqueueError` (errors.py) the one
error a guest can cause through a queue; spec.py holds the spec's constants and layouts.
"""

from pyvmm.virtio.chain import Buffer, DescriptorChain
from pyvmm.virtio.errors import Fault, VirtqueueError
from pyvmm.virtio.queue import Virtqueue
from pyvmm.virtio.spec import DescFlag, DeviceStatus, Feature
from pyvmm.virtio.state import QueueState

__all__ = [
    "Buffer",
    "DescFlag",
    "DescriptorChain",
    "DeviceStatus",
    "Fault",
    "Feature",
    "QueueState",
    "Virtqueue",
    "VirtqueueError",
]
