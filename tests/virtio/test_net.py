"""virtio-net (virtio 1.2 §5.1) through VirtioCore and the test Driver in a real
GuestMemory, on a real TAP in a private network namespace: what the driver transmits
comes out of the TAP, what the host sends lands in the receive ring byte for byte,
and hostile chains get the behaviour net.py defines."""

from __future__ import annotations

import dataclasses
import fcntl
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from net.frames import (
    BROADCAST,
    ETH_P_ALL,
    ETH_P_ARP,
    arp,
    ethernet,
    parse_arp,
    udp_frame,
)
from net.netns import Namespace, namespace
from virtio.driver import WRITE, Driver
from virtio.handshake import start
from virtio.interrupts import Interrupts

from pyvmm.device_config import NetConfig
from pyvmm.errors import StateError
from pyvmm.io.thread import IoThread
from pyvmm.memory import GuestMemory
from pyvmm.net.if_tun import TunOffload
from pyvmm.net.tap import Tap, TapError
from pyvmm.virtio import DeviceStatus, Feature
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.device_state import NetState
from pyvmm.virtio.models import net_devices
from pyvmm.virtio.net import HDR_SIZE, NET_HDR, NetDevice
from pyvmm.virtio.net_offload import NetFeature
from pyvmm.virtio.state import CoreState

__all__ = ["namespace"]  # the fixture, imported for pytest
MAC = bytes.fromhex("525400123456")
HOST_IP, GUEST_IP = "10.99.0.1", "10.99.0.2"
BASE = int(Feature.VERSION_1)
MRG = int(NetFeature.MRG_RXBUF)
PACKET_OUTGOING = 4  # sll_pkttype of a frame the host sent out of the TAP
SIOCGIFHWADDR = 0x8927


@dataclass
class Card:
    """A NetDevice on TAP ptap0 (10.99.0.1/24 on the host side) with its core and the
    driver's two queues, and a packet socket on the TAP to send and capture frames."""

    namespace: Namespace
    memory: GuestMemory
    io: IoThread
    device: NetDevice
    core: VirtioCore
    interrupts: Interrupts
    errors: list[tuple[str, BaseException]]
    packet: socket.socket
    tap_mac: bytes
    rx: Driver | None = None
    tx: Driver | None = None

    def start(self, features: int = BASE, *, queue_size: int = 256) -> None:
        self.rx = Driver(self.memory, queue_size, desc=0x1000, data=0x100000)
        self.tx = Driver(self.memory, queue_size, desc=0x8000, data=0x800000)
        start(self.core, features, [self.rx, self.tx])
        assert self.core.status & DeviceStatus.DRIVER_OK and self.core.active

    def post_rx(self, *sizes: int, notify: bool = True) -> list[int]:
        assert self.rx is not None
        heads = [self.rx.add([], [size]) for size in sizes]
        if notify:
            self.core.notify(0)
        return heads

    def transmit(self, *packets: bytes) -> None:
        assert self.tx is not None
        for packet in packets:
            self.tx.add([packet], [])
        self.core.notify(1)

    def host_send(self, frame: bytes) -> None:
        """The host puts `frame` out of the TAP: the device's receive side reads it."""
        self.packet.send(frame)

    def host_frames(self, timeout: float = 2.0, *, outgoing: bool = False) -> list[bytes]:
        """Frames the TAP handed to the host (what the driver sent) within `timeout`."""
        frames: list[bytes] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and select.select([self.packet], [], [], left)[0]:
            frame, address = self.packet.recvfrom(70000)
            if (address[2] == PACKET_OUTGOING) == outgoing:
                frames.append(frame)
            if frames:
                deadline = min(deadline, time.monotonic() + 0.2)  # gather a burst, then stop
        return frames

    def works_after_a_reset(self, features: int = BASE, payload: bytes = b"after reset") -> None:
        """The driver resets the card and starts again: a frame from the host arrives."""
        self.core.write_status(0)
        self.start(features)
        self.post_rx(2048)
        frame = udp_frame(MAC, self.tap_mac, HOST_IP, GUEST_IP, 1, 2, payload)
        self.host_send(frame)
        (got,) = self.received(1)
        assert got[2] == NET_HDR.pack(0, 0, 0, 0, 0, 0, 1) + frame

    def received(self, count: int = 1, timeout: float = 5.0) -> list[tuple[int, int, bytes]]:
        """Wait for `count` used receive chains: (head, used len, the bytes written)."""
        rx = self.rx
        assert rx is not None
        deadline = time.monotonic() + timeout
        while (rx.used_idx() - rx.last_used) & 0xFFFF < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {(rx.used_idx() - rx.last_used) & 0xFFFF} of {count} rx chains used"
                )
            time.sleep(0.005)
        buffers = {head: [rx.read_desc(i)[:2] for i in rx.chains[head]] for head in rx.chains}
        result = []
        for head, length in rx.get_used():
            data = b"".join(self.memory.read(addr, size) for addr, size in buffers[head])
            result.append((head, length, data[:length]))
        return result


