"""The saved state of one virtqueue, and its checks (saved state is untrusted input).

Like rust-vmm's `QueueState`, a snapshot holds what the driver programmed and the
device's two ring positions; `Virtqueue.restore` accepts it only through
`check_state`, which validates every field on its own and against the others.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pyvmm.virtio.errors import Fault, VirtqueueError
from pyvmm.virtio.spec import is_valid_queue_size

_U16 = 0xFFFF
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class QueueState:
    """One virtqueue's state, as `Virtqueue.save` returns it."""

    max_size: int  # the device's maximum (not guest-chosen)
    size: int  # the driver's Queue Size
    ready: bool
    desc_table: int
    avail_ring: int
    used_ring: int
    next_avail: int  # 16-bit free-running position in the available ring
    next_used: int  # 16-bit free-running position in the used ring
    event_idx: bool  # VIRTIO_F_EVENT_IDX negotiated
    indirect: bool  # VIRTIO_F_INDIRECT_DESC negotiated
    notifications: bool  # available-buffer notifications enabled by the device
    unsignalled: int  # used elements added since the last interrupt decision
    broken: bool  # a fault was found and the device awaits a reset


def check_state(state: object, max_size: int) -> QueueState:
    """`state` as a `QueueState` whose fields are each in range and agree; else STATE.

    The rings' addresses are checked against guest RAM by the queue itself, as for a
    driver's configuration.
    """
    if not isinstance(state, QueueState):
        raise VirtqueueError(Fault.STATE, f"not a QueueState: {type(state).__name__}")
    for field in fields(QueueState):
        value = getattr(state, field.name)
        wanted = bool if field.type in ("bool", bool) else int
        # bool is an int subclass: an int field must not hold a bool, nor the reverse.
        if type(value) is not wanted:
            raise VirtqueueError(Fault.STATE, f"{field.name} is {value!r}, not {wanted.__name__}")
    if state.max_size != max_size:
        raise VirtqueueError(Fault.STATE, f"max_size {state.max_size} is not this queue's {max_size}")
    if not is_valid_queue_size(state.size) or state.size > max_size:
        raise VirtqueueError(Fault.STATE, f"size {state.size} is not a power of 2 up to {max_size}")
    for name in ("desc_table", "avail_ring", "used_ring"):
        if not 0 <= getattr(state, name) <= _U64:
            raise VirtqueueError(Fault.STATE, f"{name} {getattr(state, name):#x} is not a 64-bit address")
    for name in ("next_avail", "next_used"):
        if not 0 <= getattr(state, name) <= _U16:
            raise VirtqueueError(Fault.STATE, f"{name} {getattr(state, name)} is not a 16-bit index")
    # The device cannot have returned more chains than it took, nor hold more than the
    # ring has entries.
    in_flight = (state.next_avail - state.next_used) & _U16
    if in_flight > state.size:
        raise VirtqueueError(Fault.STATE, f"{in_flight} chains in flight on a queue of {state.size}")
    if not 0 <= state.unsignalled <= 1 << 16:
        raise VirtqueueError(Fault.STATE, f"unsignalled {state.unsignalled} is out of range")
    if not state.ready and (state.next_avail or state.next_used or state.unsignalled or state.broken):
        raise VirtqueueError(Fault.STATE, "a queue that is not ready has ring positions")
    return state
