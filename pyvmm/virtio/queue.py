"""The device side of one split virtqueue (virtio 1.2 §2.7).

A transport (virtio-pci, virtio-mmio) stores what the driver programs — `size`,
`desc_table`, `avail_ring`, `used_ring` — and calls `enable(features)` when the
driver makes the queue ready; that checks the configuration against guest RAM once
(§2.7, §2.7.1) and keeps views of the three parts. A device then calls `pop()` for
the next checked `DescriptorChain`, `add_used()` when it is done with one, and
`needs_interrupt()` to decide on a used buffer notification (§2.7.7). A device that
polls can `disable_notifications()` and `enable_notifications()` (§2.7.10).

Any fault the guest causes raises `VirtqueueError` and leaves the queue broken:
every later `pop` raises too, until `reset()`. The device sets DEVICE_NEEDS_RESET
(§2.1.2); nothing else in the VM is affected.

In flight: a head is in flight from the `pop` that returns its chain to the
`add_used` that gives it back. The driver builds a chain from free descriptors only
(§2.7.13 step 1, §2.7.13.1), and a chain's descriptors are free again once the
device has returned it in the used ring (§2.7.8, §2.7.14). A head made available
again while it is in flight is therefore a guest fault (`Fault.HEAD_IN_FLIGHT`): it
is not a new request. Every in-flight chain has a distinct head, so no device holds
more chains than the queue size, however fast a driver posts (§2.7.13: the ring
cannot overrun because the descriptors run out first). Only heads are tracked (one
byte per descriptor, a `bytearray`): a chain that reuses another's inner
descriptors corrupts only the driver's own data. `add_used` of a head not in flight
is pyvmm's bug, not the guest's, and raises `AssertionError` (see `add_used`).
`reset()` and `restore()` start with nothing in flight: a saved state holds no
popped chain (each device finishes or gives back its chains first; the ones given
back are counted out of next_avail, `VirtioCore.save`, and are popped again). Chains
a state still counts between next_used and next_avail (a device saved while it
needed a reset) are never used after the restore.

Indices are 16-bit free-running counters that wrap at 65536 (§2.7.13.3); the ring
slot of index i is i mod size, which is exact because size is a power of 2.
"""

from __future__ import annotations

from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory
from pyvmm.virtio.barrier import full_barrier
from pyvmm.virtio.chain import MAX_CHAIN_BYTES, DescriptorChain, walk_chain
from pyvmm.virtio.errors import Fault, VirtqueueError
from pyvmm.virtio.spec import (
    AVAIL_RING_ALIGN,
    DESC_TABLE_ALIGN,
    USED_ELEM,
    USED_RING_ALIGN,
    AvailFlag,
    Feature,
    UsedFlag,
    avail_ring_size,
    desc_table_size,
    is_valid_queue_size,
    used_ring_size,
    vring_need_event,
)
from pyvmm.virtio.state import QueueState, check_state

_U16 = 0xFFFF
_NO_INTERRUPT = int(AvailFlag.NO_INTERRUPT)
_NO_NOTIFY = int(UsedFlag.NO_NOTIFY)
# Index of each 16-bit field in a ring viewed as an array of u16 (§2.7.6, §2.7.8).
_FLAGS = 0
_IDX = 1
_AVAIL_RING = 2


def _reset_meanwhile() -> VirtqueueError:
    """The rings went away between the usability check and their use: another thread
    (the driver, through a transport) reset the queue. Not the device's bug."""
    return VirtqueueError(Fault.NOT_READY, "the queue was reset while in use")


