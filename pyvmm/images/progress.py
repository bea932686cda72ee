"""What the user sees while images build.

On a terminal: one status line, redrawn in place ("compile  3m12s  1234 objects  CC
fs/ext4/inode.o"), and one permanent line per finished phase. Elsewhere (logs, CI):
plain lines, one when a phase starts and ends and a heartbeat at least every
`heartbeat` seconds in between, so the build is never silent for long.
"""

from __future__ import annotations

import shutil
import time
from typing import TextIO

_CLEAR_LINE = "\r\x1b[K"
DEFAULT_HEARTBEAT = 20.0
_REDRAW_INTERVAL = 0.2


def format_elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


class Progress:
    """Reports phases and status to a text stream (the CLI passes stderr)."""

    def __init__(self, stream: TextIO, live: bool, prefix: str = "pyvmm images",
                 heartbeat: float = DEFAULT_HEARTBEAT) -> None:
        self._stream = stream
        self._live = live
        self._prefix = prefix
        self._heartbeat = heartbeat
        self._phase = ""
        self._started = 0.0
        self._last_output = 0.0
        self._status_shown = False

    @classmethod
    def for_stream(cls, stream: TextIO) -> Progress:
        return cls(stream, live=stream.isatty())

    @property
    def live(self) -> bool:
        return self._live

    def start(self, phase: str) -> None:
        self._phase = phase
        self._started = time.monotonic()
        if self._live:
            self.status("")
        else:
            self._line(f"{phase}: started")

    def status(self, text: str, force: bool = False) -> None:
        """The current phase's progress; cheap to call often."""
        now = time.monotonic()
        elapsed = format_elapsed(now - self._started)
        if self._live:
            if not force and self._status_shown and now - self._last_output < _REDRAW_INTERVAL:
                return
            width = shutil.get_terminal_size((100, 24)).columns - 1
            line = f"{self._prefix}: {self._phase}  {elapsed}  {text}".rstrip()
            self._write(_CLEAR_LINE + line[:width])
            self._status_shown = True
            self._last_output = now
        elif force or now - self._last_output >= self._heartbeat:
            self._line(f"{self._phase}: {elapsed}" + (f", {text}" if text else ""))

    def finish(self, summary: str = "") -> None:
        elapsed = format_elapsed(time.monotonic() - self._started)
        self._line(f"{self._phase}: done in {elapsed}" + (f" ({summary})" if summary else ""))

    def message(self, text: str) -> None:
        """A line that stays (on a terminal it is printed above the status line)."""
        self._line(text)

    def close(self) -> None:
        """Remove a leftover status line (e.g. after a failure)."""
        if self._status_shown:
            self._write(_CLEAR_LINE)
            self._status_shown = False

    def _line(self, text: str) -> None:
        prefix = _CLEAR_LINE if self._status_shown else ""
        self._status_shown = False
        self._write(f"{prefix}{self._prefix}: {text}\n")
        self._last_output = time.monotonic()

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
