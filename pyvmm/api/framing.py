"""Splitting a QMP client's byte stream into JSON messages, with QEMU's bounds
(qobject/json-streamer.c: a message ends where its braces and brackets balance) and
its recovery rule (docs/interop/qmp-spec.rst, "Forcing the JSON parser into
known-good state": an ASCII control character other than TAB, CR, LF, or a 0xFF
byte, throws away the message in progress).

Untrusted input throughout: a message longer than `max_bytes` or nested deeper than
`max_depth` is reported once and skipped up to where it ends, without being kept; a
client that sends more than `max_skip` bytes of one such message cannot resync and is
dropped. Like QEMU, single-quoted strings and the `\\'` escape are accepted: they are
rewritten to plain JSON on the way through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_MESSAGE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_SKIP_BYTES = 16 << 20

_OPENERS = b"{["
_CLOSERS = b"}]"
_WHITESPACE = b" \t\r\n"
# bytes the lexer rejects anywhere (QEMU's qobject/json-lexer.c): ASCII control
# characters but TAB, LF and CR - inside a string those too - and 0xFE, 0xFF, which
# are never UTF-8; these are what a client sends to resync (qmp-spec.rst)
_INVALID = frozenset(set(range(0x20)) - {0x09, 0x0A, 0x0D}) | {0xFE, 0xFF}
_INVALID_IN_STRING = frozenset(range(0x20)) | {0xFE, 0xFF}
# the next byte that matters, outside a string and inside one
_SPECIAL_OUTSIDE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\xfe\xff\"'{}\[\]]")
_SPECIAL_INSIDE = re.compile(rb"[\x00-\x1f\xfe\xff\"'\\]")
_BARE_END = re.compile(rb"[\x00-\x20\xfe\xff\"'{}\[\]]")
# after a lexical error, where input is worth reading again (as QEMU's lexer recovers:
# a line end or control character, or the start of the next object or array)
_RECOVERED = re.compile(rb"[\x00-\x1f\xfe\xff{\[]")


@dataclass(frozen=True)
class Frame:
    """One complete message, as plain JSON bytes."""

    data: bytes


@dataclass(frozen=True)
class FrameError:
    """Input thrown away; `desc` is what QEMU says about it."""

    desc: str


class OverrunError(Exception):
    """The client sent more of one oversized message than can be skipped."""


class JsonSplitter:
    """Feed bytes, get `Frame`s and `FrameError`s back in stream order."""

    def __init__(
        self, max_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH, max_skip: int = MAX_SKIP_BYTES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_skip = max_skip
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._quote = 0  # the open string's quote byte, 0 outside strings
        self._escape = False
        self._bare = False  # a top-level scalar (42, true, ...) in progress
        self._skipping = False  # an oversized message is being passed over
        self._skipped = 0
        self._recovering = False

    @property
    def pending(self) -> bool:
        return bool(self._buf) or self._skipping

    def feed(self, data: bytes) -> Iterator[Frame | FrameError]:
        """Raises `OverrunError` when the client cannot resync."""
        pos = 0
        while pos < len(data):
            if self._recovering:
                pos, out = self._recover(data, pos), None
            elif self._quote:
                pos, out = self._in_string(data, pos)
            elif self._bare:
                pos, out = self._in_bare(data, pos)
            else:
                pos, out = self._outside(data, pos)
            if out is not None:
                yield out
            if len(self._buf) > self.max_bytes and not self._skipping:
                self._skipping = True
                self._buf.clear()
                yield FrameError("JSON token size limit exceeded")
            if self._skipping and self._skipped > self.max_skip:
                raise OverrunError(f"more than {self.max_skip} bytes of an oversized message")

    def _keep(self, chunk: bytes | bytearray) -> None:
        if self._skipping:
            self._skipped += len(chunk)
        else:
            self._buf += chunk

    def _invalid(self) -> FrameError:
        self._reset()
        self._recovering = True
        return FrameError("JSON parse error, invalid character")

    def _recover(self, data: bytes, pos: int) -> int:
        match = _RECOVERED.search(data, pos)
        if match is None:
            return len(data)
        self._recovering = False
        # an opener starts the next message; a control character is the resync itself
        return match.start() if data[match.start()] in _OPENERS else match.start() + 1

    def _finish(self) -> Frame | FrameError | None:
        skipped = self._skipping
        data = bytes(self._buf)
        self._reset()
        return None if skipped else Frame(data)

    def _outside(self, data: bytes, pos: int) -> tuple[int, Frame | FrameError | None]:
        if self._depth == 0:
            while pos < len(data) and data[pos] in _WHITESPACE:
                pos += 1
            if pos == len(data):
                return pos, None
        match = _SPECIAL_OUTSIDE.search(data, pos)
        end = match.start() if match else len(data)
        if self._depth == 0 and end > pos:
            self._bare = True  # a scalar at the top: its own (bad) message
            return pos, None
        self._keep(data[pos:end])
        if match is None:
            return end, None
        byte = data[end]
        if byte in _INVALID:
            return end + 1, self._invalid()
        if byte in b"\"'":
            self._quote = byte
            self._keep(b'"')
            return end + 1, None
        if byte in _OPENERS:
            self._depth += 1
            self._keep(data[end : end + 1])
            if self._depth > self.max_depth and not self._skipping:
                self._skipping = True
                self._buf.clear()
                return end + 1, FrameError("JSON nesting depth limit exceeded")
            return end + 1, None
        # a closer
        self._keep(data[end : end + 1])
        self._depth -= 1
        if self._depth <= 0:
            return end + 1, self._finish()
        return end + 1, None

    def _in_string(self, data: bytes, pos: int) -> tuple[int, Frame | FrameError | None]:
        if self._escape:
            self._escape = False
            byte = data[pos]
            if byte in _INVALID_IN_STRING:
                return pos + 1, self._invalid()
            # \' is QEMU's; JSON has no such escape, so it becomes a bare quote
            self._keep(b"'" if byte == 0x27 else bytes((0x5C, byte)))
            return pos + 1, None
        match = _SPECIAL_INSIDE.search(data, pos)
        end = match.start() if match else len(data)
        self._keep(data[pos:end])
        if match is None:
            return end, None
        byte = data[end]
        if byte in _INVALID_IN_STRING:
            return end + 1, self._invalid()
        if byte == 0x5C:
            self._escape = True
        elif byte == self._quote:
            self._quote = 0
            self._keep(b'"')
            if self._depth == 0:  # a top-level string: its own message
                return end + 1, self._finish()
        else:  # the other quote: plain text here, escaped if it is JSON's
            self._keep(b'\\"' if byte == 0x22 else b"'")
        return end + 1, None

    def _in_bare(self, data: bytes, pos: int) -> tuple[int, Frame | FrameError | None]:
        match = _BARE_END.search(data, pos)
        end = match.start() if match else len(data)
        self._keep(data[pos:end])
        if match is None:
            return end, None
        self._bare = False
        return end, self._finish()