class Virtqueue:
    """One split virtqueue, device side."""

    def __init__(
        self,
        memory: GuestMemory,
        max_size: int = 256,
        *,
        max_chain_bytes: int = MAX_CHAIN_BYTES,
        max_chain_descriptors: int | None = None,
    ) -> None:
        if not is_valid_queue_size(max_size):
            raise ValueError(f"a split virtqueue's maximum size is a power of 2 up to 32768, not {max_size}")
        if not 0 <= max_chain_bytes <= MAX_CHAIN_BYTES:
            raise ValueError(f"max_chain_bytes {max_chain_bytes} is not in 0..2**32")
        self.memory = memory
        self.max_size = max_size
        self.max_chain_bytes = max_chain_bytes
        self.max_chain_descriptors = max_chain_descriptors
        self.reset()

    def reset(self) -> None:
        """Back to the state after a device reset (§2.4): nothing programmed, not ready."""
        self.size = self.max_size
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.next_avail = 0
        self.next_used = 0
        self.event_idx = False
        self.indirect = False
        self.fault: VirtqueueError | None = None
        self._ready = False
        self._notifications = True
        self._unsignalled = 0
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None  # the available ring as u16s
        self._used: memoryview | None = None  # the used ring as bytes
        self._used16: memoryview | None = None  # the same as u16s
        # One byte per descriptor: 1 while that head is in flight (module docstring).
        self._in_flight = bytearray(self.max_size)

    @property
    def ready(self) -> bool:
        return self._ready

    def validate(self) -> None:
        """Check the driver's configuration (§2.7): size, alignment, rings in RAM."""
        size = self.size
        if not is_valid_queue_size(size) or size > self.max_size:
            raise VirtqueueError(Fault.CONFIG, f"queue size {size} is not a power of 2 up to {self.max_size}")
        parts = (
            ("descriptor table", self.desc_table, DESC_TABLE_ALIGN, desc_table_size(size)),
            ("available ring", self.avail_ring, AVAIL_RING_ALIGN, avail_ring_size(size)),
            ("used ring", self.used_ring, USED_RING_ALIGN, used_ring_size(size)),
        )
        for name, addr, align, length in parts:
            if addr % align:  # §2.7.1: the driver MUST align each part
                raise VirtqueueError(Fault.CONFIG, f"{name} at {addr:#x} is not {align}-byte aligned")
            if not self.memory.contains(addr, length):
                raise VirtqueueError(Fault.CONFIG, f"{name} at {addr:#x}+{length:#x} is not inside RAM")

    def enable(self, features: int) -> None:
        """The driver made the queue ready: check its configuration and start using it.

        `features` are the negotiated feature bits; only INDIRECT_DESC and EVENT_IDX
        change how the queue works.
        """
        self.event_idx = bool(features & Feature.EVENT_IDX)
        self.indirect = bool(features & Feature.INDIRECT_DESC)
        self._activate()
        if self.event_idx:
            self._write_avail_event()

    def _activate(self) -> None:
        self.validate()
        size = self.size
        try:
            self._desc = self.memory.view(self.desc_table, desc_table_size(size))
            self._avail = self.memory.view(self.avail_ring, avail_ring_size(size)).cast("H")
            self._used = self.memory.view(self.used_ring, used_ring_size(size))
        except GuestMemoryError as exc:  # validate() checked these; memory changed under us
            raise VirtqueueError(Fault.CONFIG, str(exc)) from exc
        self._used16 = self._used.cast("H")
        self._ready = True

    def _check_usable(self) -> None:
        if self.fault is not None:
            raise VirtqueueError(Fault.BROKEN, f"queue needs a reset after: {self.fault.detail}")
        if not self._ready:
            raise VirtqueueError(Fault.NOT_READY, "the queue is not enabled")

    def _break(self, error: VirtqueueError) -> VirtqueueError:
        self.fault = error
        return error

    def avail_idx(self) -> int:
        """The driver's available idx, as it is in guest memory now."""
        self._check_usable()
        avail = self._avail
        if avail is None:
            raise _reset_meanwhile()
        return int(avail[_IDX])

    def pop(self) -> DescriptorChain | None:
        """The next available chain, checked, or None when the driver has posted none.

        Raises `VirtqueueError` for any malformed ring or chain and stays broken.
        """
        self._check_usable()
        avail = self._avail
        if avail is None or self._desc is None:
            raise _reset_meanwhile()
        size = self.size
        # x86 does not reorder loads with loads, so the ring entry and descriptors read
        # below are at least as new as this idx (the driver's barrier, §2.7.13.3.1).
        pending = (avail[_IDX] - self.next_avail) & _U16
        if pending == 0:
            return None
        # §2.7.13.3: idx grows by the chains added, and there are at most size of them
        # (the ring is as long as the table); more means a corrupt or hostile idx.
        if pending > size:
            detail = f"available idx {avail[_IDX]} is {pending} past {self.next_avail}"
            raise self._break(VirtqueueError(Fault.AVAIL_IDX, detail))
        head = int(avail[_AVAIL_RING + (self.next_avail & (size - 1))])
        if head >= size:  # §2.7.6: a ring entry is a descriptor table index
            raise self._break(VirtqueueError(Fault.HEAD_INDEX, f"head {head} >= queue size {size}"))
        in_flight = self._in_flight
        if in_flight[head]:  # §2.7.13.1: its descriptors are not free (module docstring)
            detail = f"head {head} made available again before the device used it"
            raise self._break(VirtqueueError(Fault.HEAD_IN_FLIGHT, detail))
        try:
            chain = walk_chain(
                self.memory,
                self._desc,
                size,
                head,
                indirect=self.indirect,
                max_bytes=self.max_chain_bytes,
                max_descriptors=self.max_chain_descriptors,
            )
        except VirtqueueError as error:
            raise self._break(error) from None
        in_flight[head] = 1
        self.next_avail = (self.next_avail + 1) & _U16
        if self.event_idx and self._notifications:
            # §2.7.10: ask to be notified when the driver writes the entry after this
            # one; then a barrier (store, then the idx load of the next pop: barrier.py).
            self._write_avail_event()
            full_barrier()
        return chain

    def add_used(self, head: int, length: int) -> None:
        """Return chain `head`, in flight, to the driver with `length` bytes written
        (§2.7.8).

        The element (id and len) is written before the used idx that publishes it
        (§2.7.8.2: len MUST be set prior to updating idx). Both are plain stores, each
        a single memcpy issued in program order, and x86 does not reorder stores with
        stores, so the driver never sees the new idx before the element.

        A head that is not in flight, or a length that is not a 32-bit value, is a
        bug of the device calling this, never the guest's doing: both come from the
        device's own chains, and `pop` already refused a head made available twice.
        It raises `AssertionError` (raised, not asserted: `python -O` must not skip
        it) and writes nothing. Written anyway, the element would hand the driver a
        head it already owns (Linux: "id %u is not a head!" and the ring is dead; a
        laxer driver frees the descriptors twice). Not a `VirtqueueError`, which
        would blame the guest: the device's fault path takes it (DEVICE_NEEDS_RESET
        for this device only, docs/architecture.md "Device faults"). A broken or
        reset queue raises `VirtqueueError` first, as everywhere.
        """
        self._check_usable()
        used, used16 = self._used, self._used16
        if used is None or used16 is None:
            raise _reset_meanwhile()
        in_flight = self._in_flight
        if not 0 <= head < self.size or not in_flight[head]:
            raise AssertionError(f"virtqueue: add_used of head {head}, which is not in flight (a device bug)")
        if not 0 <= length <= 0xFFFF_FFFF:
            raise AssertionError(f"virtqueue: used length {length} is not a 32-bit value (a device bug)")
        in_flight[head] = 0
        slot = self.next_used & (self.size - 1)
        USED_ELEM.pack_into(used, 4 + 8 * slot, head, length)
        self.next_used = (self.next_used + 1) & _U16
        used16[_IDX] = self.next_used
        self._unsignalled += 1

    def needs_interrupt(self) -> bool:
        """Whether to send a used buffer notification for the elements added since the
        last call (§2.7.7.2).

        Without EVENT_IDX: yes unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT. With
        it: the lower bit of flags is ignored and the answer is yes when the used idx
        passed used_event, i.e. an element was written at index used_event
        (`vring_need_event`). Either way no, when nothing was added.
        """
        self._check_usable()
        avail = self._avail
        if avail is None:
            raise _reset_meanwhile()
        added, self._unsignalled = self._unsignalled, 0
        if added == 0:
            return False
        # The used idx (a store) must be visible before used_event / flags are read (a
        # load), or the driver may re-arm after we look and never be woken.
        full_barrier()
        if not self.event_idx:
            return not avail[_FLAGS] & _NO_INTERRUPT
        if added > _U16:  # the 16-bit window cannot tell: notify (spurious is allowed)
            return True
        used_event = int(avail[_AVAIL_RING + self.size])
        return vring_need_event(used_event, self.next_used, (self.next_used - added) & _U16)

    def disable_notifications(self) -> None:
        """Tell the driver that available buffer notifications are not needed (§2.7.10).

        Without EVENT_IDX this sets VIRTQ_USED_F_NO_NOTIFY. With EVENT_IDX flags stays 0
        (§2.7.10.2: the device MUST set flags to 0) and avail_event stops moving, so the
        driver notifies at most once more (spurious notifications must be handled).
        """
        self._check_usable()
        used16 = self._used16
        if used16 is None:
            raise _reset_meanwhile()
        self._notifications = False
        if not self.event_idx:
            used16[_FLAGS] = _NO_NOTIFY

    def enable_notifications(self) -> bool:
        """Ask for available buffer notifications again; True if buffers are already
        pending, which the device must then pop: a driver that posted them while
        notifications were off did not notify and will not (§2.7.10)."""
        self._check_usable()
        used16, avail = self._used16, self._avail
        if used16 is None or avail is None:
            raise _reset_meanwhile()
        self._notifications = True
        if self.event_idx:
            used16[2 + 4 * self.size] = self.next_avail
        else:
            used16[_FLAGS] = 0
        full_barrier()  # the store above before the load of idx below (barrier.py)
        return bool((avail[_IDX] - self.next_avail) & _U16)

    def in_flight(self) -> int:
        """How many chains are in flight (popped, not yet used): at most `size`."""
        return self._in_flight.count(1)

    def _write_avail_event(self) -> None:
        used16 = self._used16
        if used16 is None:
            raise _reset_meanwhile()
        # avail_event follows the size used elements: u16 index 2 + 4 * size.
        used16[2 + 4 * self.size] = self.next_avail

    def save(self) -> QueueState:
        """The queue's state for a snapshot."""
        return QueueState(
            max_size=self.max_size,
            size=self.size,
            ready=self._ready,
            desc_table=self.desc_table,
            avail_ring=self.avail_ring,
            used_ring=self.used_ring,
            next_avail=self.next_avail,
            next_used=self.next_used,
            event_idx=self.event_idx,
            indirect=self.indirect,
            notifications=self._notifications,
            unsignalled=self._unsignalled,
            broken=self.fault is not None,
        )

    def restore(self, state: object) -> None:
        """Take a saved state, after checking every field (`check_state`) and, for a
        ready queue, its rings against this guest's RAM. On error the queue is reset.

        Nothing is in flight afterwards: no device holds a chain across a save (module
        docstring), and chains given back are popped again from next_avail."""
        checked = check_state(state, self.max_size)
        self.reset()
        self.size = checked.size
        self.desc_table = checked.desc_table
        self.avail_ring = checked.avail_ring
        self.used_ring = checked.used_ring
        self.event_idx = checked.event_idx
        self.indirect = checked.indirect
        if not checked.ready:
            return
        try:
            self._activate()
        except VirtqueueError as error:
            self.reset()
            raise VirtqueueError(Fault.STATE, f"saved rings are not usable: {error.detail}") from None
        self.next_avail = checked.next_avail
        self.next_used = checked.next_used
        self._notifications = checked.notifications
        self._unsignalled = checked.unsignalled
        if checked.broken:
            self.fault = VirtqueueError(Fault.STATE, "the queue was broken when it was saved")
