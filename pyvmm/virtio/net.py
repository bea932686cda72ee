"""virtio-net (virtio 1.2 §5.1) on a TAP device (pyvmm/net/tap.py).

Queues: receiveq1 (0) and transmitq1 (1); no multiqueue, no control queue. Every
packet is a 12-byte `struct virtio_net_hdr_v1` and an Ethernet frame (§5.1.6); the
TAP reads and writes the same header (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), so frames go
between the TAP and guest memory with readv/writev on the chains' own views, never
copied. Offloads: the host side (CSUM, HOST_TSO4/6, HOST_UFO, HOST_USO) is what the
TAP accepts in a header it is given; the guest side (GUEST_CSUM, GUEST_TSO4/6,
GUEST_UFO, GUEST_USO4/6) is set on the TAP with TUNSETOFFLOAD at activation, from
what the driver accepted, so the kernel only hands over what the guest can take.

(The mapping between virtio-net's feature bits and the TAP's offloads is
net_offload.py.)

Transmit (§5.1.6.2): on a notification of queue 1, each chain's readable part is one
packet, written to the TAP with one writev. A chain the driver may not send (shorter
than the header, with device-writable buffers, larger than 64 KiB plus headers) and
a packet the TAP refuses are dropped: used with length 0, counted in `stats`.

Receive (§5.1.6.3, §5.1.6.4): the TAP fd is polled by the I/O thread only while the
driver has posted buffers. A frame is read into the next chain's writable views, or
with MRG_RXBUF into as many chains as it needs (num_buffers says how many); a spill
buffer after the guest's views catches a frame larger than the buffers held, so that
it is never truncated: its rest is copied into the next chains when they arrive.
With no buffers, polling stops and the frames wait in the TAP's kernel queue (which
drops past its txqueuelen), until the driver notifies queue 0: a guest that posts
nothing makes pyvmm neither spin nor buffer data.

Threads: rx work runs on the I/O thread (TAP readable, or queue 0 notified: a
notification from another thread is handed over through an eventfd); tx runs where
queue 1 is notified. Each direction has its lock; activation and reset take both.

Faults (docs/architecture.md "Device faults"): a guest's fault in a queue, or any
other exception out of the receive path, puts the card in DEVICE_NEEDS_RESET (the
I/O thread hands it to `_fault`); the VM goes on. A TAP that fails on the host
(deleted under the VM: EBADFD, ENODEV...) is what a cable pulled out is to a NIC:
the link goes down (`link_up`, VIRTIO_NET_S_LINK_UP cleared and a configuration
change notification, §5.1.4), frames are no longer read or sent, the VM goes on.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyvmm.errors import StateError
from pyvmm.io.eventfd import EventFd
from pyvmm.io.thread import IoThread
from pyvmm.net.tap import Tap
from pyvmm.snapshot.checks import check_bool, check_bytes, check_type, fail
from pyvmm.virtio.chain import DescriptorChain
from pyvmm.virtio.device import Activation, DeviceType, Interrupt, VirtioDevice
from pyvmm.virtio.device_state import NetState
from pyvmm.virtio.errors import VirtqueueError
from pyvmm.virtio.net_offload import GSO_TO_GUEST, NetFeature, offered_features, tap_offload
from pyvmm.virtio.queue import Virtqueue

log = logging.getLogger(__name__)


LINK_UP = 1  # VIRTIO_NET_S_LINK_UP (§5.1.4)
RX_QUEUE, TX_QUEUE = 0, 1
QUEUE_SIZE = 256
# struct virtio_net_hdr_v1 (§5.1.6): flags, gso_type, hdr_len, gso_size, csum_start,
# csum_offset, num_buffers. With VERSION_1 it always has num_buffers: 12 bytes.
NET_HDR = struct.Struct("<BBHHHHH")
HDR_SIZE = NET_HDR.size
NUM_BUFFERS = struct.Struct("<H")
NUM_BUFFERS_OFFSET = 10
# The largest packet either way: a 64 KiB GSO frame (the TAP's gso_max_size) after an
# Ethernet header and one VLAN tag, behind the virtio-net header.
MAX_PACKET = HDR_SIZE + 14 + 4 + 65536
# Without segmentation offloads to the guest a frame is at most an MTU of 1500 plus
# its headers (§5.1.6.3.1's 1526 bytes, VLAN included); larger (jumbo) frames still
# fit, through the spill buffer.
SMALL_PACKET = HDR_SIZE + 14 + 4 + 1500
RX_BUDGET = 64  # frames per callback, so one busy TAP does not starve the others
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # readv/writev take at most this many buffers
# What readv/writev say when the TAP is gone on the host (deleted, or its fd made
# unusable): the link is down, not a guest's fault.
# (EIO is not one: a TAP whose interface is only set down says EIO, and comes back.)
TAP_GONE = frozenset({errno.EBADFD, errno.EBADF, errno.ENODEV, errno.ENXIO})


@dataclass
class NetStats:
    """Counters, for tests and diagnostics."""

    tx_packets: int = 0
    tx_dropped: int = 0  # malformed or oversized chains, packets the TAP refused
    rx_packets: int = 0
    rx_dropped: int = 0  # frames larger than the buffers a chain (without MRG_RXBUF) has
    rx_bad_buffers: int = 0  # receive chains returned unused: no room for a header
    rx_spilled: int = 0  # frames that waited in the spill buffer for more chains
    rx_wakeups: int = 0  # times the I/O thread found the TAP readable


@dataclass
class _Spilled:
    """A frame whose tail waits in the spill buffer for more receive chains."""

    chains: list[tuple[DescriptorChain, int]]  # (chain, bytes written into it)
    rest: memoryview  # what the held chains had no room for, in the spill buffer


class NetDevice(VirtioDevice):
    """One virtio-net card on `tap` with MAC address `mac`, its receive path served by
    the VM's I/O thread `io`. It owns the TAP: `close()` closes it."""

    device_type = DeviceType.NET
    kind = "virtio-net"

    def __init__(self, tap: Tap, mac: bytes, io: IoThread, name: str = "virtio-net") -> None:
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}")
        self.name = f"{name} ({tap.name})"
        self.tap = tap
        self.mac = bytes(mac)
        self.link_up = True  # down for good once the TAP fails on the host
        self.stats = NetStats()
        self._io = io
        self._rx_lock = threading.Lock()
        self._tx_lock = threading.Lock()
        self._active = False
        self._rxq: Virtqueue | None = None
        self._txq: Virtqueue | None = None
        self._interrupt: Interrupt | None = None
        self._needs_reset: Callable[[str], None] = lambda reason: None
        self._mergeable = False
        self._zero_header = False  # no GUEST_CSUM: flags and GSO fields must be 0
        self._rx_target = SMALL_PACKET
        self._rx_broken = False
        self._tap_gone: OSError | None = None  # a transmit found the TAP gone
        self._polling = False  # the TAP fd is registered (changed on the I/O thread only)
        # Receive chains popped and not yet used, and their writable views followed by
        # the spill buffer: the iovec of the next readv.
        self._held: list[DescriptorChain] = []
        self._held_bytes = 0
        self._spill = memoryview(bytearray(MAX_PACKET))
        self._iov: list[memoryview] = [self._spill]
        self._spilled: _Spilled | None = None
        # Chains leave the held ones in the order they were popped. A chain returned at
        # once (no room for a header) while others were held makes those not the last
        # ones popped: they cannot go back to the ring in a saved state
        # (`unused_chains`) until they are used. How many of them are left:
        self._before_gap = 0
        self._kick = EventFd()
        io.register(self._kick, self._on_kick, f"{self.name} rx notify", self._fault)

    # --- what the transport sees ------------------------------------------------------

    @property
    def queue_sizes(self) -> Sequence[int]:
        return (QUEUE_SIZE, QUEUE_SIZE)

    def device_features(self) -> int:
        return offered_features(self.tap.offloads)

    def config(self) -> bytes:
        """struct virtio_net_config (§5.1.4): mac, status, max_virtqueue_pairs (1)."""
        return self.mac + struct.pack("<HH", LINK_UP if self.link_up else 0, 1)

    def write_config(self, offset: int, data: bytes) -> None:
        pass  # §5.1.4: every field is read-only for a VERSION_1 driver

    def activate(self, activation: Activation) -> None:
        features = activation.features
        self.tap.set_offload(tap_offload(features, self.tap.offloads))
        with self._rx_lock, self._tx_lock:
            self._rxq, self._txq = activation.queues[RX_QUEUE], activation.queues[TX_QUEUE]
            self._interrupt = activation.interrupt
            self._needs_reset = activation.needs_reset
            self._mergeable = bool(features & NetFeature.MRG_RXBUF)
            self._zero_header = not features & NetFeature.GUEST_CSUM
            self._rx_target = MAX_PACKET if features & GSO_TO_GUEST else SMALL_PACKET
            self._active = True
        self._kick.signal()  # buffers posted before DRIVER_OK are not notified (§3.1.1)

    def notify(self, queue: int) -> None:
        if queue == TX_QUEUE:
            with self._tx_lock:
                if self._active and self.link_up:
                    self._transmit()
                gone, self._tap_gone = self._tap_gone, None
            if gone is not None:
                self._link_lost(gone)  # not under the tx lock: it takes the rx lock
        elif queue == RX_QUEUE:
            if self._io.in_loop_thread():
                self._on_kick()
            else:
                self._kick.signal()

    def reset(self) -> None:
        with self._rx_lock, self._tx_lock:
            self._active = False
            self._rxq = self._txq = None
            self._interrupt = None
            self._rx_broken = False
            self._forget_held()
        # The TAP fd, if polled, is unregistered by its next callback (on the I/O
        # thread, which owns that registration): it finds the device inactive.

    def close(self) -> None:
        with self._rx_lock, self._tx_lock:
            self._active = False
            self._forget_held()
        # Not under the locks: unregistering waits for a running callback to end.
        self._io.unregister(self._kick)
        if not self.tap.closed:
            self._io.unregister(self.tap)
        self._polling = False
        self._kick.close()
        self.tap.close()

    # --- saved state (device_state.py) ----------------------------------------------------

    def save(self) -> NetState:
        """The MAC and the link status. The TAP is configuration (the restoring VMM
        opens it again). Nothing is in flight on transmit between notifications; the
        receive chains held for the next frame go back to the ring (`unused_chains`),
        and a frame half delivered into them (waiting in the spill buffer for more
        chains) is dropped, as a NIC's FIFO is lost: TCP sends it again."""
        with self._rx_lock, self._tx_lock:
            return NetState(self.mac, self.link_up)

    def unused_chains(self) -> Sequence[int]:
        """The receive chains popped and not used yet, all the last ones popped."""
        with self._rx_lock:
            if self._before_gap:
                raise StateError(
                    f"{self.name}: the driver posted a receive buffer too small for a header "
                    "between buffers in use; save again after the next frame"
                )
            return (self._unused_count(), 0)

    def _unused_count(self) -> int:
        return len(self._held) + (len(self._spilled.chains) if self._spilled is not None else 0)

    def restore(self, state: object) -> None:
        """The MAC the guest read (it may differ from this run's --net mac=: the guest
        keeps using the one it saw) and the link status."""
        checked = check_type(self.name, state, NetState)
        mac = check_bytes(self.name, "mac", checked.mac, 6, 6)
        if mac[0] & 1 or mac == bytes(6):  # a card's own address is unicast, not 0
            raise fail(self.name, f"mac {mac.hex(':')} is not a unicast address")
        link_up = check_bool(self.name, "link_up", checked.link_up)
        with self._rx_lock, self._tx_lock:
            self.mac, self.link_up = mac, link_up

    # --- transmit (§5.1.6.2) ----------------------------------------------------------

    def _transmit(self) -> None:
        txq, interrupt = self._txq, self._interrupt
        assert txq is not None and interrupt is not None
        while True:
            txq.disable_notifications()  # we are polling the ring until it is empty
            while (chain := txq.pop()) is not None:
                self._send(chain)
                txq.add_used(chain.head, 0)  # nothing written into a transmit chain
            if not txq.enable_notifications():
                break
        if txq.needs_interrupt():
            interrupt.used_buffer(TX_QUEUE)

    def _send(self, chain: DescriptorChain) -> None:
        # §5.1.6.2: a packet is the header and the frame, device-readable only.
        if (
            chain.writable
            or not HDR_SIZE <= chain.readable_len <= MAX_PACKET
            or len(chain.readable) > _IOV_MAX
        ):
            self.stats.tx_dropped += 1
            return
        try:
            os.writev(self.tap.fileno(), chain.readable)
        except OSError as exc:
            # EINVAL: a header the kernel refuses (bad GSO fields); EAGAIN: the TAP's
            # queue is full; EIO: the link is down. A NIC would drop it too.
            log.debug("%s: frame dropped by the TAP: %s", self.name, exc.strerror)
            self.stats.tx_dropped += 1
            if exc.errno in TAP_GONE:
                self._tap_gone = exc  # the link goes down once the tx lock is released
            return
        self.stats.tx_packets += 1

    # --- receive (§5.1.6.3, §5.1.6.4), on the I/O thread --------------------------------

    def _on_kick(self) -> None:
        """Queue 0 was notified: the driver posted receive buffers."""
        self._kick.consume()
        with self._rx_lock:
            self._guarded(self._refill)

    def _on_tap_readable(self) -> None:
        with self._rx_lock:
            self.stats.rx_wakeups += 1
            self._guarded(self._receive)

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run rx `work` (with the lock held), then interrupt if the ring says so. An
        exception goes to the I/O thread, which hands it to `_fault` (or, for the
        TAP's source, `_tap_fault`)."""
        if not self._active or self._rx_broken or not self.link_up:
            self._stop_polling()
            return
        try:
            work()
        finally:
            rxq = self._rxq
            if rxq is not None and rxq.ready and rxq.fault is None and rxq.needs_interrupt():
                assert self._interrupt is not None
                self._interrupt.used_buffer(RX_QUEUE)

    def _fault(self, error: BaseException) -> None:
        """The I/O thread's fault handler for the receive path: receiving stops until
        the driver resets the card, which needs a reset (§2.1.2)."""
        with self._rx_lock:
            if not self._active or self._rx_broken:
                return  # reset meanwhile, or already said
            self._rx_broken = True
            self._forget_held()
            self._stop_polling()
            needs_reset = self._needs_reset
        what = str(error) if isinstance(error, VirtqueueError) else repr(error)
        needs_reset(f"receive queue: {what}")  # the core's line says it, once

    def _tap_fault(self, error: BaseException) -> None:
        """The TAP's source failed: the host took the TAP away (the link goes down),
        or anything else went wrong on the receive path (`_fault`)."""
        if isinstance(error, OSError) and error.errno in TAP_GONE:
            self._link_lost(error)
        else:
            self._fault(error)

    def _link_lost(self, error: OSError) -> None:
        """The TAP fails on the host: the link is down for good, as a NIC whose cable
        is pulled (§5.1.4 status; the driver learns it by a configuration change)."""
        with self._rx_lock:
            if not self.link_up:
                return
            self.link_up = False
            self._stop_polling()
            self._forget_held()
            interrupt = self._interrupt if self._active else None
        log.warning("%s: the TAP failed on the host (%s): the link is down", self.name, error.strerror)
        if interrupt is not None:
            interrupt.config_changed()

    def _refill(self) -> None:
        if not self.link_up:
            return
        if self._spilled is not None and not self._finish_spilled():
            return
        if self._gather():
            self._start_polling()

    def _receive(self) -> None:
        fd = self.tap.fileno()
        for _ in range(RX_BUDGET):
            if self._spilled is not None or not self._gather():
                self._stop_polling()  # until the driver posts buffers (notify of queue 0)
                return
            try:
                length = os.readv(fd, self._iov)
            except BlockingIOError:
                return  # nothing more queued
            self._deliver(length)

    def _gather(self) -> bool:
        """Pop receive chains until those held can take the largest frame expected
        (one chain without MRG_RXBUF); False when none is held. When the ring runs
        dry, notifications are asked for, and buffers posted meanwhile are taken."""
        rxq = self._rxq
        assert rxq is not None
        while self._wants_more():
            chain = self._pop_rx(rxq)
            if chain is None:
                if not self._held and rxq.enable_notifications():
                    rxq.disable_notifications()
                    continue  # posted while we looked: no notification will come
                break
            self._held.append(chain)
            self._held_bytes += chain.writable_len
            self._iov[-1:-1] = chain.writable  # before the spill buffer
        return bool(self._held)

    def _wants_more(self) -> bool:
        if not self._mergeable:
            return not self._held
        return self._held_bytes < self._rx_target and len(self._iov) < _IOV_MAX

    def _pop_rx(self, rxq: Virtqueue) -> DescriptorChain | None:
        """The next usable receive chain; chains with no room for the header (or a
        readable part, or more buffers than one readv takes) are returned unused."""
        while (chain := rxq.pop()) is not None:
            if (
                chain.readable
                or chain.writable_len < HDR_SIZE
                or len(chain.writable) + len(self._iov) > _IOV_MAX
            ):
                self._before_gap = self._unused_count()
                rxq.add_used(chain.head, 0)
                self.stats.rx_bad_buffers += 1
                continue
            return chain
        return None

    def _deliver(self, length: int) -> None:
        """A frame of `length` bytes (header included) was read into the held chains'
        views and, past them, the spill buffer."""
        held = self._held
        if length < HDR_SIZE or length >= self._held_bytes + len(self._spill):
            self.stats.rx_dropped += 1  # no header (cannot happen), or truncated
            return
        if not self._mergeable:
            chain = held[0]
            if length > chain.writable_len:
                self.stats.rx_dropped += 1  # §5.1.6.3.1: the chain must hold the packet
                return
            self._publish([(chain, length)])
            self._consume(1)
            return
        used: list[tuple[DescriptorChain, int]] = []
        left = length
        for chain in held:
            count = min(chain.writable_len, left)
            used.append((chain, count))
            left -= count
            if left == 0:
                break
        self._consume(len(used))
        if left == 0:
            self._publish(used)
            return
        # Past every held chain: the rest is in the spill buffer until more chains come.
        self.stats.rx_spilled += 1
        self._spilled = _Spilled(used, self._spill[:left])
        self._finish_spilled()

    def _finish_spilled(self) -> bool:
        spilled = self._spilled
        assert spilled is not None and self._rxq is not None
        rxq = self._rxq
        while spilled.rest:
            chain = self._pop_rx(rxq)
            if chain is None:
                if rxq.enable_notifications():
                    rxq.disable_notifications()
                    continue
                return False
            count = chain.write(spilled.rest[: chain.writable_len])
            spilled.chains.append((chain, count))
            spilled.rest = spilled.rest[count:]
        self._spilled = None
        self._publish(spilled.chains)
        return True

    def _consume(self, count: int) -> None:
        """The first `count` held chains are used: drop them and their views."""
        views = sum(len(chain.writable) for chain in self._held[:count])
        self._held_bytes -= sum(chain.writable_len for chain in self._held[:count])
        del self._held[:count]
        del self._iov[:views]

    def _publish(self, chains: list[tuple[DescriptorChain, int]]) -> None:
        """Set the header's num_buffers (§5.1.6.4: 1 without MRG_RXBUF) and return the
        chains to the driver, all together: it reads them as one packet."""
        first = chains[0][0]
        if self._zero_header:
            # §5.1.6.4.1: without GUEST_CSUM the device MUST set flags to zero; the
            # TAP may have said DATA_VALID. No GSO either, so the rest is 0 too.
            first.write(NET_HDR.pack(0, 0, 0, 0, 0, 0, len(chains)))
        else:
            first.write(NUM_BUFFERS.pack(len(chains)), NUM_BUFFERS_OFFSET)
        rxq = self._rxq
        assert rxq is not None
        for chain, count in chains:
            rxq.add_used(chain.head, count)
        self._before_gap = max(self._before_gap - len(chains), 0)
        self.stats.rx_packets += 1

    def _forget_held(self) -> None:
        """With the rx lock: drop chains of a queue being reset (never used)."""
        self._held.clear()
        self._held_bytes = 0
        self._iov = [self._spill]
        self._spilled = None
        self._before_gap = 0

    def _start_polling(self) -> None:
        if not self._polling:
            assert self._rxq is not None
            self._rxq.disable_notifications()  # buffers are popped as frames come
            self._io.register(self.tap, self._on_tap_readable, f"{self.name} rx", self._tap_fault)
            self._polling = True

    def _stop_polling(self) -> None:
        if self._polling:
            self._io.unregister(self.tap)
            self._polling = False
