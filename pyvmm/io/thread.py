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
  once applied. After `unregister(fd)` returns True, that fd's callback is not
  running and will not run again, so its owner may close the fd. Neither waits
  for ever: a loop stuck in a callback for `SUBMIT_SECONDS` makes `register` raise
  and `unregister` return False (logged), so a stuck device cannot hang teardown.
- `pause()` returns once the loop is parked between callbacks: no device callback
  runs until `resume()`. That is the point where a snapshot reads device state.
  fds that become ready meanwhile are served after `resume()`: nothing is lost.
- A callback that raises does not end the thread and is not silent; what happens
  next is the one rule for device faults (docs/architecture.md "Device faults"):
  a source registered with a `fault` handler (every device's: a virtio device's
  is `VirtioCore.device_fault`, DEVICE_NEEDS_RESET) stays registered, the fault is
  counted in `faults` and handed to it, and the VM carries on; the handler stops
  what made the callback fail (the device is quiet until the guest resets it).
  A source without one - its failure means the VM itself is broken - is
  unregistered (its fd would fire again at once) and reported to the `on_error`
  callback given at construction, which stops the VM. So is a fault handler that
  raises. The other sources keep being served.
- `stop()` waits at most `STOP_SECONDS` for a callback to return; whether the loop
  ended is its result (teardown leaves guest memory mapped when it did not).
"""

from __future__ import annotations

import logging
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pyvmm.io.eventfd import EventFd

log = logging.getLogger(__name__)

# A callback serves one batch (64 frames, one inline disk request...): milliseconds.
# One still running after these is stuck (a write to a pipe nobody reads, a hung
# file system), and waiting longer would only make stopping late.
STOP_SECONDS = 1.0  # how long stop() waits for a running callback
SUBMIT_SECONDS = 2.0  # how long register/unregister wait for a busy loop
T = TypeVar("T")
FaultHandler = Callable[[BaseException], None]


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
    fault: FaultHandler | None


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
        self.faults = 0  # callbacks that raised and went to their fault handler

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        with self._state:
            if self._thread is not None or self._closed:
                raise RuntimeError(f"{self.name} runs once")
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._running = True
        self._thread.start()

    def stop(self) -> bool:
        """End the loop (paused or not), wait for it (at most `STOP_SECONDS`), and
        release the selector; whether no callback runs any more. From a callback it
        only asks the loop to end after that callback (and returns False). Idempotent."""
        with self._state:
            self._stop_requested = True
            self._state.notify_all()
            if self._closed:
                return True
        self._wake.signal()
        if self.in_loop_thread():
            return False
        thread = self._thread
        if thread is not None:
            thread.join(STOP_SECONDS)
            if thread.is_alive():
                # A callback is stuck; its selector stays open, as it may still use it.
                log.warning("%s did not stop within %.0f s (a callback is stuck)", self.name, STOP_SECONDS)
                return False
        with self._state:
            self._close()
        return True

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

    def register(
        self, fd: int | HasFileno, callback: Callable[[], None], name: str, fault: FaultHandler | None = None
    ) -> None:
        """Call `callback()` in the loop thread whenever `fd` is readable. `name`
        identifies the source in reports; `fault` is told when the callback raises
        (the module docstring: None means the VM is broken then)."""
        number = fd if isinstance(fd, int) else fd.fileno()
        if number < 0:
            raise ValueError(f"{name}: not an open file descriptor ({number})")
        source = _Source(number, callback, name, fault)

        def apply() -> None:
            if number in self._sources:
                raise ValueError(f"{name}: fd {number} is already registered ({self._sources[number].name})")
            self._selector.register(number, selectors.EVENT_READ, source)
            self._sources[number] = source

        def closed() -> None:
            raise RuntimeError(f"{self.name} has stopped: {name} cannot be registered")

        def stuck() -> None:
            raise RuntimeError(f"{self.name} is stuck in a callback: {name} cannot be registered")

        self._submit(apply, closed, stuck)

    def unregister(self, fd: int | HasFileno) -> bool:
        """Stop watching `fd`; False when it was not registered (e.g. dropped after its
        callback failed), or when the loop is stuck in a callback (logged: the fd is
        then still watched). A no-op once the thread has stopped."""
        number = fd if isinstance(fd, int) else fd.fileno()

        def stuck() -> bool:
            log.warning("%s is stuck in a callback: fd %d stays registered", self.name, number)
            return False

        return self._submit(lambda: self._remove(number), lambda: False, stuck)

    def _remove(self, number: int) -> bool:
        if self._sources.pop(number, None) is None:
            return False
        self._selector.unregister(number)
        return True

    def _submit(self, apply: Callable[[], T], closed: Callable[[], T], stuck: Callable[[], T]) -> T:
        """Apply a registration change in the loop thread (here when the loop is not
        running or this is the loop thread) and wait for it; `closed()` once stopped,
        `stuck()` when the loop did not get to it within `SUBMIT_SECONDS` (it is then
        withdrawn, unless the loop took it meanwhile)."""
        with self._state:
            if self._closed:
                return closed()
            if not self._running or self.in_loop_thread():
                return apply()
            request = _Request(apply)
            self._requests.append(request)
            self._state.notify_all()  # a parked loop applies requests too
        self._wake.signal()
        if not request.done.wait(SUBMIT_SECONDS):
            with self._state:
                if request in self._requests:
                    self._requests.remove(request)
                    return stuck()
            request.done.wait()  # taken by the loop just now: it is being applied
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
            self._failed(source, exc)
        finally:
            self.busy_seconds += time.perf_counter() - started
            self.callbacks += 1

    def _failed(self, source: _Source, error: Exception) -> None:
        """The one place the device-fault rule is applied (module docstring)."""
        if source.fault is not None:
            self.faults += 1
            # The handler's device says what it made of it (one line, rate-limited):
            # a line here too would log one guest fault twice.
            log.debug("%s: %s failed: %r", self.name, source.name, error)
            try:
                source.fault(error)
                return
            except Exception as handler_error:
                log.exception("%s: the fault handler of %s failed", self.name, source.name)
                error = handler_error
        else:
            log.error("%s: callback of %s failed; it is unregistered", self.name, source.name,
                      exc_info=error)  # fmt: skip
        with self._state:
            if self._sources.get(source.fd) is source:
                self._remove(source.fd)
        self._report(source.name, error)

    def _report(self, source: str, error: BaseException) -> None:
        try:
            self._on_error(source, error)
        except Exception:
            log.exception("%s: the error report for %s failed", self.name, source)
