"""The saved state of one virtqueue and of a `VirtioCore`, and their checks (saved
state is untrusted input).

Like rust-vmm's `QueueState`, a snapshot holds what the driver programmed and the
device's two ring positions; `Virtqueue.restore` accepts it only through
`check_state`, which validates every field on its own and against the others.
`check_core_state` does the same for the transport-independent part of a device
(`CoreState`), the queues' states included.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pyvmm.errors import StateError
from pyvmm.snapshot.checks import check_bool, check_byte, check_int, check_tuple, check_type, fail
from pyvmm.snapshot.registry import saved_state
from pyvmm.virtio.device_state import VirtioDeviceState
from pyvmm.virtio.errors import Fault, VirtqueueError
from pyvmm.virtio.spec import DeviceStatus, Feature, is_valid_queue_size

_U16 = 0xFFFF
_U64 = (1 << 64) - 1


@saved_state("virtio-queue")
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


@saved_state("virtio-core")
@dataclass(frozen=True)
class CoreState:
    """A `VirtioCore`'s state (§2.1 status, §2.2 features, §4.1.4.3 / §4.2.2 selects):
    what the driver negotiated and programmed, each queue's `QueueState`, and the
    device model's own part (`device`, a state of the model's type: device_state.py).

    `active` is kept rather than derived: a driver may set FAILED after DRIVER_OK,
    and the device keeps running then (only a reset stops it)."""

    status: int  # the device status byte
    accepted: int  # the driver's 64 feature bits
    device_feature_select: int
    driver_feature_select: int
    queue_select: int
    config_generation: int
    active: bool  # DRIVER_OK activated the device model
    queues: tuple[QueueState, ...]
    device: VirtioDeviceState  # the device model's own part


_U32 = 0xFFFF_FFFF
_DRIVER_OK = int(DeviceStatus.DRIVER_OK)
_FEATURES_OK = int(DeviceStatus.FEATURES_OK)
_STOPPED = int(DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED)
_NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)


def check_core_state(name: str, state: object, offered: int, max_sizes: tuple[int, ...]) -> CoreState:
    """`state` as a `CoreState` a core offering `offered` with queues of `max_sizes`
    can hold; else `StateError`. The device part is the device model's to check.

    The rules are the ones `VirtioCore` keeps while a driver programs it (§2.1.2,
    §2.2, §3.1.1): FEATURES_OK only stuck if VERSION_1 and nothing unoffered was
    accepted (before it, a driver may have written any bits); the device is active only
    after DRIVER_OK with FEATURES_OK and until DEVICE_NEEDS_RESET; DRIVER_OK without
    activation means the activation failed or the driver had given up.
    """
    state = check_type(name, state, CoreState)
    status = check_byte(name, "status", state.status)
    accepted = check_int(name, "accepted", state.accepted, 0, _U64)
    for select in ("device_feature_select", "driver_feature_select", "queue_select"):
        check_int(name, select, getattr(state, select), 0, _U32)
    check_byte(name, "config_generation", state.config_generation)
    active = check_bool(name, "active", state.active)
    if status & _FEATURES_OK:
        if not accepted & Feature.VERSION_1:
            raise fail(name, "FEATURES_OK without VERSION_1 accepted")
        if accepted & ~offered:
            raise fail(name, f"accepted features {accepted & ~offered:#x} were never offered")
    if active and (not status & _DRIVER_OK or not status & _FEATURES_OK or status & _NEEDS_RESET):
        raise fail(name, f"active with status {status:#x}")
    if not active and status & _DRIVER_OK and not status & _STOPPED:
        raise fail(name, f"status {status:#x} says DRIVER_OK but the device is not active")
    queues = check_tuple(name, "queues", state.queues, len(max_sizes))
    if len(queues) != len(max_sizes):
        raise fail(name, f"{len(queues)} queue states for {len(max_sizes)} queues")
    for index, (queue, max_size) in enumerate(zip(queues, max_sizes, strict=True)):
        try:
            check_state(queue, max_size)
        except VirtqueueError as error:
            raise fail(name, f"queue {index}: {error.detail}") from None
    return state


def state_error(name: str, error: VirtqueueError | StateError) -> StateError:
    """A queue's refusal of its state (its rings outside this RAM) as a `StateError`."""
    if isinstance(error, StateError):
        return error
    return fail(name, error.detail)
