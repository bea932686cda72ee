"""virtio-blk, device side (virtio 1.2 §5.2), on a raw image (block_file.py).

One request queue. Each chain is a request (§5.2.6): a 16-byte device-readable
header (type, reserved, sector), then the data (device-readable for writes,
device-writable for reads), then one device-writable status byte, the last byte of
the chain. Framing is not assumed (§2.7.4.1): the header may span descriptors and
the status byte may share one with the data.

What the guest gets:
- IN / OUT: the data length must be a multiple of 512 and the range inside the
  capacity, else VIRTIO_BLK_S_IOERR (nothing is read or written); OUT on a readonly
  disk is IOERR (§5.2.6.2) and the file is untouched;
- FLUSH: fdatasync; OK only once it has returned;
- GET_ID: the serial, zero-padded to 20 bytes (cut to the buffer);
- DISCARD / WRITE_ZEROES (offered only where the file system punches holes):
  every segment is checked before any is applied; an unknown flag, or UNMAP on a
  discard, is UNSUPP (§5.2.6.2); a range too long or outside the disk is IOERR;
- any other type is UNSUPP; a header shorter than 16 bytes is IOERR; a chain with no
  writable byte for the status has nowhere to answer and is a `VirtqueueError`
  (the device then needs a reset, §2.1.2);
- a host I/O error (EIO, ENOSPC, EFBIG...) is IOERR and the device carries on.
The used length is the bytes written into the driver's buffers, status byte included.

Threads: `notify` pops every available chain. With `workers=0` each request is
served there and then; with `workers > 0` (default 2) it is queued for a pool of
that many threads that do the file I/O, so that one slow request (a flush, a cold
read) does not hold up the others or the VM's I/O thread. Either way the used ring
has one writer at a time (`_lock` around pop, the status byte, add_used and
needs_interrupt) and an interrupt follows `needs_interrupt()`;
`Interrupt.used_buffer` may be called from a pool thread.

Bounds, whatever the guest posts and however slow the host is:
- requests in flight (popped, not yet used): at most the queue size, because the
  queue refuses a head made available again before it was used (queue.py, virtio
  1.2 §2.7.13.1); the pool's backlog is part of that;
- a request's data is read or written in pieces of at most `IO_CHUNK` (1 MiB), one
  host call each, a discard or write-zeroes one segment (one fallocate) at a time,
  and before each piece the request checks that no reset or close came (the
  `_generation`);
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
- `save()` waits for every request to finish (at most `SAVE_WAIT_SECONDS`).

Why a pool of 2 (benchmarks/virtio_blk_requests.py, a driver posting flat out on a
page-cached image, 2 cores): inline, the I/O thread is inside notify 46-74% of the
time for 4 KiB and 1 MiB reads and writes, and 83-99% for flushes (fdatasync blocks
it); with 2 workers 23-32% for 4 KiB, 3-10% for 1 MiB, 8-11% for flushes. A 4 KiB
request costs about 12-13 µs of device CPU inline and 16-18 µs with the pool (the
host's preadv alone: 2-4 µs); more workers do not help under the GIL.
"""

from __future__ import annotations

import errno
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from pyvmm.device_config import SERIAL_MAX, DiskConfig
from pyvmm.devices.state_checks import check_type, fail
from pyvmm.errors import StateError
from pyvmm.log_limit import LogLimit
from pyvmm.virtio.block_file import DiskFile, chunks, skip_bytes
from pyvmm.virtio.chain import DescriptorChain
from pyvmm.virtio.device import Activation, DeviceType, VirtioDevice
from pyvmm.virtio.device_state import BlockState
from pyvmm.virtio.errors import Fault, VirtqueueError
from pyvmm.virtio.queue import Virtqueue

log = logging.getLogger(__name__)

SECTOR = 512  # §5.2.4: capacity and sector numbers are in 512-byte units

# Feature bits (§5.2.3), as masks.
F_SIZE_MAX = 1 << 1
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_TOPOLOGY = 1 << 10
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

# Request types (§5.2.6).
T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13

# Status values (§5.2.6).
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2

