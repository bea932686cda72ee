"""A program run on a real pseudo-terminal, driven as a person at a keyboard would."""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from collections.abc import Sequence
from pathlib import Path


class Terminal:
    """`command` on a fresh pty (its stdin, stdout and stderr), started in `cwd`."""

    def __init__(self, command: Sequence[str], cwd: Path) -> None:
        self.seen = bytearray()
        self.status: int | None = None
        pid, fd = pty.fork()
        if pid == 0:  # the child
            try:
                os.chdir(cwd)
                os.execv(command[0], list(command))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd

    def expect(self, wanted: bytes, seconds: float) -> bool:
        """Read until `wanted` has appeared after what earlier calls consumed; False on
        timeout or end of output. The output up to `wanted` is consumed."""
        deadline = time.monotonic() + seconds
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.2)):
                return wanted in self.seen
        self.seen = self.seen[self.seen.index(wanted) + len(wanted) :]
        return True

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self, seconds: float) -> int | None:
        """The program's exit code, reading (and keeping) its output meanwhile; None
        on timeout."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            self._read(0.2)
        return None

    def close(self) -> None:
        """Kill the program if it is still running, and release the pty."""
        if self.status is None:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if not done:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        os.close(self.fd)

    def _read(self, seconds: float) -> bool:
        """Read what is there within `seconds`; False once the program closed its end."""
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child has closed its end
            time.sleep(0.05)
            return False
        self.seen += data
        return bool(data)
