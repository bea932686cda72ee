"""The serial console on the user's terminal: guest output to stdout, keystrokes to
the guest, and an escape key to leave (as QEMU's `-serial mon:stdio`).

Ctrl-A x quits, Ctrl-A Ctrl-A sends a Ctrl-A, Ctrl-A h lists the keys. Everything
else, Ctrl-C included, goes to the guest. The terminal is put in raw mode (output
post-processing stays on so a bare LF still starts a new line) and always restored.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Callable
from typing import Any

ESCAPE_KEY = 0x01  # Ctrl-A
QUIT_KEY = ord("x")
HELP_KEY = ord("h")
HELP_TEXT = (
    b"\r\nC-a x    quit pyvmm (the guest is stopped)"
    b"\r\nC-a C-a  send C-a to the guest\r\nC-a h    this help\r\n"
)
_POLL_SECONDS = 0.2


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


class TerminalConsole:
    """Connects a terminal to a running machine's UART for the duration of a `with`."""

    def __init__(
        self, send: Callable[[bytes], None], quit: Callable[[], None], fd: int | None = None
    ) -> None:
        self.send = send
        self.quit = quit
        self.fd = sys.stdin.fileno() if fd is None else fd
        self._saved: list[Any] | None = None
        self._running = False
        self._thread = threading.Thread(target=self._read_loop, name="console", daemon=True)
        self._decoder = EscapeDecoder()

    def __enter__(self) -> TerminalConsole:
        self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)
        attributes = termios.tcgetattr(self.fd)
        attributes[1] |= termios.OPOST | termios.ONLCR  # oflag: keep LF -> CRLF
        termios.tcsetattr(self.fd, termios.TCSANOW, attributes)
        self._running = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join(1.0)
        if self._saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except (termios.error, OSError):  # the terminal has gone (SIGHUP, EIO under nohup)
                pass

    def _read_loop(self) -> None:
        while self._running:
            ready, _, _ = select.select([self.fd], [], [], _POLL_SECONDS)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 1024)
            except OSError:
                return
            if not data:
                return
            guest, commands = self._decoder.feed(data)
            if guest:
                self.send(guest)
            for key in commands:
                if key == QUIT_KEY:
                    self.quit()
                    return
                if key == HELP_KEY:
                    write_all(sys.stdout.fileno(), HELP_TEXT)