ID_BYTES = 20  # §5.2.6: VIRTIO_BLK_ID_BYTES
assert ID_BYTES == SERIAL_MAX
WRITE_ZEROES_FLAG_UNMAP = 1  # §5.2.6: struct virtio_blk_discard_write_zeroes.flags

HEADER = struct.Struct("<IIQ")  # struct virtio_blk_req: type, reserved, sector
SEGMENT = struct.Struct("<QII")  # struct virtio_blk_discard_write_zeroes
# struct virtio_blk_config (§5.2.4) up to write_zeroes_may_unmap and its padding:
# capacity, size_max, seg_max, geometry (cylinders, heads, sectors), blk_size,
# topology (physical_block_exp, alignment_offset, min_io_size, opt_io_size),
# writeback, unused0, num_queues, max_discard_sectors, max_discard_seg,
# discard_sector_alignment, max_write_zeroes_sectors, max_write_zeroes_seg,
# write_zeroes_may_unmap, unused1[3].
CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
assert CONFIG.size == 60

QUEUE_SIZE = 256
SIZE_MAX = 1 << 20  # the largest single buffer Linux will put in a request
BLOCK_SIZE = 512  # the logical block: partition tables of 512-sector images keep working
PHYSICAL_BLOCK_EXP = 3  # 4 KiB physical blocks (2**3 logical ones): page-sized I/O
# Discard and write-zeroes limits: 1 GiB per segment keeps one fallocate short; a
# segment list is at most 32 * 16 bytes, read through a bounded copy.
MAX_DISCARD_SECTORS = (1 << 30) // SECTOR
MAX_DISCARD_SEG = 32
DISCARD_ALIGNMENT = 4096 // SECTOR
_REQUEST_IO_ERRORS = (errno.EIO, errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)
# The most one host call of a request reads or writes (module docstring: what a reset
# waits for). A page-cached MiB moves in about 0.1 ms, a disk's in a few ms; a request
# up to this size still takes one call, cut nowhere.
IO_CHUNK = SIZE_MAX
RESET_WAIT_SECONDS = 1.0  # the vCPU thread's wait for host calls under way at a reset
CLOSE_WAIT_SECONDS = 1.0  # teardown's wait for the requests under way
SAVE_WAIT_SECONDS = 10.0  # how long save() waits for the requests in flight
WORKERS = 2  # the file-I/O pool's size (module docstring: measured)


class _CancelledError(Exception):
    """A reset or close came while the request was served: it stops, unanswered."""


class _Request(NamedTuple):
    """A popped request waiting for a pool thread."""

    activation: Activation
    queue: int
    virtqueue: Virtqueue
    generation: int
    chain: DescriptorChain


# What serving a request gives: where its status byte goes, the status, the used length.
_Result = tuple[memoryview, int, int]


def _pieces(views: list[memoryview], length: int) -> Iterable[tuple[int, list[memoryview]]]:
    """A request's `length` bytes of data as pieces of at most `IO_CHUNK` bytes with
    their offsets; one piece without cutting anything for most requests."""
    return ((0, views),) if length <= IO_CHUNK else chunks(views, IO_CHUNK)


