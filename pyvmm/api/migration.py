"""QMP's `migrate` to a file: URI and `query-migrate` (QEMU's qapi/migration.json):
the machine's `snapshot(path, progress)` run as one job on its own thread, with the
MIGRATION events QEMU sends as the job moves (setup → active → completed | failed).

One job at a time, as QEMU: a second `migrate` while one runs is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pyvmm.api.controller import MachineController
from pyvmm.api.protocol import QmpError
from pyvmm.errors import VmmError

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
# the transports QEMU knows but pyvmm does not serve (docs/devel/migration)
_OTHER_TRANSPORTS = ("tcp", "unix", "exec", "fd", "rdma", "vsock")

Broadcast = Callable[[str, dict[str, object]], None]


def file_path(uri: str) -> str:
    """The path of a `file:PATH` URI; `QmpError` for any other."""
    scheme, colon, path = uri.partition(":")
    if colon and scheme in _OTHER_TRANSPORTS:
        raise QmpError(f"Migration over '{scheme}:' is not supported by pyvmm: use a file: URI")
    if not colon or scheme != "file":
        raise QmpError("Invalid URI: uri is not a valid migration protocol")
    if ",offset=" in path:
        raise QmpError("pyvmm does not support an offset in a file: migration URI")
    if not path or "\0" in path:
        raise QmpError("Invalid URI: the file: URI names no file")
    return path


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class MigrationJob:
    """The last (or running) migration's progress, read by `query-migrate`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status = "none"
        self._started = 0.0
        self._active_at = 0.0
        self._ended = 0.0
        self._done = 0
        self._total = 0
        self._error = ""
        self._thread: threading.Thread | None = None

    def start(self, controller: MachineController, uri: str, broadcast: Broadcast) -> None:
        """Check `uri`, start the job and return at once (QMP's migrate is detached)."""
        path = file_path(uri)
        with self._lock:
            if self.status in ("setup", "active"):
                raise QmpError("There's a migration process in progress")
            self.status, self._error = "setup", ""
            self._started = time.monotonic()
            self._active_at = self._ended = 0.0
            self._done = self._total = 0
        broadcast("MIGRATION", {"status": "setup"})
        self._thread = threading.Thread(
            target=self._run, args=(controller, path, broadcast), name="qmp-migrate", daemon=True
        )
        self._thread.start()

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._done, self._total = max(0, int(done)), max(0, int(total))

    def _run(self, controller: MachineController, path: str, broadcast: Broadcast) -> None:
        with self._lock:
            self.status = "active"
            self._active_at = time.monotonic()
        broadcast("MIGRATION", {"status": "active"})
        try:
            controller.snapshot(path, self._progress)
        except (VmmError, OSError) as error:
            self._end("failed", str(error) or type(error).__name__)
        except Exception as error:  # a bug in the machine's save: report, never lose the thread
            log.exception("migration to %s failed", path)
            self._end("failed", f"internal error: {error}")
        else:
            self._end("completed", "")
        broadcast("MIGRATION", {"status": self.status})

    def _end(self, status: str, error: str) -> None:
        with self._lock:
            self.status, self._error = status, error
            self._ended = time.monotonic()
            if status == "completed":
                self._done = max(self._done, self._total)

    def info(self) -> dict[str, object]:
        """QEMU's MigrationInfo: {} before any migration, as QEMU."""
        with self._lock:
            if self.status == "none":
                return {}
            now = self._ended or time.monotonic()
            info: dict[str, object] = {"status": self.status}
            if self.status == "failed":
                info["error-desc"] = self._error
                return info
            info["total-time"] = _ms(now - self._started)
            if self._active_at:
                info["setup-time"] = _ms(self._active_at - self._started)
            if self.status == "completed":
                info["downtime"] = _ms(now - self._active_at) if self._active_at else 0
            elif self.status == "active":
                info["expected-downtime"] = 0
            info["ram"] = self._ram(now)
            return info

    def _ram(self, now: float) -> dict[str, object]:
        """MigrationStats: the snapshot's bytes as RAM, pyvmm moves no pages one by one."""
        elapsed = max(now - (self._active_at or self._started), 1e-6)
        return {
            "transferred": self._done,
            "remaining": max(self._total - self._done, 0),
            "total": self._total,
            "duplicate": 0,
            "normal": self._done // PAGE_SIZE,
            "normal-bytes": self._done,
            "dirty-pages-rate": 0,
            "mbps": self._done * 8 / elapsed / 1e6,
            "dirty-sync-count": 1 if self._done else 0,
            "postcopy-requests": 0,
            "page-size": PAGE_SIZE,
            "multifd-bytes": 0,
            "pages-per-second": int(self._done / PAGE_SIZE / elapsed),
            "precopy-bytes": self._done,
            "downtime-bytes": 0,
            "postcopy-bytes": 0,
            "dirty-sync-missed-zero-copy": 0,
        }

    def wait(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
