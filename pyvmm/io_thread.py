"""`IoThread`: the one thread per VM that runs device work, off the vCPU threads.

Devices register file descriptors (eventfds that KVM signals on a queue
notification, a resample fd, a host socket...) with a callback; the thread waits on
all of them with one `selectors` loop (epoll on Linux) and calls each callback in
the loop thread when its fd becomes readable. A callback must consume what made its
fd readable (for an eventfd, `EventFd.consume()`): the loop is level-triggered and
calls it again otherwise.

Rules that other threads can rely on:

- `register` and `unregister` work from any thread, also while the loop waits or is
  paused: they are handed to the loop (woken through its own eventfd) and return
  once applied. After `unregister(fd)` returns, that fd's callback is not running
  and will not run again, so its owner may close the fd.
- `pause()` returns once the loop is parked between callbacks: no device callback
  runs until `resume()`. That is the point where a snapshot reads device state.
  fds that become ready meanwhile are served after `resume()`: nothing is lost.
- A callback that raises does not end the thread and is not silent: its source is
  unregistered (its fd would fire again at once) and the error is reported to the
  `on_error` callback given at construction, which the machine uses to stop the VM
  with an error outcome. The other sources keep being served.
"""

from __future__ import annotations

import logging
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pyvmm.eventfd import EventFd

log = logging.getLogger(__name__)

_JOIN_SECONDS = 5.0
T = TypeVar("T")


class HasFileno(Protocol):
    def fileno(self) -> int: ...


class ErrorReport(Protocol):
    """Told about an exception raised by the callback of the source named `source`."""

    def __call__(self, source: str, error: BaseException) -> None: ...


@dataclass(eq=False)
class _Source:
    fd: int
    callback: Callable[[], None]
    name: str


@dataclass(eq=False)
class _Request:
    """A registration change waiting for the loop thread to apply it."""

    apply: Callable[[], object]
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.apply()
        except BaseException as exc:  # handed back to the thread that asked
            self.error = exc
        self.done.set()


