"""Framing of the gdb remote serial protocol (gdb manual, "Remote Protocol",
§E.1 "Overview": `$payload#cs`, acknowledgments, escapes, run-length encoding;
§E.11 "Interrupts": a bare 0x03 byte; "Packet Acknowledgment": QStartNoAckMode).

Everything here reads bytes from an untrusted peer: a packet longer than
`MAX_PACKET`, a bad checksum or bytes outside any packet are dropped and reported as
events, never raised as an unexpected exception, and never make the reader keep
more than `MAX_PACKET` bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from pyvmm.errors import VmmError

# The largest payload accepted, as announced in qSupported (PacketSize, hex).
MAX_PACKET = 0x4000

_START = 0x24  # $
_END = 0x23  # #
_ESCAPE = 0x7D  # }
_RUN = 0x2A  # *
_INTERRUPT = 0x03
_ACK = 0x2B  # +
_NACK = 0x2D  # -
_ESCAPED = frozenset({_START, _END, _ESCAPE, _RUN})
_HEX = frozenset(b"0123456789abcdefABCDEF")


class PacketError(VmmError):
    """A packet from the debugger that cannot be understood (malformed arguments).
    To move to pyvmm/errors.py as a GdbError."""


class EventKind(enum.Enum):
    PACKET = "packet"  # a well-formed packet: `payload` holds it, unescaped
    INTERRUPT = "interrupt"  # Ctrl-C outside a packet
    ACK = "ack"
    NACK = "nack"  # the peer asks for the last packet again
    BAD_PACKET = "bad packet"  # checksum, escape or size wrong: answer '-' (in ack mode)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    payload: bytes = b""
    reason: str = ""


def checksum(data: bytes) -> int:
    """The modulo-256 sum of the payload bytes as sent (§E.1)."""
    return sum(data) & 0xFF


def escape(payload: bytes) -> bytes:
    """Escape `$`, `#`, `}` and `*` as `}` then the byte XOR 0x20 (§E.1, "Binary data")."""
    if not any(byte in _ESCAPED for byte in payload):
        return payload
    out = bytearray()
    for byte in payload:
        if byte in _ESCAPED:
            out += bytes((_ESCAPE, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """`$payload#cs` with the payload escaped."""
    body = escape(payload)
    return b"$" + body + b"#" + f"{checksum(body):02x}".encode()


def decode_body(body: bytes, limit: int = MAX_PACKET) -> bytes:
    """Undo escapes and run-length encoding (`X*n`: X repeated n - 29 more times).

    `PacketError` for a dangling escape, a run with nothing to repeat or a bad count,
    or a result past `limit`.
    """
    out = bytearray()
    index = 0
    while index < len(body):
        byte = body[index]
        if byte == _ESCAPE:
            if index + 1 >= len(body):
                raise PacketError("an escape at the end of the packet")
            out.append(body[index + 1] ^ 0x20)
            index += 2
        elif byte == _RUN:
            if not out or index + 1 >= len(body):
                raise PacketError("a run-length marker with nothing to repeat")
            count = body[index + 1] - 29
            if count < 3 or body[index + 1] in (_START, _END):
                raise PacketError("a bad run-length count")
            out += bytes((out[-1],)) * count
            index += 2
        else:
            out.append(byte)
            index += 1
        if len(out) > limit:
            raise PacketError(f"a packet longer than {limit} bytes")
    return bytes(out)


class _State(enum.Enum):
    IDLE = "idle"
    BODY = "body"
    CHECKSUM = "checksum"
    DISCARD = "discard"  # an oversized packet: skip to its end


class PacketReader:
    """Turns the byte stream from gdb into `Event`s; keeps at most one packet."""

    def __init__(self, limit: int = MAX_PACKET) -> None:
        self._limit = limit
        self._state = _State.IDLE
        self._body = bytearray()
        self._sum = bytearray()
        self._oversized = False

    def feed(self, data: bytes) -> Iterator[Event]:
        for byte in data:
            event = self._byte(byte)
            if event is not None:
                yield event

    def _byte(self, byte: int) -> Event | None:
        state = self._state
        if state is _State.IDLE:
            return self._idle(byte)
        if byte == _START and state is not _State.CHECKSUM:
            # A new packet inside an unfinished one: gdb gave up on the old one.
            self._begin()
            return Event(EventKind.BAD_PACKET, reason="packet restarted")
        if state is _State.BODY:
            if byte == _END:
                self._state = _State.CHECKSUM
            elif len(self._body) >= 2 * self._limit:  # escaped bytes count twice at most
                self._state = _State.DISCARD
            else:
                self._body.append(byte)
            return None
        if state is _State.DISCARD:
            if byte == _END:
                self._state = _State.CHECKSUM
                self._oversized = True
                self._body.clear()
            return None
        self._sum.append(byte)
        return self._finish() if len(self._sum) == 2 else None

    def _idle(self, byte: int) -> Event | None:
        if byte == _START:
            self._begin()
            return None
        if byte == _INTERRUPT:
            return Event(EventKind.INTERRUPT)
        if byte == _ACK:
            return Event(EventKind.ACK)
        if byte == _NACK:
            return Event(EventKind.NACK)
        return None  # noise between packets: ignored, as gdb does

    def _begin(self) -> None:
        self._state = _State.BODY
        self._body.clear()
        self._sum.clear()
        self._oversized = False

    def _finish(self) -> Event:
        self._state = _State.IDLE
        body, digits = bytes(self._body), bytes(self._sum)
        if self._oversized:
            return Event(EventKind.BAD_PACKET, reason=f"a packet longer than {self._limit} bytes")
        if not all(d in _HEX for d in digits) or int(digits, 16) != checksum(body):
            return Event(EventKind.BAD_PACKET, reason="bad checksum")
        try:
            return Event(EventKind.PACKET, decode_body(body, self._limit))
        except PacketError as exc:
            return Event(EventKind.BAD_PACKET, reason=str(exc))


__all__ = ["MAX_PACKET", "Event", "EventKind", "PacketError", "PacketReader", "checksum", "escape", "frame"]