@pytest.fixture
def card(namespace: Namespace) -> Iterator[Card]:
    namespace.add_tap("ptap0")
    namespace.configure("ptap0", HOST_IP)
    errors: list[tuple[str, BaseException]] = []
    io = IoThread(lambda source, error: errors.append((source, error)))
    io.start()
    memory = GuestMemory([(0, 16 << 20)])
    with namespace.inside():
        tap = Tap.open("ptap0")
        packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        packet.bind(("ptap0", 0))
        ifreq = fcntl.ioctl(packet.fileno(), SIOCGIFHWADDR, struct.pack("256s", b"ptap0"))
    device = NetDevice(tap, MAC, io)
    interrupts = Interrupts()
    core = VirtioCore(device, memory, interrupts)
    card = Card(namespace, memory, io, device, core, interrupts, errors, packet, ifreq[18:24])
    try:
        yield card
    finally:
        device.close()
        packet.close()
        io.stop()
        memory.close()
    assert not errors  # no callback of the device ever raised on the I/O thread


def header(num_buffers: int = 1, flags: int = 0) -> bytes:
    return NET_HDR.pack(flags, 0, 0, 0, 0, 0, num_buffers)


def test_features_and_config_space(card: Card) -> None:
    offered = card.device.device_features()
    for feature in ("MAC", "STATUS", "MRG_RXBUF", "CSUM", "GUEST_CSUM", "HOST_TSO4", "GUEST_TSO6"):
        assert offered & NetFeature[feature], feature
    assert bool(offered & NetFeature.GUEST_UFO) == bool(card.device.tap.offloads & TunOffload.TUN_F_UFO)
    assert card.device.queue_sizes == (256, 256)
    assert card.core.read_config(0, 4).to_bytes(4, "little") == MAC[:4]  # little-endian reads
    assert card.device.config()[:6] == MAC
    assert card.core.read_config(6, 2) == 1  # VIRTIO_NET_S_LINK_UP
    card.core.write_config(0, 4, 0)  # read-only: ignored
    assert card.device.config()[:6] == MAC


def test_tap_offloads_follow_the_guest_features(card: Card) -> None:
    features = BASE | NetFeature.GUEST_CSUM | NetFeature.GUEST_TSO4
    card.start(features)
    csum, tso4 = int(TunOffload.TUN_F_CSUM), int(TunOffload.TUN_F_TSO4)
    assert card.device.tap.offload == csum | tso4
    card.core.write_status(0)
    card.start(BASE | NetFeature.GUEST_TSO4)  # TSO without GUEST_CSUM (§5.1.3.1): none at all
    assert card.device.tap.offload == 0


def test_a_transmitted_frame_reaches_a_host_socket(card: Card) -> None:
    with card.namespace.inside():
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener:
        listener.bind((HOST_IP, 5555))
        card.start()
        frame = udp_frame(card.tap_mac, MAC, GUEST_IP, HOST_IP, 4444, 5555, b"hello from the guest")
        card.transmit(header(0) + frame)
        listener.settimeout(5)
        data, source = listener.recvfrom(100)
    assert (data, source) == (b"hello from the guest", (GUEST_IP, 4444))
    assert card.tx is not None and card.tx.get_used() == [(0, 0)]  # nothing written back
    assert 1 in card.interrupts.used
    assert card.device.stats.tx_packets == 1


