"""virtio-blk's requests from pop to used ring: `RequestPool`, the base of
`BlockDevice` (block.py), which parses and serves each request (virtio 1.2 §5.2.6).

Threads: `notify` pops every available chain. With `workers=0` each request is
served there and then; with `workers > 0` it is queued for a pool of that many
threads that do the file I/O, so that one slow request (a flush, a cold read) does
not hold up the others or the VM's I/O thread (block.py's `WORKERS` says how many,
and why). Either way the used ring has one writer at a time (`_lock` around pop, the
status byte, add_used and needs_interrupt) and an interrupt follows
`needs_interrupt()`; `Interrupt.used_buffer` may be called from a pool thread.

Bounds, whatever the guest posts and however slow the host is:
- requests in flight (popped, not yet used): at most the queue size, because the
  queue refuses a head made available again before it was used (queue.py, virtio
  1.2 §2.7.13.1); the pool's backlog is part of that;
- a request's data is read or written in pieces of at most block.py's `IO_CHUNK`
  (1 MiB), one host call each, a discard or write-zeroes one segment (one
  fallocate) at a time, and before each piece the request checks that no reset or
  close came (the `_generation`; `_touch`);
- a reset (on the vCPU thread that wrote the status; §2.4.1: once the status reads
  0 the device MUST NOT interact with the queues) cancels the requests not
  started (never run: no file I/O, no guest RAM touched), waits for the host calls
  under way that touch guest RAM or the disk's data (one piece each; a flush's
  fdatasync touches neither and is not waited for) at most `RESET_WAIT_SECONDS`, and
  drops every completion from before it: no status byte or used entry is written
  after it returns (both are written under `_lock` with the generation checked).
  A host call stuck longer is logged once: that one piece may still land (in the
  buffers it was given, or on the disk);
- `close()` (teardown) cancels the same way, waits at most `CLOSE_WAIT_SECONDS` for
  the requests under way, and returns; the disk is closed then, or by the last such
  request when its host call returns. The pool's threads are daemon threads (not a
  `ThreadPoolExecutor`, whose threads the interpreter joins at exit, without a
  timeout): one stuck in a host call (a hung NFS server) is logged once and never
  keeps pyvmm from exiting;
- a save waits for every request to finish (`_wait_idle`, at most
  `SAVE_WAIT_SECONDS`).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from pyvmm.errors import StateError
from pyvmm.log_limit import LogLimit
from pyvmm.virtio.chain import DescriptorChain
from pyvmm.virtio.device import Activation, VirtioDevice
from pyvmm.virtio.errors import Fault, VirtqueueError
from pyvmm.virtio.queue import Virtqueue

log = logging.getLogger(__name__)

RESET_WAIT_SECONDS = 1.0  # the vCPU thread's wait for host calls under way at a reset
CLOSE_WAIT_SECONDS = 1.0  # teardown's wait for the requests under way
SAVE_WAIT_SECONDS = 10.0  # how long a save waits for the requests in flight

# What serving a request gives: where its status byte goes, the status, the used length.
RequestResult = tuple[memoryview, int, int]


class _CancelledError(Exception):
    """A reset or close came while the request was served: it stops, unanswered."""


class _Request(NamedTuple):
    """A popped request waiting for a pool thread."""

    activation: Activation
    queue: int
    virtqueue: Virtqueue
    generation: int
    chain: DescriptorChain


class RequestPool(VirtioDevice):
    """The requests of one virtio-blk device, popped by `notify` and served inline or
    on `workers` daemon threads, until each is used, cancelled by a reset or a
    close, or waited for by a save (module docstring). A subclass serves a request
    (`_serve`, calling `_touch` for each host call that touches guest RAM or the
    disk's data) and closes its disk once no request uses it (`_close_disk`)."""

    def __init__(self, *, workers: int, thread_name: str) -> None:
        self.workers = workers
        self._thread_name = thread_name  # the pool's threads are "<thread_name>_<index>"
        self._threads: list[threading.Thread] = []  # the pool, started at the first request
        self._lock = threading.Lock()  # the used ring's single writer; pops too
        self._idle = threading.Condition(self._lock)  # _in_flight or _touching fell to 0
        self._wake = threading.Condition(self._lock)  # a request was queued, or close()
        self._queued: deque[_Request] = deque()  # popped, waiting for a pool thread
        self._in_flight = 0  # popped and not finished: queued or being served
        self._touching = 0  # host calls under way that touch guest RAM or the disk's data
        self._resetting = 0  # resets waiting for _touching to fall to 0
        self._generation = 0  # bumped by reset and close: requests from before stop
        self._closed = False
        self._stuck_logged = False
        self._failures = LogLimit(log)  # bugs on pool threads, as often as the guest's requests
        self._activation: Activation | None = None
        self._negotiated = 0  # the driver's features while active, set with _activation

    @abc.abstractmethod
    def _serve(self, chain: DescriptorChain, generation: int) -> RequestResult:
        """Carry out one request whose chain has at least one writable byte;
        `_CancelledError` (from `_touch` or `_check_cancelled`) if a reset or close
        stopped it."""

    @abc.abstractmethod
    def _close_disk(self) -> None:
        """Release what the requests use; called once, when none does any more."""

    # --- VirtioDevice ------------------------------------------------------------------

    def activate(self, activation: Activation) -> None:
        with self._lock:
            self._activation = activation
            self._negotiated = activation.features

    def notify(self, queue: int) -> None:
        with self._lock:
            activation, generation = self._activation, self._generation
        if activation is None:
            return
        virtqueue = activation.queues[queue]
        while True:
            with self._lock:
                if generation != self._generation:
                    return  # reset or closed under us
                chain = virtqueue.pop()
                if chain is None:
                    break
                if chain.writable_len == 0:  # §5.2.6: no status byte, nowhere to answer
                    raise VirtqueueError(
                        Fault.BUFFER_TOO_SMALL, f"virtio-blk request {chain.head} has no status byte"
                    )
                self._in_flight += 1
                if self.workers:
                    self._queued.append(_Request(activation, queue, virtqueue, generation, chain))
                    if not self._threads:
                        self._start_workers()
                    self._wake.notify()
                    continue
            try:
                result = self._serve(chain, generation)
            except _CancelledError:
                result = None
            except BaseException:  # a bug: the I/O thread's fault handler takes it
                self._complete(virtqueue, generation, chain.head, None)
                raise
            self._complete(virtqueue, generation, chain.head, result)
        if not self.workers:
            self._signal(activation, queue, virtqueue)

    def reset(self) -> None:
        """Cancel what has not started and wait, at most `RESET_WAIT_SECONDS`, for the
        host calls under way (module docstring); completions from before are dropped."""
        with self._lock:
            self._generation += 1
            self._activation = None
            self._negotiated = 0
            self._cancel_queued()
            # The requests under way write into guest RAM the driver may reuse after
            # the reset, or into the disk it may write again: each stops after its piece.
            self._resetting += 1
            try:
                if not self._idle.wait_for(lambda: self._touching == 0, RESET_WAIT_SECONDS):
                    self._stuck("reset", self._touching)
            finally:
                self._resetting -= 1

    def close(self) -> None:
        """Teardown: cancel what has not started, wait at most `CLOSE_WAIT_SECONDS` for
        the requests under way, close the disk (or leave that to the last of them)."""
        deadline = time.monotonic() + CLOSE_WAIT_SECONDS
        with self._lock:
            self._closed = True
            self._generation += 1
            self._activation = None
            self._cancel_queued()
            self._wake.notify_all()  # idle pool threads end
            idle = self._idle.wait_for(lambda: self._in_flight == 0, CLOSE_WAIT_SECONDS)
            if not idle:
                self._stuck("close", self._in_flight)  # `_finished` closes the disk
                return
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        self._close_disk()

    def pause(self, timeout: float) -> bool:
        """The machine's pause: with the I/O thread parked nothing pops new requests,
        so waiting for those in flight to end (their used entries and interrupts out)
        leaves the pool idle until the I/O thread notifies it again."""
        with self._lock:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def _wait_idle(self, timeout: float) -> None:
        """Until no request is in flight; a `StateError` after `timeout` seconds."""
        with self._lock:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise StateError(f"{self.name}: {self._in_flight} requests still in flight after {timeout} s")

    # --- the pool ----------------------------------------------------------------------

    def _start_workers(self) -> None:
        """With the lock: the pool's threads. Daemon threads, so that one stuck in a
        host call never keeps the process from exiting (module docstring)."""
        for index in range(self.workers):
            name = f"{self._thread_name}_{index}"
            thread = threading.Thread(target=self._worker, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _worker(self) -> None:
        """A pool thread: serve queued requests until the device is closed."""
        while True:
            with self._lock:
                while not self._queued:
                    if self._closed:
                        return
                    self._wake.wait()
                request = self._queued.popleft()
            failure = self._run(request)
            # Only now: a save waiting for the requests in flight must find the
            # interrupt decided and sent, or the saved queue would hold an element
            # nobody signals (its `unsignalled`) and the driver would wait for it.
            with self._lock:
                self._finished()
            if failure is not None:  # not under our lock, nor before the request ended
                request.activation.needs_reset(failure)

    def _run(self, request: _Request) -> str | None:
        """Serve one request, publish it and maybe interrupt; a failure that is not
        the guest's (a bug: no thread to stop the VM from) is logged and returned."""
        activation, queue, virtqueue, generation, chain = request
        try:
            result = self._serve(chain, generation)
        except _CancelledError:
            return None
        except Exception as error:
            return self._failed(f"request {chain.head} failed: {error!r}")
        try:
            self._complete(virtqueue, generation, chain.head, result, finished=False)
            self._signal(activation, queue, virtqueue)
        except Exception as error:  # add_used refusing the head: a device bug
            return self._failed(f"completion of request {chain.head} failed: {error!r}")
        return None

    def _failed(self, what: str) -> str:
        """In an `except` block of a pool thread: log the bug (its traceback at debug
        level), and say what failed for DEVICE_NEEDS_RESET."""
        self._failures.log(logging.ERROR, "%s: %s", self.name, what)
        log.debug("%s: %s", self.name, what, exc_info=True)
        return what

    def _cancel_queued(self) -> None:
        """With the lock: the requests no pool thread has taken are dropped unserved."""
        cancelled = len(self._queued)
        self._queued.clear()
        self._in_flight -= cancelled
        if cancelled and self._in_flight == 0:
            self._idle.notify_all()

    def _finished(self) -> None:
        """With the lock: one request less in flight. The last one to end after a
        `close()` that gave up waiting closes the disk."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.notify_all()
            if self._closed:
                self._close_disk()

    def _stuck(self, when: str, count: int) -> None:
        """With the lock: host calls outlived the wait of a reset or close. Said once
        per device (a guest may reset over and over); later times at debug level."""
        level = logging.DEBUG if self._stuck_logged else logging.WARNING
        self._stuck_logged = True
        log.log(level, "%s: %s went on with %d requests still in a host call (the host is stuck?)",
                self.name, when, count)  # fmt: skip

    def _check_cancelled(self, generation: int) -> None:
        """`_CancelledError` if a reset or close came since the request was popped."""
        if generation != self._generation:
            raise _CancelledError

    def _touch(self, generation: int, call: Callable[..., object], *args: object) -> None:
        """One host call of a request that touches guest RAM or the disk's data, unless
        a reset or close came (`_CancelledError`); a reset waits for the ones under way."""
        with self._lock:
            self._check_cancelled(generation)
            self._touching += 1
        try:
            call(*args)
        finally:
            with self._lock:
                self._touching -= 1
                if self._touching == 0 and self._resetting:
                    self._idle.notify_all()

    # --- completion --------------------------------------------------------------------

    def _complete(
        self,
        virtqueue: Virtqueue,
        generation: int,
        head: int,
        result: RequestResult | None,
        *,
        finished: bool = True,
    ) -> None:
        """A request is done: its status and used entry go to the driver (`result` None:
        nothing does), unless a reset came; `finished`: it is no longer in flight (else
        the caller says so later)."""
        with self._lock:
            if finished:
                self._finished()
            if result is None or generation != self._generation:
                return
            status_view, status, used = result
            status_view[0] = status  # under the lock: never after a reset has returned
            try:
                virtqueue.add_used(head, used)
            except VirtqueueError as error:  # the queue broke meanwhile: it needs a reset
                log.debug("%s: completion of %d dropped: %s", self.name, head, error)

    def _signal(self, activation: Activation, queue: int, virtqueue: Virtqueue) -> None:
        with self._lock:
            if activation is not self._activation:
                return
            try:
                notify = virtqueue.needs_interrupt()
            except VirtqueueError:  # broken: see _complete
                return
        if notify:
            activation.interrupt.used_buffer(queue)
