"""Run a build as named phases: long commands log to a file, the user sees progress.

Every command's output (stdout and stderr together) goes to the build log, never
to the terminal; the display shows the phase, the elapsed time and a count of
output lines (or of the lines matching `count`, e.g. the compiled objects). A
failing command raises `ImageBuildError` naming the phase and the log.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from pyvmm.images.errors import ImageBuildError
from pyvmm.images.progress import Progress

_POLL_LIVE = 0.2
_POLL_PLAIN = 1.0


class _OutputPump(threading.Thread):
    """Copies a command's output to the log, counting lines as they pass."""

    def __init__(self, source: IO[bytes], log: BinaryIO, count: re.Pattern[bytes] | None) -> None:
        super().__init__(daemon=True, name="pyvmm-images-log")
        self._source = source
        self._log = log
        self._count = count
        self.lines = 0
        self.matched = 0
        self.last = b""

    def run(self) -> None:
        for line in iter(self._source.readline, b""):
            self._log.write(line)
            self.lines += 1
            if self._count is not None and self._count.search(line):
                self.matched += 1
                self.last = line.strip()
        self._log.flush()


class Steps:
    """The phases of one build, its log file and its progress display."""

    def __init__(self, progress: Progress, log: Path) -> None:
        self.progress = progress
        self.log = log
        self._log_file: BinaryIO | None = None
        self._phase = "setup"

    @property
    def phase_name(self) -> str:
        return self._phase

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A named phase: announced, timed, and named by any error raised inside."""
        self._phase = name
        self._write_log(f"==> {name}\n")
        self.progress.start(name)
        try:
            yield
        except ImageBuildError:
            self.progress.close()
            raise
        except OSError as exc:
            self.progress.close()
            raise ImageBuildError(name, str(exc), self.log) from exc
        self.progress.finish()

    def note(self, text: str) -> None:
        self._write_log(f"--- {text}\n")
        self.progress.status(text, force=True)

    def report(self, text: str) -> None:
        """A result the user should see after the build (stays on screen)."""
        self._write_log(f"--- {text}\n")
        self.progress.message(f"{self._phase}: {text}")

    def fail(self, message: str) -> ImageBuildError:
        self._write_log(f"!!! {message}\n")
        return ImageBuildError(self._phase, message, self.log)

    def run(self, cmd: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
            count: str | None = None, unit: str = "lines") -> int:
        """Run `cmd` to completion with its output in the log; returns the number of
        output lines matching `count` (or of all lines). Raises on a non-zero exit."""
        log = self._open_log()
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        pattern = re.compile(count.encode()) if count is not None else None
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        try:
            process = subprocess.Popen(
                cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise self.fail(f"cannot run {cmd[0]}: {exc.strerror}") from exc
        assert process.stdout is not None
        pump = _OutputPump(process.stdout, log, pattern)
        pump.start()
        poll = _POLL_LIVE if self.progress.live else _POLL_PLAIN
        started = time.monotonic()
        try:
            while True:
                try:
                    status = process.wait(timeout=poll)
                    break
                except subprocess.TimeoutExpired:
                    self.progress.status(self._describe(pump, pattern is not None, unit))
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            pump.join()
        seconds = time.monotonic() - started
        log.write(f"[exit status {status} after {seconds:.1f}s]\n".encode())
        log.flush()
        if status != 0:
            shown = shlex.join(cmd[:3]) + (" ..." if len(cmd) > 3 else "")
            raise self.fail(f"{shown} exited with status {status}")
        return pump.matched if pattern is not None else pump.lines

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _describe(pump: _OutputPump, counting: bool, unit: str) -> str:
        if not counting:
            return f"{pump.lines} {unit}" if pump.lines else ""
        last = pump.last.decode(errors="replace")
        return f"{pump.matched} {unit}" + (f"  {last}" if last else "")

    def _open_log(self) -> BinaryIO:
        if self._log_file is None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log, "wb")  # noqa: SIM115 - kept open across phases
        return self._log_file

    def _write_log(self, text: str) -> None:
        log = self._open_log()
        log.write(text.encode())
        log.flush()