def test_a_partial_checksum_is_finished_by_the_host(card: Card) -> None:
    """The header goes to the TAP as the driver wrote it: NEEDS_CSUM with csum_start
    and csum_offset. A wrong checksum in the frame would make the host drop it."""
    with card.namespace.inside():
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener:
        listener.bind((HOST_IP, 5555))
        card.start(BASE | NetFeature.CSUM)
        frame = udp_frame(card.tap_mac, MAC, GUEST_IP, HOST_IP, 4444, 5555, b"offloaded", partial=True)
        vnet = NET_HDR.pack(1, 0, 0, 0, 14 + 20, 6, 0)  # NEEDS_CSUM: UDP checksum at +6
        # Split across three buffers, as a driver may (§2.7.4.1).
        assert card.tx is not None
        card.tx.add([vnet[:5], vnet[5:] + frame[:20], frame[20:]], [])
        card.core.notify(1)
        listener.settimeout(5)
        assert listener.recv(100) == b"offloaded"


def test_host_traffic_arp_then_udp_through_the_rings(card: Card) -> None:
    """The host's stack talks to the 'guest': its ARP request lands in the receive
    ring, the driver answers through the transmit ring, and the UDP datagram follows."""
    card.start(BASE | MRG)
    card.post_rx(*[1536] * 8)
    with card.namespace.inside():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        sender.bind((HOST_IP, 7777))
        sender.sendto(b"hello guest", (GUEST_IP, 9999))  # needs GUEST_IP's MAC first
        ((_head, length, data),) = card.received(1)
        assert data[:HDR_SIZE] == header(1)
        request = parse_arp(data[HDR_SIZE:])
        assert request == (1, card.tap_mac, HOST_IP, GUEST_IP)
        assert data[HDR_SIZE : HDR_SIZE + 6] == BROADCAST and length >= HDR_SIZE + 42
        reply = ethernet(card.tap_mac, MAC, ETH_P_ARP, arp(2, MAC, GUEST_IP, card.tap_mac, HOST_IP))
        card.transmit(header(0) + reply)
        ((_head, length, data),) = card.received(1)
    frame = data[HDR_SIZE:]
    assert frame[:12] == MAC + card.tap_mac
    assert frame[-len(b"hello guest") :] == b"hello guest"
    assert struct.unpack("!HH", frame[34:38]) == (7777, 9999)


def test_a_received_frame_is_in_the_ring_byte_for_byte(card: Card) -> None:
    card.start()  # no MRG_RXBUF: one chain per packet, num_buffers 1 (§5.1.6.4)
    card.post_rx(2048)
    frame = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, bytes(range(256)) * 3)
    card.host_send(frame)
    ((head, length, data),) = card.received(1)
    assert (head, length, data) == (0, HDR_SIZE + len(frame), header(1) + frame)
    assert 0 in card.interrupts.used
    assert card.device.stats.rx_packets == 1


@pytest.mark.parametrize("ever_posted", [False, True], ids=["never-posted", "ring-ran-dry"])
def test_no_receive_buffers_no_spin_and_the_frames_wait(card: Card, ever_posted: bool) -> None:
    card.start(BASE | MRG)
    assert card.rx is not None
    first = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, b"first")
    if ever_posted:  # the TAP is being polled when the ring runs dry
        card.post_rx(1536)
        card.host_send(first)
        card.received(1)
    frames = [udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, bytes([n]) * 100) for n in range(20)]
    for frame in frames:
        card.host_send(frame)
    time.sleep(0.2)  # the device sees the ring is dry
    before = card.device.stats.rx_wakeups
    time.sleep(1.0)
    # Counted, not timed: on a loaded host a spinning thread may get little CPU.
    wakeups = card.device.stats.rx_wakeups - before
    assert wakeups == 0, f"{wakeups} wakeups in 1 s with no buffers to fill: the receive path spins"
    assert card.rx.used_idx() == int(ever_posted)
    # The frames waited in the TAP's queue: they arrive once buffers are posted.
    card.post_rx(*[1536] * 32)
    got = card.received(20)
    assert [data[HDR_SIZE:] for _head, _length, data in got] == frames