class BlockDevice(VirtioDevice):
    """One virtio-blk disk on `disk.path`.

    `BlockDevice(disk, workers=N)`: the image is opened and locked here (a
    `DiskImageError` for a missing, wrong or locked image), so a bad --disk fails
    before the VM starts. `workers` is the size of the file-I/O thread pool (0: all
    I/O on the thread that calls `notify`; see the module docstring for the default).
    """

    device_type = DeviceType.BLOCK

    def __init__(self, disk: DiskConfig, *, workers: int = WORKERS, queue_size: int = QUEUE_SIZE) -> None:
        self.disk = disk
        self.name = f"virtio-blk {disk.path}"
        self.file = DiskFile(disk.path, disk.readonly)
        self.capacity = self.file.size // SECTOR  # a partial last sector is not exposed
        self._queue_size = queue_size
        self.serial = (disk.serial or "").encode().ljust(ID_BYTES, b"\0")
        features = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY
        if disk.readonly:
            features |= F_RO
        elif self.file.punch_holes:
            features |= F_DISCARD | F_WRITE_ZEROES
        self._features = features
        self._config = CONFIG.pack(
            self.capacity,
            SIZE_MAX,
            queue_size - 2,  # seg_max: the data buffers beside header and status
            0, 0, 0,  # geometry: not offered
            BLOCK_SIZE,
            PHYSICAL_BLOCK_EXP, 0, 1 << PHYSICAL_BLOCK_EXP, 0,  # min_io_size in blocks
            0, 0, 0,  # writeback, unused0, num_queues: CONFIG_WCE and MQ not offered
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, DISCARD_ALIGNMENT,
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1,  # write zeroes may unmap
        )  # fmt: skip
        self.workers = workers
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
        self._warnings = LogLimit(log)  # the guest decides how often requests fail
        self._activation: Activation | None = None
        self._negotiated = 0

    # --- VirtioDevice ------------------------------------------------------------------

    @property
    def queue_sizes(self) -> Sequence[int]:
        return (self._queue_size,)

    def device_features(self) -> int:
        return self._features

    def config(self) -> bytes:
        return self._config

    def write_config(self, offset: int, data: bytes) -> None:
        pass  # every field is read-only without CONFIG_WCE

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
        self.file.close()

    # --- saved state (device_state.py) ----------------------------------------------------

    def save(self, *, timeout: float = SAVE_WAIT_SECONDS) -> BlockState:
        """What the guest knows of the disk, once no request is in flight.

        The VMM pauses the vCPUs and the I/O thread first, so no request starts; those
        the worker pool still serves are waited for (up to `timeout` seconds), because a
        saved queue cannot hold a request half done: it is either in the used ring or
        still available. Their data reaches the file before save returns (a snapshot of
        the file taken then is consistent with the saved queue). A pool stuck longer
        (a hung NFS server) is a `StateError`, not a snapshot that loses requests."""
        with self._lock:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise StateError(f"{self.name}: {self._in_flight} requests still in flight after {timeout} s")
            return BlockState(self.capacity, self._features, self.serial)

    def restore(self, state: object) -> None:
        """The disk opened again must be the one the guest saw: same capacity, same
        offered features (readonly, discard), same serial. Else `StateError`."""
        checked = check_type(self.name, state, BlockState)
        mine = BlockState(self.capacity, self._features, self.serial)
        for field in ("capacity", "features", "serial"):
            saved, current = getattr(checked, field), getattr(mine, field)
            if type(saved) is not type(current) or saved != current:
                raise fail(self.name, f"{field} {saved!r:.40} is not this disk's {current!r:.40}")

    # --- the pool ----------------------------------------------------------------------

    def _start_workers(self) -> None:
        """With the lock: the pool's threads. Daemon threads, so that one stuck in a
        host call never keeps the process from exiting (module docstring)."""
        for index in range(self.workers):
            name = f"pyvmm-blk-{self.disk.path}_{index}"
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
        self._warnings.log(logging.ERROR, "%s: %s", self.name, what)
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
                self.file.close()

    def _stuck(self, when: str, count: int) -> None:
        """With the lock: host calls outlived the wait of a reset or close. Said once
        per device (a guest may reset over and over); later times at debug level."""
        level = logging.DEBUG if self._stuck_logged else logging.WARNING
        self._stuck_logged = True
        log.log(level, "%s: %s went on with %d requests still in a host call (the host is stuck?)",
                self.name, when, count)  # fmt: skip

    def _touch(self, generation: int, call: Callable[..., object], *args: object) -> None:
        """One host call of a request that touches guest RAM or the disk's data, unless
        a reset or close came (`_CancelledError`); a reset waits for the ones under way."""
        with self._lock:
            if generation != self._generation:
                raise _CancelledError
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
        result: _Result | None,
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

    # --- requests (§5.2.6) -----------------------------------------------------------------

    def _serve(self, chain: DescriptorChain, generation: int) -> _Result:
        """Carry out one request whose chain has at least one writable byte: where its
        status byte is (the chain's last writable byte), the status, the used length.
        `_CancelledError` if a reset or close stopped it."""
        writable = chain.writable
        last = writable[-1]
        status_view = last[len(last) - 1 :] if len(last) else None
        if status_view is None:  # the last buffer is empty: find the last byte before it
            writable = [view for view in writable if len(view)]
            last = writable[-1]
            status_view = last[len(last) - 1 :]
        data_in = writable[:-1] + ([last[: len(last) - 1]] if len(last) > 1 else [])
        data_in_len = chain.writable_len - 1
        written = 0
        if chain.readable_len < HEADER.size:
            status = S_IOERR  # §5.2.6: the header is device-readable, all 16 bytes of it
        else:
            kind, _reserved, sector = HEADER.unpack(chain.read(0, HEADER.size))
            try:
                status, written = self._dispatch(kind, sector, chain, data_in, data_in_len, generation)
            except OSError as exc:
                if exc.errno not in _REQUEST_IO_ERRORS:
                    self._warnings.warning("%s: request type %d: %s", self.name, kind, exc)
                status, written = S_IOERR, 0
        return status_view, status, written + 1

    def _dispatch(
        self,
        kind: int,
        sector: int,
        chain: DescriptorChain,
        data_in: list[memoryview],
        data_in_len: int,
        generation: int,
    ) -> tuple[int, int]:
        """(status, bytes written into data_in) of one request."""
        if kind == T_IN:
            if not self._in_range(sector, data_in_len):
                return S_IOERR, 0
            for offset, views in _pieces(data_in, data_in_len):
                self._touch(generation, self.file.read_into, sector * SECTOR + offset, views)
            return S_OK, data_in_len
        if kind == T_OUT:
            length = chain.readable_len - HEADER.size
            if self.disk.readonly or not self._in_range(sector, length):
                return S_IOERR, 0
            for offset, views in _pieces(skip_bytes(chain.readable, HEADER.size), length):
                self._touch(generation, self.file.write_from, sector * SECTOR + offset, views)
            return S_OK, 0
        if kind == T_FLUSH:
            if generation != self._generation:
                raise _CancelledError
            self.file.flush()  # touches neither guest RAM nor data: a reset does not wait
            return S_OK, 0
        if kind == T_GET_ID:
            count = min(ID_BYTES, data_in_len)
            if count:
                self._touch(generation, chain.write, self.serial[:count])
            return S_OK, count
        if kind in (T_DISCARD, T_WRITE_ZEROES):
            return self._discard_or_zero(kind, chain, generation), 0
        return S_UNSUPP, 0

    def _in_range(self, sector: int, length: int) -> bool:
        """A data length in whole sectors, all of them inside the disk (§5.2.6.2)."""
        return length % SECTOR == 0 and sector + length // SECTOR <= self.capacity

    def _discard_or_zero(self, kind: int, chain: DescriptorChain, generation: int) -> int:
        feature = F_DISCARD if kind == T_DISCARD else F_WRITE_ZEROES
        if not self._features & self._negotiated & feature:
            return S_UNSUPP
        payload = chain.readable_len - HEADER.size
        if payload == 0 or payload % SEGMENT.size or payload // SEGMENT.size > MAX_DISCARD_SEG:
            return S_IOERR
        data = chain.read(HEADER.size, payload)  # at most 512 bytes: checked above
        segments = list(SEGMENT.iter_unpack(data))
        # §5.2.6.2: every segment is checked before any is carried out.
        for sector, count, flags in segments:
            if flags & ~WRITE_ZEROES_FLAG_UNMAP or (kind == T_DISCARD and flags):
                return S_UNSUPP
            if count > MAX_DISCARD_SECTORS or sector + count > self.capacity:
                return S_IOERR
        for sector, count, flags in segments:
            if count == 0:
                continue
            if kind == T_DISCARD:
                self._touch(generation, self.file.discard, sector * SECTOR, count * SECTOR)
            else:
                unmap = bool(flags & WRITE_ZEROES_FLAG_UNMAP)
                self._touch(generation, self.file.write_zeroes, sector * SECTOR, count * SECTOR, unmap)
        return S_OK