class IoThread:
    """One `selectors` loop in one thread; see the module docstring for the rules."""

    def __init__(self, on_error: ErrorReport, name: str = "pyvmm-io") -> None:
        self.name = name
        self._on_error = on_error
        self._selector = selectors.DefaultSelector()
        self._wake = EventFd()
        self._selector.register(self._wake.fileno(), selectors.EVENT_READ, None)
        self._sources: dict[int, _Source] = {}
        # One condition guards everything below; nothing blocking runs while it is held
        # (the loop waits in select() without it, and callbacks run without it).
        self._state = threading.Condition()
        self._requests: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._running = False  # the loop thread applies requests
        self._closed = False
        self._stop_requested = False
        self._pause_requested = False
        self._parked = False
        # What the device work costs (benchmarks: how busy the I/O thread is): wall time
        # spent in callbacks, their number, and the loop thread's CPU time when it ended.
        self.busy_seconds = 0.0
        self.callbacks = 0
        self.cpu_seconds = 0.0

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        with self._state:
            if self._thread is not None or self._closed:
                raise RuntimeError(f"{self.name} runs once")
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._running = True
        self._thread.start()

    def stop(self) -> None:
        """End the loop (paused or not), wait for it, and release the selector. From a
        callback it only asks the loop to end after that callback. Idempotent."""
        with self._state:
            self._stop_requested = True
            self._state.notify_all()
        self._wake.signal()
        if self.in_loop_thread():
            return
        thread = self._thread
        if thread is not None:
            thread.join(_JOIN_SECONDS)
            if thread.is_alive():
                # A callback is stuck; its selector stays open, as it may still use it.
                log.warning("%s did not stop within %.0f s (a callback is stuck)", self.name, _JOIN_SECONDS)
                return
        with self._state:
            self._close()

    def _close(self) -> None:
        """With `_state` held, and no loop running: release the selector and the wake fd."""
        if not self._closed:
            self._closed = True
            self._sources.clear()
            self._selector.close()
            self._wake.close()

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    @property
    def running(self) -> bool:
        return self._running

    # --- sources --------------------------------------------------------------------

    def register(self, fd: int | HasFileno, callback: Callable[[], None], name: str) -> None:
        """Call `callback()` in the loop thread whenever `fd` is readable. `name`
        identifies the source in error reports."""
        number = fd if isinstance(fd, int) else fd.fileno()
        if number < 0:
            raise ValueError(f"{name}: not an open file descriptor ({number})")
        source = _Source(number, callback, name)

        def apply() -> None:
            if number in self._sources:
                raise ValueError(f"{name}: fd {number} is already registered ({self._sources[number].name})")
            self._selector.register(number, selectors.EVENT_READ, source)
            self._sources[number] = source

        def closed() -> None:
            raise RuntimeError(f"{self.name} has stopped: {name} cannot be registered")

        self._submit(apply, closed)

    def unregister(self, fd: int | HasFileno) -> bool:
        """Stop watching `fd`; False when it was not registered (e.g. dropped after its
        callback failed). A no-op once the thread has stopped."""
        number = fd if isinstance(fd, int) else fd.fileno()
        return self._submit(lambda: self._remove(number), lambda: False)

    def _remove(self, number: int) -> bool:
        if self._sources.pop(number, None) is None:
            return False
        self._selector.unregister(number)
        return True

    def _submit(self, apply: Callable[[], T], closed: Callable[[], T]) -> T:
        """Apply a registration change in the loop thread (here when the loop is not
        running or this is the loop thread) and wait for it; `closed()` once stopped."""
        with self._state:
            if self._closed:
                return closed()
            if not self._running or self.in_loop_thread():
                return apply()
            request = _Request(apply)
            self._requests.append(request)
            self._state.notify_all()  # a parked loop applies requests too
        self._wake.signal()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _apply_requests(self) -> None:
        """With `_state` held."""
        requests, self._requests = self._requests, []
        for request in requests:
            request.run()

    # --- pausing --------------------------------------------------------------------

    def pause(self, timeout: float | None = None) -> bool:
        """Return once the loop is parked and no callback runs (before `start()`: the
        loop will start parked). False when a callback did not finish within `timeout`
        seconds; the loop then still parks after it, until `resume()`. Not from a
        callback: the loop would wait for itself."""
        if self.in_loop_thread():
            raise RuntimeError(f"{self.name} cannot pause itself from a callback")
        with self._state:
            self._pause_requested = True
        self._wake.signal()
        with self._state:
            return self._state.wait_for(lambda: self._parked or not self._running, timeout)

    def resume(self) -> None:
        with self._state:
            self._pause_requested = False
            self._state.notify_all()

    @property
    def parked(self) -> bool:
        return self._parked

    # --- the loop ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            while self._turn():
                self.cpu_seconds = time.thread_time()
        except BaseException as exc:
            # Not a callback's error (those are caught below): the loop itself broke.
            log.exception("%s failed", self.name)
            self._report(self.name, exc)
        finally:
            with self._state:
                self._running = False
                self._parked = False
                self._apply_requests()  # asked meanwhile: applied here, no one waits forever
                if self._stop_requested:
                    self._close()  # also when stop() came from a callback and no one joins
                self._state.notify_all()

    def _turn(self) -> bool:
        """One wait and the callbacks it made ready; False when the loop should end."""
        with self._state:
            self._apply_requests()
            if self._pause_requested and not self._stop_requested:
                self._park()
            if self._stop_requested:
                return False
        for key, _events in self._selector.select():
            source: _Source | None = key.data
            if source is None:
                self._wake.consume()
                continue
            if self._sources.get(source.fd) is source:  # not unregistered by an earlier callback
                self._dispatch(source)
        return True

    def _park(self) -> None:
        """With `_state` held: wait until resumed or stopped, still applying requests."""
        self._parked = True
        self._state.notify_all()
        while self._pause_requested and not self._stop_requested:
            self._state.wait()
            self._apply_requests()
        self._parked = False
        self._state.notify_all()

    def _dispatch(self, source: _Source) -> None:
        started = time.perf_counter()
        try:
            source.callback()
        except Exception as exc:
            log.exception("%s: callback of %s failed; it is unregistered", self.name, source.name)
            with self._state:
                if self._sources.get(source.fd) is source:
                    self._remove(source.fd)
            self._report(source.name, exc)
        finally:
            self.busy_seconds += time.perf_counter() - started
            self.callbacks += 1

    def _report(self, source: str, error: BaseException) -> None:
        try:
            self._on_error(source, error)
        except Exception:
            log.exception("%s: the error report for %s failed", self.name, source)