@pytest.mark.parametrize("csum", [0, int(NetFeature.GUEST_CSUM)], ids=["plain", "guest-csum"])
def test_mergeable_buffers_a_frame_spans_chains(card: Card, csum: int) -> None:
    card.start(BASE | MRG | csum)
    heads = card.post_rx(*[256] * 8)
    frame = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, bytes(range(200)) * 5)  # 1042 bytes
    card.host_send(frame)
    got = card.received(5)
    assert [(head, length) for head, length, _data in got] == [
        *zip(heads[:4], [256] * 4, strict=True),
        (heads[4], 30),
    ]
    packet = b"".join(data for _head, _length, data in got)
    assert packet == header(num_buffers=5) + frame
    # The chains left over take the next frame, from its own first chain.
    card.host_send(frame[:100])
    ((head, length, data),) = card.received(1)
    assert (head, length, data) == (heads[5], HDR_SIZE + 100, header(1) + frame[:100])


def test_mergeable_frame_larger_than_the_posted_buffers_waits_for_more(card: Card) -> None:
    card.start(BASE | MRG)
    heads = card.post_rx(256, 256)
    frame = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, bytes(range(250)) * 4)  # 1042 bytes
    card.host_send(frame)
    deadline = time.monotonic() + 2
    while card.device.stats.rx_spilled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert card.device.stats.rx_spilled == 1
    assert card.rx is not None and card.rx.used_idx() == 0  # not half a packet
    heads += card.post_rx(300, 300, 300)  # 512 + 600 bytes: the third stays posted
    got = card.received(4)
    assert [(head, length) for head, length, _data in got] == [
        *zip(heads[:4], [256, 256, 300, 242], strict=True)
    ]
    assert b"".join(data for _head, _length, data in got) == header(num_buffers=4) + frame
    time.sleep(0.1)
    assert card.rx is not None and card.rx.used_idx() == 4


def test_without_mergeable_buffers_a_frame_too_big_for_the_chain_is_dropped(card: Card) -> None:
    card.start()
    (head,) = card.post_rx(256)
    big = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, b"x" * 1000)
    small = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, b"y" * 10)
    card.host_send(big)
    card.host_send(small)
    (got,) = card.received(1)
    assert got == (head, HDR_SIZE + len(small), header(1) + small)  # the same chain, the next frame
    assert card.device.stats.rx_dropped == 1


def test_receive_chains_with_no_room_for_a_header_are_returned_unused(card: Card) -> None:
    card.start(BASE | MRG)
    assert card.rx is not None
    tiny = card.rx.add([], [HDR_SIZE - 1])
    readable = card.rx.add([b"guest data"], [2048])
    (good,) = card.post_rx(2048)
    frame = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, b"z" * 64)
    card.host_send(frame)
    got = card.received(3)
    assert got[:2] == [(tiny, 0, b""), (readable, 0, b"")]
    assert got[2] == (good, HDR_SIZE + len(frame), header(1) + frame)
    assert card.device.stats.rx_bad_buffers == 2


