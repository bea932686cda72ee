"""The guest's console on the user's stdin and stdout.

A terminal (`TerminalConsole`, as QEMU's `-serial mon:stdio`): put in raw mode
(output post-processing stays on so a bare LF still starts a new line) and always
restored; keystrokes go to the guest, and an escape key leaves: Ctrl-A x quits,
Ctrl-A Ctrl-A sends a Ctrl-A, Ctrl-A h lists the keys. Everything else, Ctrl-C
included, goes to the guest.

Anything else (`PipedInput`: a pipe, a file): its bytes go to the guest as they
arrive, unchanged, with no raw mode and no escape key, as QEMU's `-serial stdio` and
Firecracker's serial console take a pipe; at the end of the input reading stops and
the guest runs on. /dev/null is an input that ends at once; a closed stdin is none.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

STDIN = 0
ESCAPE_KEY = 0x01  # Ctrl-A
QUIT_KEY = ord("x")
HELP_KEY = ord("h")
HELP_TEXT = (
    b"\r\nC-a x    quit pyvmm (the guest is stopped)"
    b"\r\nC-a C-a  send C-a to the guest\r\nC-a h    this help\r\n"
)
_POLL_SECONDS = 0.2  # how soon an input thread sees that it should stop
_READ_BYTES = 4096
_ROOM_POLL_SECONDS = 0.005  # how often a waiting piped input looks for room again


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, waiting out a full pipe or terminal."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


def stdin_is_open() -> bool:
    """False when the process was started with its stdin closed (`<&-`). Python then
    has no `sys.stdin`, and fd 0 is whatever file was opened first since (as likely as
    not /dev/kvm): it must not be read."""
    return sys.stdin is not None


class EscapeDecoder:
    """Splits keystrokes into bytes for the guest and console commands."""

    def __init__(self) -> None:
        self._escaped = False

    def feed(self, data: bytes) -> tuple[bytes, list[int]]:
        """(bytes for the guest, command keys pressed after the escape key)."""
        guest = bytearray()
        commands: list[int] = []
        for byte in data:
            if self._escaped:
                self._escaped = False
                if byte == ESCAPE_KEY:
                    guest.append(ESCAPE_KEY)
                else:
                    commands.append(byte)
            elif byte == ESCAPE_KEY:
                self._escaped = True
            else:
                guest.append(byte)
        return bytes(guest), commands


class _InputThread:
    """Reads `fd` on a thread of its own for the duration of a `with`, handing each
    read to `_take` until it returns False, the input ends, or the block is left."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._running = False
        self._thread = threading.Thread(target=self._read_loop, name="console-input", daemon=True)

    def _start(self) -> None:
        self._running = True
        self._thread.start()

    def _stop(self) -> None:
        self._running = False
        if self._thread.is_alive():
            self._thread.join(1.0)

    def _take(self, data: bytes) -> bool:
        raise NotImplementedError

    def _ended(self, error: OSError | None) -> None:
        """The input ended (`error` None) or could not be read."""

    def _read_loop(self) -> None:
        while self._running:
            try:
                ready, _, _ = select.select([self.fd], [], [], _POLL_SECONDS)
                if not ready:
                    continue
                data = os.read(self.fd, _READ_BYTES)
            except (OSError, ValueError) as exc:  # ValueError: select on a closed fd
                self._ended(exc if isinstance(exc, OSError) else OSError(str(exc)))
                return
            if not data:
                self._ended(None)
                return
            if not self._take(data):
                return


class TerminalConsole(_InputThread):
    """Connects a terminal to a running machine's console for the duration of a
    `with`. `show` prints the console's own messages (its help); by default on stdout."""

    def __init__(
        self,
        send: Callable[[bytes], None],
        quit: Callable[[], None],
        fd: int | None = None,
        show: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(sys.stdin.fileno() if fd is None else fd)
        self.send = send
        self.quit = quit
        self.show = show or (lambda data: write_all(sys.stdout.fileno(), data))
        self._saved: list[Any] | None = None
        self._decoder = EscapeDecoder()

    def __enter__(self) -> TerminalConsole:
        self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)
        attributes = termios.tcgetattr(self.fd)
        attributes[1] |= termios.OPOST | termios.ONLCR  # oflag: keep LF -> CRLF
        termios.tcsetattr(self.fd, termios.TCSANOW, attributes)
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except (termios.error, OSError):  # the terminal has gone (SIGHUP, EIO under nohup)
                pass

    def _take(self, data: bytes) -> bool:
        guest, commands = self._decoder.feed(data)
        if guest:
            self.send(guest)
        for key in commands:
            if key == QUIT_KEY:
                self.quit()
                return False
            if key == HELP_KEY:
                self.show(HELP_TEXT)
        return True


class PipedInput(_InputThread):
    """Forwards a non-terminal stdin (a pipe, a file, /dev/null) to `send` as it
    arrives, for the duration of a `with`; at its end stops reading, and the guest
    runs on. Nothing is translated: a script's "\\n" ends a line in the guest's tty
    as the terminal's Enter does."""

    def __init__(self, send: Callable[[bytes], None], room: Callable[[], int], fd: int = STDIN) -> None:
        super().__init__(fd)
        self.send = send
        self.room = room  # how much `send` takes now without dropping (Machine.input_room)
        self.forwarded = 0  # bytes handed to `send`

    def __enter__(self) -> PipedInput:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _take(self, data: bytes) -> bool:
        """Hand `data` on as the console has room for it: a pipe carries more than a
        guest reads at once (`cat file | pyvmm run`), and nothing of it may be lost.
        The pipe's writer waits meanwhile, as it would for a slow reader."""
        view = memoryview(data)
        while view:
            room = self.room()
            if room <= 0:
                if not self._running:
                    return False
                time.sleep(_ROOM_POLL_SECONDS)
                continue
            chunk = bytes(view[:room])
            self.send(chunk)
            self.forwarded += len(chunk)
            view = view[len(chunk) :]
        return True

    def _ended(self, error: OSError | None) -> None:
        if error is None:
            log.info("end of input after %d bytes; the guest runs on", self.forwarded)
        else:
            log.warning("stdin cannot be read (%s): no more input goes to the guest", error)
