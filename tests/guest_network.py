"""The host's end of a Linux guest's virtio-net card, for the boots of
test_linux_guest.py: a network namespace made for one boot, a TAP in it carrying the
host's address, `pyvmm run` started inside it (`ip netns exec`), and a thread that
answers the guest's traffic.

Nothing touches the host's own interfaces: the TAP, its address and every socket
live in the namespace (tests/net/netns.py), removed by `close()`. What the guest is
expected to do, in order (`guest_commands()`):

1. bring eth0 up with `GUEST_ADDRESS` and ping the host (answered by the host's kernel);
2. send a stream to `UPLOAD_PORT` and close its side; the host hashes what arrives,
   then pings the guest (raw ICMP echo) while the guest waits for the host to close;
3. connect to `DOWNLOAD_PORT` and read to the end: the host sends `download`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from net.netns import Namespace

TAP = "pyvmm-tap0"
HOST_ADDRESS = "10.0.2.2"  # QEMU's user-mode host address, inside the namespace only
GUEST_ADDRESS = "10.0.2.15"
PREFIX = 24
UPLOAD_PORT = 5001
DOWNLOAD_PORT = 5002
PINGS = 3
PING_SECONDS = 30.0  # one echo's answer: the guest's kernel is slow on a software KVM
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence (RFC 792)


def link_commands() -> list[str]:
    """The guest's side of the link as busybox shell command lines: eth0 up with
    `GUEST_ADDRESS`, its MAC, a ping of the host; each prints a `key=value` line."""
    return [
        f"ip link set eth0 up && ip addr add {GUEST_ADDRESS}/{PREFIX} dev eth0; echo eth0-up=$?",
        "echo eth0-mac=$(cat /sys/class/net/eth0/address)",
        f"echo guest-ping=$(ping -c {PINGS} -W 30 {HOST_ADDRESS} | grep -o '[0-9]* packets received')",
    ]


def guest_commands(netio: str, upload_source: str, download_target: str) -> list[str]:
    """`link_commands()`, then the upload of `upload_source` and the download into
    `download_target` with the netio program at `netio` (benchmarks/guest_tools/netio.c:
    busybox nc's 1 KiB system calls are too slow in a guest kernel on a software
    KVM); each step prints a `key=value` line (its exit status)."""
    return [
        *link_commands(),
        f"{netio} send {HOST_ADDRESS} {UPLOAD_PORT} {upload_source}; echo upload=$?",
        f"{netio} recv {HOST_ADDRESS} {DOWNLOAD_PORT} {download_target}; echo download=$?",
        f"echo download-sha256=$(sha256sum {download_target} | cut -d' ' -f1)",
    ]


@dataclass
class NetworkResult:
    """What the host's end saw."""

    uploaded: int = 0  # bytes received on UPLOAD_PORT
    upload_sha256: str = ""
    replies: int = 0  # the guest's answers to the host's pings
    downloaded: bool = False  # `download` sent in full and the connection closed
    errors: list[str] = field(default_factory=list)


class GuestNetwork:
    """The namespace, the TAP (with `HOST_ADDRESS`) and the serving thread, made now."""

    def __init__(self, download: bytes, seconds: float) -> None:
        self.download = download
        self.deadline = time.monotonic() + seconds
        self.result = NetworkResult()
        self.namespace = Namespace()
        self._removed = False
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        try:
            self.namespace.add_tap(TAP)
            self.namespace.configure(TAP, HOST_ADDRESS, PREFIX)
            with self.namespace.inside():  # sockets made here stay in the namespace
                self._upload = self._listen(UPLOAD_PORT)
                self._download = self._listen(DOWNLOAD_PORT)
                self._icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                self._sockets.append(self._icmp)
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._serve, name="guest-network", daemon=True)
        self._thread.start()

    def wrap(self, command: Sequence[str]) -> list[str]:
        """`command` run inside the namespace, where the TAP is."""
        return ["ip", "netns", "exec", self.namespace.name, *command]

    def finish(self, seconds: float = 30.0) -> NetworkResult:
        """The result, once the serving thread has ended (or after `seconds`)."""
        self._thread.join(seconds)
        if self._thread.is_alive():
            self.result.errors.append("the host's end was still waiting for the guest")
        return self.result

    def close(self) -> None:
        """Stop serving; remove the namespace with the TAP (idempotent)."""
        self._stopped.set()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if not self._removed:
            self._removed = True
            self.namespace.remove()

    # --- the serving thread -----------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sockets.append(listener)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST_ADDRESS, port))
        listener.listen(1)
        listener.settimeout(1.0)  # so that close() is noticed
        return listener

    def _accept(self, listener: socket.socket) -> socket.socket | None:
        while not self._stopped.is_set() and time.monotonic() < self.deadline:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed under us
                return None
            connection.settimeout(max(1.0, self.deadline - time.monotonic()))
            return connection
        return None

    def _serve(self) -> None:
        try:
            self._serve_upload()
            self._serve_download()
        except OSError as exc:
            if not self._stopped.is_set():
                self.result.errors.append(f"{type(exc).__name__}: {exc}")

    def _serve_upload(self) -> None:
        connection = self._accept(self._upload)
        if connection is None:
            self.result.errors.append(f"the guest never connected to port {UPLOAD_PORT}")
            return
        with connection:
            digest = hashlib.sha256()
            while chunk := connection.recv(1 << 16):
                digest.update(chunk)
                self.result.uploaded += len(chunk)
            self.result.upload_sha256 = digest.hexdigest()
            # The guest's netio waits for this end to close: its network is up now.
            self.result.replies = sum(self._ping(sequence) for sequence in range(1, PINGS + 1))

    def _serve_download(self) -> None:
        connection = self._accept(self._download)
        if connection is None:
            self.result.errors.append(f"the guest never connected to port {DOWNLOAD_PORT}")
            return
        with connection:
            connection.sendall(self.download)
            connection.shutdown(socket.SHUT_WR)
            # The guest's netio sends nothing; wait for its close.
            while connection.recv(1 << 16):
                pass
        self.result.downloaded = True

    def _ping(self, sequence: int) -> bool:
        """One ICMP echo to the guest (RFC 792); True when its reply came back."""
        identifier = os.getpid() & 0xFFFF
        payload = b"pyvmm-host-ping" + bytes([sequence])
        header = ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, identifier, sequence)
        checksum = internet_checksum(header + payload)
        packet = ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, checksum, identifier, sequence) + payload
        self._icmp.sendto(packet, (GUEST_ADDRESS, 0))
        until = time.monotonic() + PING_SECONDS
        while (left := until - time.monotonic()) > 0:
            self._icmp.settimeout(left)
            try:
                datagram, (source, _) = self._icmp.recvfrom(65536)
            except TimeoutError:
                break
            body = datagram[(datagram[0] & 0x0F) * 4 :]  # past the IPv4 header (IHL words)
            if source != GUEST_ADDRESS or len(body) < ICMP_HEADER.size:
                continue
            kind, _code, _sum, got_identifier, got_sequence = ICMP_HEADER.unpack_from(body)
            if (kind, got_identifier, got_sequence) == (ICMP_ECHO_REPLY, identifier, sequence):
                return body[ICMP_HEADER.size :] == payload
        return False


def internet_checksum(data: bytes) -> int:
    """The ones' complement sum of 16-bit words (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