@pytest.mark.parametrize(
    "chain",
    [
        pytest.param(lambda frame: ([b"\0" * 5], []), id="shorter-than-the-header"),
        pytest.param(lambda frame: ([header(0) + frame], [64]), id="writable-buffer"),
        pytest.param(lambda frame: ([header(0) + frame + b"\0" * 70000], []), id="oversized"),
        pytest.param(lambda frame: ([NET_HDR.pack(0, 0x77, 0, 0, 0, 0, 0) + frame], []), id="bad-gso-type"),
    ],
)
def test_hostile_transmit_chains_are_dropped_and_the_device_goes_on(
    card: Card, chain: Callable[[bytes], tuple[list[bytes], list[int]]]
) -> None:
    card.start()
    assert card.tx is not None
    frame = udp_frame(card.tap_mac, MAC, GUEST_IP, HOST_IP, 1, 2, b"bad")
    out, writable = chain(frame)
    head = card.tx.add(out, writable)
    last = card.tx.read_desc(card.tx.chains[head][-1])[0]  # the writable buffer, if any
    card.memory.write(last, b"\xaa" * 8)
    good = udp_frame(card.tap_mac, MAC, GUEST_IP, HOST_IP, 1, 2, b"good")
    card.tx.add([header(0) + good], [])
    card.core.notify(1)
    assert card.host_frames() == [good]  # only the good one came out of the TAP
    assert card.tx.get_used() == [(head, 0), (head + len(out) + len(writable), 0)]
    if writable:
        assert card.memory.read(last, 8) == b"\xaa" * 8  # the device wrote nothing
    assert card.device.stats.tx_dropped == 1 and card.device.stats.tx_packets == 1
    assert not card.core.status & DeviceStatus.DEVICE_NEEDS_RESET


def test_a_malformed_receive_chain_stops_rx_until_reset(card: Card) -> None:
    card.start(BASE | MRG)
    assert card.rx is not None
    card.rx.write_desc(0, 0x100000, 2048, WRITE | 1, 0)  # a loop: 0 -> 0
    card.rx.publish(0)
    card.core.notify(0)
    time.sleep(0.3)
    assert card.device._rx_broken  # no exception escaped to the I/O thread (checked at teardown)
    assert card.core.status & DeviceStatus.DEVICE_NEEDS_RESET  # §2.1.2: the driver is told
    card.works_after_a_reset(BASE | MRG)


def test_a_transmit_queue_fault_needs_reset(card: Card) -> None:
    card.start()
    assert card.tx is not None
    card.tx.set_ring(0, 9999)  # a head past the queue size (§2.7.6)
    card.tx.set_avail_idx(1)
    card.core.notify(1)
    assert card.core.status & DeviceStatus.DEVICE_NEEDS_RESET
    assert card.interrupts.config == 1


def test_close_releases_the_tap(card: Card) -> None:
    card.start()
    card.device.close()
    assert card.device.tap.closed
    card.device.close()  # idempotent
    with card.namespace.inside():
        again = Tap.open("ptap0")  # no longer busy
    again.close()


def test_net_devices_builds_cards_and_closes_them_on_a_bad_one(namespace: Namespace) -> None:
    io = IoThread(lambda source, error: None)
    io.start()
    try:
        with namespace.inside():
            (device,) = net_devices([NetConfig(None, "02:00:00:00:00:01")], io)
            assert isinstance(device, NetDevice) and device.config()[:6] == bytes.fromhex("020000000001")
            created = device.tap.name
            assert created in namespace.links()
            device.close()
            assert created not in namespace.links()
            with pytest.raises(TapError, match="'nosuchtap' does not exist"):
                net_devices([NetConfig(None), NetConfig("nosuchtap")], io)
        assert namespace.links() == {"lo"}  # the first card's TAP went with it
    finally:
        io.stop()


# --- saved state (NetState, and the receive chains the device holds) ------------------------


def wait_popped(card: Card, count: int) -> None:
    deadline = time.monotonic() + 5
    while card.core.queues[0].next_avail != count:
        assert time.monotonic() < deadline, f"the device popped {card.core.queues[0].next_avail} of {count}"
        time.sleep(0.005)


def save_and_move(card: Card, device_mac: bytes = MAC) -> CoreState:
    """Save with the I/O thread paused (as a snapshot does), close the card as its VMM
    would at exit, and restore the state into a new card on the TAP opened again."""
    card.io.pause()
    try:
        state = card.core.save()
    finally:
        card.io.resume()
    card.device.close()
    with card.namespace.inside():
        tap = Tap.open("ptap0")
    card.device = NetDevice(tap, device_mac, card.io)
    card.core = VirtioCore(card.device, card.memory, card.interrupts)
    card.core.restore(state)
    return state


