"""Progress of a snapshot on the terminal, for `write_snapshot`'s `progress` callback.

The drawing is the image builder's status line (`pyvmm.images.progress.Progress`: one
line redrawn in place, at most five times a second), passed in by the front end: this
package imports nothing above pyvmm.errors (tests/test_layering.py). A snapshot is
a short step, so the front end shows it only on a terminal:

    line = Progress(sys.stderr, live=True, prefix="pyvmm") if sys.stderr.isatty() else None
    progress = SnapshotProgress(line) if line else None
    write_snapshot(path, parts, memory, progress)
"""

from __future__ import annotations

from typing import Protocol

MiB = 1 << 20


class StatusLine(Protocol):
    """What `SnapshotProgress` draws on (`pyvmm.images.progress.Progress` is one)."""

    def start(self, phase: str) -> None: ...

    def status(self, text: str, force: bool = False) -> None: ...

    def finish(self, summary: str = "") -> None: ...

    def close(self) -> None: ...


class SnapshotProgress:
    """A `progress(done, total)` callback: "snapshot  1.2s  96/256 MiB  37%", then
    one line "snapshot: done in 2.0s (256 MiB)" when `done` reaches `total`."""

    def __init__(self, line: StatusLine, phase: str = "snapshot") -> None:
        self._line = line
        self._phase = phase
        self._started = False
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        if not self._started:
            self._line.start(self._phase)
            self._started = True
        if self._finished:
            return
        if done >= total:
            self._finished = True
            self._line.finish(f"{total // MiB} MiB")
            return
        self._line.status(f"{done // MiB}/{total // MiB} MiB  {done * 100 // total}%")

    def close(self) -> None:
        """Remove a status line left by a snapshot that failed."""
        self._line.close()
