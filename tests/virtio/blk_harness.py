"""A virtio-blk driver for tests and benchmarks: a `BlockDevice` behind a real
`VirtioCore`, its queue driven by the test `Driver` in a real `GuestMemory`, and
requests laid out as Linux's virtio_blk does (header, data, status byte; §5.2.6).

`post()` lays out one request and returns where its parts are; `run()` notifies and
waits for the used entries (the device may complete them on pool threads).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from virtio.driver import WRITE, Driver
from virtio.handshake import start
from virtio.interrupts import Interrupts

from pyvmm.memory import GuestMemory
from pyvmm.virtio.block import HEADER, BlockDevice
from pyvmm.virtio.block_file import DiskFile
from pyvmm.virtio.core import VirtioCore
from pyvmm.virtio.device import Interrupt
from pyvmm.virtio.spec import Feature

IMAGE_SIZE = 4 << 20  # the disk image of the tests' `image` fixture (conftest.py): 8192 sectors
UNWRITTEN = 0xEE  # what a status byte holds until the device writes it
RING_SIZE = 256
DATA_BASE = 0x40000


@dataclass
class Held:
    """A disk operation held back: `started` is set when a call begins, the call goes
    on once `release` is set; `calls` counts the calls begun."""

    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_calls(self, count: int, timeout: float = 5) -> None:
        """Until `count` calls have begun (they are held), or AssertionError."""
        deadline = time.monotonic() + timeout
        while self.calls < count:
            assert time.monotonic() < deadline, f"{self.calls} of {count} calls begun"
            time.sleep(0.001)


@contextmanager
def held(file: DiskFile, operation: str, seconds: float = 10) -> Iterator[Held]:
    """`file.<operation>` (flush, read_into, ...) waits for `release` (at most `seconds`),
    as on a slow disk, so that a request stays in flight on its worker; released when
    the block ends, before the device is closed."""
    hold = Held()
    real: Callable[..., None] = getattr(file, operation)

    def slow(*args: object) -> None:
        with hold._lock:
            hold.calls += 1
        hold.started.set()
        hold.release.wait(seconds)
        real(*args)

    setattr(file, operation, slow)
    try:
        yield hold
    finally:
        hold.release.set()


@dataclass
class Request:
    head: int
    data_in: int  # guest address of the device-writable data (before the status)
    in_len: int
    status_addr: int


class BlockHarness:
    """One BlockDevice, negotiated and running; `features` None accepts all offered."""

    def __init__(
        self,
        device: BlockDevice,
        memory: GuestMemory,
        *,
        indirect: bool = True,
        event_idx: bool = True,
        features: int | None = None,
        interrupts: Interrupt | None = None,
    ) -> None:
        self.device = device
        self.memory = memory
        self.interrupts = Interrupts()
        self.core = VirtioCore(device, memory, self.interrupts if interrupts is None else interrupts)
        self.indirect, self.event_idx = indirect, event_idx
        offered = self.core.offered
        if not indirect:
            offered &= ~Feature.INDIRECT_DESC
        if not event_idx:
            offered &= ~Feature.EVENT_IDX
        self.features = offered if features is None else features
        self.restart()

    def restart(self) -> None:
        """Reset the device and initialize it again on fresh rings (§3.1.1)."""
        self.core.write_status(0)
        self.driver = Driver(
            self.memory, RING_SIZE, indirect=self.indirect, event_idx=self.event_idx, data=DATA_BASE
        )
        start(self.core, self.features, [self.driver])

    def rewind(self) -> None:
        """Reuse the data area from its start (when no request is in flight)."""
        self.driver._next_data = self.driver.data

    def post_elements(self, elements: list[tuple[int, int, int]]) -> int:
        return self.driver.add_elements(elements)

    def post(
        self,
        kind: int,
        sector: int = 0,
        out: bytes = b"",
        in_len: int = 0,
        *,
        status: bool = True,
        in_split: tuple[int, ...] = (),
        status_with_data: bool = False,
    ) -> Request:
        """One request: header, `out` (device-readable), `in_len` writable bytes (cut
        into pieces of `in_split` sizes, the rest in one), then the status byte (in its
        own descriptor, or, with `status_with_data`, at the end of the last data one)."""
        alloc = self.driver.alloc
        elements = [(alloc(HEADER.size, HEADER.pack(kind, 0, sector)), HEADER.size, 0)]
        if out:
            elements.append((alloc(len(out), out), len(out), 0))
        data_in = alloc(in_len + 1)  # one area, so the test can read it back in one piece
        self.memory.fill(data_in, in_len + 1, UNWRITTEN)
        offset = 0
        pieces = [n for n in in_split if n] + ([in_len - sum(in_split)] if in_len - sum(in_split) else [])
        for i, piece in enumerate(pieces):
            extra = 1 if status_with_data and status and i == len(pieces) - 1 else 0
            elements.append((data_in + offset, piece + extra, WRITE))
            offset += piece
        status_addr = data_in + in_len
        if status and not (status_with_data and pieces):
            elements.append((status_addr, 1, WRITE))
        return Request(self.post_elements(elements), data_in, in_len, status_addr)

    def run(self, count: int | None = None, timeout: float = 10.0) -> list[tuple[int, int]]:
        """Notify the queue and wait for `count` used entries (default: all in flight)."""
        wanted = len(self.driver.chains) if count is None else count
        self.core.notify(0)
        done: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while True:
            done += self.driver.get_used()
            self.driver.enable_cb()  # as Linux's get_buf moves used_event past what it took
            if len(done) >= wanted or not self.core.active:
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)} of {wanted} requests completed")
            time.sleep(0.0005)

    def status(self, request: Request) -> int:
        return self.memory.read_u8(request.status_addr)

    def data(self, request: Request) -> bytes:
        return self.memory.read(request.data_in, request.in_len)

    def one(
        self, kind: int, sector: int = 0, out: bytes = b"", in_len: int = 0, **options: object
    ) -> tuple[int, int]:
        """Post one request, run it: (status, used length)."""
        request = self.post(kind, sector, out, in_len, **options)  # type: ignore[arg-type]
        [(head, used)] = self.run()
        assert head == request.head
        return self.status(request), used


def segments(*entries: tuple[int, int, int]) -> bytes:
    """struct virtio_blk_discard_write_zeroes entries: (sector, num_sectors, flags)."""
    return b"".join(struct.pack("<QII", *entry) for entry in entries)