def test_a_restored_card_receives_into_the_chains_it_held_and_transmits(card: Card) -> None:
    card.start(BASE | MRG)
    heads = card.post_rx(*[256] * 8)
    frame = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, bytes(range(200)) * 5)  # 5 chains
    card.host_send(frame)
    assert len(card.received(5)) == 5
    wait_popped(card, 8)  # the other 3 are held for the next frame
    state = save_and_move(card)
    assert state.device == NetState(MAC, True)
    rxq = state.queues[0]
    assert (rxq.next_avail, rxq.next_used) == (5, 5)  # the 3 held chains went back to the ring
    assert card.core.active and card.core.save() == state
    # The next frame lands in the next chain posted, at the next used position.
    card.host_send(frame[:100])
    ((head, length, data),) = card.received(1)
    assert (head, length, data) == (heads[5], HDR_SIZE + 100, header(1) + frame[:100])
    assert card.rx is not None and card.rx.used_idx() == 6
    with card.namespace.inside():
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener:
        listener.bind((HOST_IP, 5556))
        card.transmit(header(0) + udp_frame(card.tap_mac, MAC, GUEST_IP, HOST_IP, 4444, 5556, b"restored"))
        listener.settimeout(5)
        assert listener.recvfrom(100) == (b"restored", (GUEST_IP, 4444))
    assert card.tx is not None and card.tx.get_used() == [(0, 0)]


def test_a_frame_half_delivered_is_dropped_and_its_chains_go_back(card: Card) -> None:
    card.start(BASE | MRG)
    heads = card.post_rx(256, 256)
    big = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, bytes(1000))
    card.host_send(big)
    deadline = time.monotonic() + 5
    while card.device.stats.rx_spilled == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    state = save_and_move(card)
    assert (state.queues[0].next_avail, state.queues[0].next_used) == (0, 0)
    small = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, b"small")
    card.host_send(small)
    ((head, length, data),) = card.received(1)
    assert (head, length, data) == (heads[0], HDR_SIZE + len(small), header(1) + small)


def test_a_card_holding_chains_around_an_unusable_one_cannot_be_saved_yet(card: Card) -> None:
    card.start(BASE | MRG)
    assert card.rx is not None
    card.rx.add([], [256])
    card.rx.add([], [HDR_SIZE - 1])  # returned unused, after the first was taken
    card.post_rx(256)
    wait_popped(card, 3)
    card.io.pause()
    try:
        with pytest.raises(StateError, match="save again after the next frame"):
            card.core.save()
    finally:
        card.io.resume()
    card.host_send(udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, b"x"))
    assert len(card.received(2)) == 2  # the short one, then the frame
    assert card.core.save().queues[0].next_avail == 2  # the third, still held, goes back


@pytest.mark.parametrize(
    "bad",
    [
        NetState(MAC[:5], True),
        NetState(bytearray(MAC), True),  # type: ignore[arg-type]
        NetState(bytes.fromhex("030000000001"), True),  # multicast
        NetState(bytes(6), True),
        NetState(MAC, 1),  # type: ignore[arg-type]
    ],
)
def test_bad_net_states_are_refused_and_change_nothing(card: Card, bad: NetState) -> None:
    card.start(BASE | MRG)
    card.post_rx(2048)
    wait_popped(card, 1)
    card.io.pause()
    try:
        before = card.core.save()
        with pytest.raises(StateError):
            card.core.restore(dataclasses.replace(before, device=bad))
        assert card.core.save() == before
    finally:
        card.io.resume()
    frame = udp_frame(MAC, card.tap_mac, HOST_IP, GUEST_IP, 1, 2, b"still")
    card.host_send(frame)
    assert card.received(1)[0][2] == header(1) + frame


def test_the_saved_mac_and_link_status_are_what_the_guest_reads(card: Card) -> None:
    card.start(BASE)
    card.device.restore(NetState(bytes.fromhex("020000000042"), False))
    assert card.core.read_config(0, 6).to_bytes(6, "little") == bytes.fromhex("020000000042")
    assert card.core.read_config(6, 2) == 0  # link down
    state = save_and_move(card, device_mac=MAC)  # this run's --net mac= differs
    assert state.device == NetState(bytes.fromhex("020000000042"), False)
    assert card.device.config()[:6] == bytes.fromhex("020000000042")
