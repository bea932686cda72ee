"""The gdb stub's TCP server (`--gdb tcp::1234`, `-s`; QEMU's `-gdb` and `-s`): one
thread that accepts one debugger at a time and runs its session in all-stop mode
(gdb manual, "Remote Protocol": §E.1 framing and acknowledgments, §E.11 interrupts).

A session: on connect the machine is parked (`DebugTarget.debug_stop`); packets are
answered by `Stub`; a resume (c, s, vCont) lets the machine run until it reports a
`DebugEvent` or gdb sends Ctrl-C (0x03), and the stop reply goes out. When gdb
detaches or the connection drops, every breakpoint is removed and the guest runs
on; `k` stops the machine. A second debugger that connects meanwhile is told why
and disconnected. Whatever a client sends, the server answers or drops it: it never
raises out of its thread or waits on the client without a timeout.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from dataclasses import dataclass

from pyvmm.errors import ConfigError, VmmError
from pyvmm.gdb.breakpoints import HostSupport
from pyvmm.gdb.packets import Event, EventKind, PacketReader, frame
from pyvmm.gdb.probe import probe_host
from pyvmm.gdb.stub import Action, Reply, Resume, Stub
from pyvmm.gdb.target import DebugEvent, DebugTarget, StopReason
from pyvmm.kvm import KvmError

log = logging.getLogger(__name__)

DEFAULT_PORT = 1234  # QEMU's -s: -gdb tcp::1234
_POLL = 0.05  # seconds between looks at the socket while the guest runs
_SEND_TIMEOUT = 5.0  # a client that reads nothing for this long is dropped
_IDLE_TIMEOUT = 0.5  # how often a parked session checks whether the server closes


@dataclass(frozen=True)
class GdbAddress:
    """Where the stub listens. An empty host in `tcp::PORT` means the loopback
    interface (QEMU listens on all: a debugger port gives full control of the guest,
    so other hosts must be asked for by name, `tcp:0.0.0.0:1234`)."""

    host: str
    port: int


def parse_gdb_address(text: str) -> GdbAddress:
    """`tcp::PORT`, `tcp:HOST:PORT`, `:PORT` or `PORT`; `ConfigError` otherwise.
    Port 0 asks the system for a free port (see `GdbServer.address`)."""
    spec = text.strip()
    if spec.startswith("tcp:"):
        spec = spec[4:]
    host, _, port_text = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 literal
    elif ":" in host:
        raise ConfigError(f"--gdb {text!r}: only tcp: addresses (tcp::PORT, tcp:HOST:PORT)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--gdb {text!r}: expected tcp::PORT or tcp:HOST:PORT with a port up to 65535")
    if any(character.isspace() or character in "/," for character in host):
        raise ConfigError(f"--gdb {text!r}: {host!r} is not a host name")
    return GdbAddress(host or "127.0.0.1", int(port_text))


DEFAULT_ADDRESS = GdbAddress("127.0.0.1", DEFAULT_PORT)  # -s


class GdbServer:
    """Listens on `address` from `start()` until `close()`."""

    def __init__(self, target: DebugTarget, address: GdbAddress, host: HostSupport | None = None) -> None:
        """`host`: what this host's guest debugging delivers; probed when None."""
        self.target = target
        self.host = probe_host() if host is None else host
        self._closing = threading.Event()
        try:
            self._listener = socket.create_server((address.host, address.port), reuse_port=False)
        except OSError as exc:
            raise ConfigError(
                f"--gdb: cannot listen on {address.host}:{address.port}: {exc.strerror}"
            ) from None
        self._listener.settimeout(_IDLE_TIMEOUT)
        bound = self._listener.getsockname()
        self.address = GdbAddress(str(bound[0]), int(bound[1]))
        self._thread = threading.Thread(target=self._serve, name="gdb-stub", daemon=True)
        self._busy = threading.Lock()
        self._session_thread: threading.Thread | None = None

    def start(self) -> None:
        log.info("gdb: waiting for a debugger on %s:%d", self.address.host, self.address.port)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop listening and end the session (the guest runs on, as after a detach);
        waits at most `timeout` for each thread."""
        self._closing.set()
        self._thread.join(timeout)
        self._listener.close()
        session = self._session_thread
        if session is not None:
            session.join(timeout)

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                connection, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._busy.acquire(blocking=False):
                self._refuse(connection, peer)
                continue
            self._session_thread = threading.Thread(
                target=self._session, args=(connection, peer), name="gdb-session", daemon=True
            )
            self._session_thread.start()

    def _refuse(self, connection: socket.socket, peer: object) -> None:
        log.warning("gdb: a second debugger from %s refused: one at a time", peer)
        try:
            connection.settimeout(1.0)
            connection.sendall(frame(b"E.another debugger is attached"))
        except OSError:
            pass
        connection.close()

    def _session(self, connection: socket.socket, peer: object) -> None:
        log.info("gdb: debugger connected from %s", peer)
        try:
            _Session(self, connection).run()
        except (OSError, KvmError, VmmError) as exc:
            log.warning("gdb: session with %s ended: %s", peer, exc)
        finally:
            connection.close()
            self._busy.release()
            log.info("gdb: debugger %s gone", peer)


class _Session:
    """One debugger's connection."""

    def __init__(self, server: GdbServer, connection: socket.socket) -> None:
        self.server = server
        self.target = server.target
        self.connection = connection
        self.reader = PacketReader()
        self.stub = Stub(server.target, server.host)
        self.ack = True
        self.last_sent = b""
        self.running = False
        self.interrupted = False  # Ctrl-C seen while the guest runs
        self.ended = False
        connection.settimeout(_SEND_TIMEOUT)
        # poll, not select: a VMM's descriptors easily pass select's FD_SETSIZE of 1024
        self.poll = select.poll()
        self.poll.register(connection, select.POLLIN)

    def run(self) -> None:
        self.target.debug_stop()
        event = self.target.wait_debug_event(0)
        if event is not None:
            self.stub.last_stop = event
            self.ended = event.reason is StopReason.ENDED
        action: Action | None = None
        try:
            while action is None and not self.server.closing:
                if self.running:
                    self._watch_run()
                    continue
                data = self._receive(_IDLE_TIMEOUT)
                if data is None:
                    break  # the debugger went away
                action = self._handle_bytes(data)
        finally:
            if action is Action.KILL:
                self.target.kill()
            elif not self.ended:
                self._let_go()

    def _let_go(self) -> None:
        """Detach: the guest runs on with no breakpoint (also when gdb just vanished)."""
        if self.running:
            self.target.debug_stop()
            self.target.wait_debug_event(0)
        self.stub.release()
        self.target.debug_continue(None)

    def _receive(self, timeout: float) -> bytes | None:
        """Bytes from gdb; b"" when none came within `timeout`, None at end of stream."""
        if not self.poll.poll(timeout * 1000):
            return b""
        data = self.connection.recv(4096)
        return data or None

    def _send(self, payload: bytes) -> None:
        self.last_sent = frame(payload)
        self.connection.sendall(self.last_sent)

    def _handle_bytes(self, data: bytes) -> Action | None:
        for event in self.reader.feed(data):
            if self.running:
                # all-stop: while the guest runs, gdb sends nothing but Ctrl-C (even in
                # the same segment as the resume that started it)
                self.interrupted |= event.kind is EventKind.INTERRUPT
                continue
            action = self._handle_event(event)
            if action is not None:
                return action
        return None

    def _handle_event(self, event: Event) -> Action | None:
        if event.kind is EventKind.NACK and self.ack and self.last_sent:
            self.connection.sendall(self.last_sent)
        elif event.kind is EventKind.BAD_PACKET:
            log.debug("gdb: dropped a packet: %s", event.reason)
            if self.ack:
                self.connection.sendall(b"-")
        elif event.kind is EventKind.PACKET:
            if self.ack:
                self.connection.sendall(b"+")
            return self._answer(event.payload)
        return None

    def _answer(self, packet: bytes) -> Action | None:
        if self.ended and packet[:1] not in (b"?", b"q", b"Q", b"D", b"k"):
            self._send(b"E01")  # the machine is gone: nothing to read or run
            return None
        result = self.stub.handle(packet)
        if isinstance(result, Resume):
            while self.target.wait_debug_event(0) is not None:
                pass  # a stop nobody asked about any more (raced with the last one)
            self.target.debug_continue(result.step_vcpu)
            self.running = True
            return None
        assert isinstance(result, Reply)
        if result.then is not Action.KILL:
            self._send(result.payload)
        if result.no_ack:
            self.ack = False
        return result.then

    def _watch_run(self) -> None:
        """While the guest runs: its next stop, or Ctrl-C from gdb."""
        event = self.target.wait_debug_event(_POLL)
        if event is None:
            data = self._receive(0)
            if data is None:
                raise OSError("the debugger closed the connection while the guest ran")
            self._handle_bytes(data)
            if self.interrupted:
                self.target.debug_stop()
                event = self.target.wait_debug_event(0) or DebugEvent(self.stub.c_vcpu, StopReason.REQUESTED)
        if event is not None:
            self.running = False
            self.interrupted = False  # a Ctrl-C that raced this stop has its answer
            self.ended = event.reason is StopReason.ENDED
            self._send(self.stub.stop_reply(event))


__all__ = ["DEFAULT_ADDRESS", "DEFAULT_PORT", "GdbAddress", "GdbServer", "parse_gdb_address"]
