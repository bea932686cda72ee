"""virtio-blk under a driver that does not wait and a host that is slow: requests in
flight stay bounded by the queue size (virtio 1.2 §2.7.13.1), and a reset (§2.4) or a
close cancels what has not started, waits a bounded time for what has, and never
lets a cancelled request touch the file or guest RAM. Real files, a real GuestMemory,
the test driver's rings; a slow disk is `blk_harness.held`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from virtio.blk_harness import RING_SIZE, UNWRITTEN, BlockHarness, Request, held

from pyvmm.device_config import DiskConfig
from pyvmm.memory import GuestMemory
from pyvmm.virtio import DeviceStatus
from pyvmm.virtio.block import IO_CHUNK, S_OK, T_FLUSH, T_IN, T_OUT, BlockDevice
from pyvmm.virtio.block_pool import CLOSE_WAIT_SECONDS, RESET_WAIT_SECONDS

MiB = 1 << 20
NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)
TESTS = Path(__file__).resolve().parent.parent


def make(ram: GuestMemory, path: Path, workers: int) -> BlockHarness:
    return BlockHarness(BlockDevice(DiskConfig(str(path)), workers=workers), ram)


@pytest.fixture
def closing_list() -> Iterator[list[BlockHarness]]:
    """Harnesses whose devices are closed at the end, after every hold is released."""
    harnesses: list[BlockHarness] = []
    yield harnesses
    for harness in harnesses:
        harness.device.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def untouched(harness: BlockHarness, requests: list[Request]) -> bool:
    """No byte of these requests' writable buffers (data and status) was written."""
    return all(
        harness.memory.read(r.data_in, r.in_len + 1) == bytes([UNWRITTEN]) * (r.in_len + 1) for r in requests
    )


# --- in flight: never more than the queue holds ---------------------------------------------


def test_a_driver_reposting_heads_in_flight_gets_a_device_reset_not_more_work(
    ram: GuestMemory, image: Path, closing_list: list[BlockHarness]
) -> None:
    """The issue's driver: it makes the same heads available again and again without
    waiting for their completions. A full ring of reads is in flight on a slow disk;
    the first head posted again is a ring fault: DEVICE_NEEDS_RESET, and the device
    holds no more than the ring's 256 requests."""
    harness = make(ram, image, workers=2)
    closing_list.append(harness)
    with held(harness.device.file, "read_into") as slow:
        requests = [harness.post(T_IN, i, in_len=512) for i in range(RING_SIZE)]
        harness.core.notify(0)
        slow.wait_calls(2)
        assert harness.device._in_flight == RING_SIZE
        for round_ in range(4 * RING_SIZE):
            harness.driver.publish(requests[round_ % RING_SIZE].head)
            harness.core.notify(0)
            assert harness.device._in_flight <= RING_SIZE
        assert harness.core.status & NEEDS_RESET and not harness.core.active
        assert harness.core.queues[0].in_flight() == RING_SIZE
    wait_for(lambda: harness.device._in_flight == 0, "the reads in flight end")
    assert untouched(harness, requests) is False  # they were served (the driver may reset)


# --- reset -------------------------------------------------------------------------------------


def test_a_reset_cancels_what_has_not_started_and_does_not_wait_for_a_flush(
    ram: GuestMemory, image: Path, closing_list: list[BlockHarness]
) -> None:
    """One worker is in a slow fdatasync (it touches neither guest RAM nor the data);
    100 writes and 100 reads wait behind it. The reset returns at once; none of them
    ever runs, and the flush, when it returns, answers nothing."""
    harness = make(ram, image, workers=1)
    closing_list.append(harness)
    before = image.read_bytes()
    with held(harness.device.file, "flush", seconds=30) as slow:
        flush = harness.post(T_FLUSH)
        harness.core.notify(0)
        slow.wait_calls(1)
        waiting = [harness.post(T_OUT, 8 * i, out=os.urandom(4096)) for i in range(100)]
        waiting += [harness.post(T_IN, 8 * i, in_len=4096) for i in range(100)]
        harness.core.notify(0)
        start = time.monotonic()
        harness.core.write_status(0)
        assert time.monotonic() - start < 0.5
        assert harness.device._in_flight == 1  # the flush; the others were cancelled
        slow.release.set()
        wait_for(lambda: harness.device._in_flight == 0, "the flush ends")
    assert image.read_bytes() == before
    assert untouched(harness, [flush, *waiting]) and harness.driver.used_idx() == 0
    assert harness.interrupts.used == []


@pytest.mark.parametrize("workers", [0, 1])
def test_a_reset_waits_for_the_piece_under_way_and_no_more(
    ram: GuestMemory, image: Path, workers: int, closing_list: list[BlockHarness]
) -> None:
    """A 4 MiB read is read in 1 MiB pieces. A reset during the first waits for that
    piece (it writes into guest RAM the driver may reuse after the reset), then the
    request stops: the other three are never read and nothing is answered."""
    harness = make(ram, image, workers)
    closing_list.append(harness)
    with held(harness.device.file, "read_into") as slow:
        request = harness.post(T_IN, 0, in_len=4 * MiB)
        notifier = threading.Thread(target=harness.core.notify, args=(0,))
        notifier.start()
        slow.wait_calls(1)
        resetter = threading.Thread(target=harness.core.write_status, args=(0,))
        resetter.start()
        resetter.join(0.3)
        assert resetter.is_alive()  # waiting for the piece
        slow.release.set()
        resetter.join(5)
        notifier.join(5)
        assert not resetter.is_alive() and not notifier.is_alive()
        wait_for(lambda: harness.device._in_flight == 0, "the read ends")
    assert slow.calls == 1
    data = harness.memory.read(request.data_in, 4 * MiB + 1)
    assert data[:IO_CHUNK] == image.read_bytes()[:IO_CHUNK]
    assert data[IO_CHUNK:] == bytes([UNWRITTEN]) * (3 * MiB + 1)  # the rest and the status
    assert harness.driver.used_idx() == 0


def test_a_reset_gives_up_on_a_host_call_stuck_longer(
    ram: GuestMemory, image: Path, caplog: pytest.LogCaptureFixture, closing_list: list[BlockHarness]
) -> None:
    """A read stuck in the host (a hung file system): the vCPU thread's reset waits
    RESET_WAIT_SECONDS, says so once, and returns; so does the next reset."""
    caplog.set_level(logging.DEBUG, "pyvmm.virtio.block_pool")
    harness = make(ram, image, workers=1)
    closing_list.append(harness)
    with held(harness.device.file, "read_into", seconds=30) as slow:
        harness.post(T_IN, 0, in_len=4096)
        harness.core.notify(0)
        slow.wait_calls(1)
        for _ in range(2):
            start = time.monotonic()
            harness.core.write_status(0)
            assert RESET_WAIT_SECONDS - 0.1 < time.monotonic() - start < RESET_WAIT_SECONDS + 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "reset went on with 1 requests still in a host call" in warnings[0].message
        slow.release.set()
        wait_for(lambda: harness.device._in_flight == 0, "the read ends")
    assert harness.driver.used_idx() == 0


def test_large_requests_move_at_most_one_piece_per_host_call(
    ram: GuestMemory, image: Path, closing_list: list[BlockHarness]
) -> None:
    """Each host call of a request moves at most IO_CHUNK bytes, whatever the framing
    (buffers cut across pieces), and the data is the same as in one call."""
    harness = make(ram, image, workers=2)
    closing_list.append(harness)
    sizes: list[int] = []
    file = harness.device.file
    for name in ("read_into", "write_from"):
        real = getattr(file, name)

        def counted(offset: int, views: list[memoryview], real: Callable[..., None] = real) -> None:
            sizes.append(sum(len(view) for view in views))
            real(offset, views)

        setattr(file, name, counted)
    data = os.urandom(3 * MiB - 4096)
    out = harness.post(T_OUT, 100, out=data)
    assert harness.run() == [(out.head, 1)] and harness.status(out) == S_OK
    read = harness.post(T_IN, 100, in_len=len(data), in_split=(4096, MiB - 1024, 7 * 512))
    assert harness.run() == [(read.head, len(data) + 1)] and harness.status(read) == S_OK
    assert harness.data(read) == data == image.read_bytes()[100 * 512 : 100 * 512 + len(data)]
    assert sizes == [MiB, MiB, MiB - 4096] * 2


# --- close (teardown) --------------------------------------------------------------------------


def test_close_with_a_full_queue_cancels_it_and_returns_in_bounded_time(
    ram: GuestMemory, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both workers in a slow fdatasync, 200 writes waiting: close() cancels the writes
    (the file keeps its bytes), waits CLOSE_WAIT_SECONDS for the flushes, says so once
    and returns; the disk is closed when the last flush comes back."""
    caplog.set_level(logging.WARNING, "pyvmm.virtio.block_pool")
    harness = make(ram, image, workers=2)
    before = image.read_bytes()
    with held(harness.device.file, "flush", seconds=30) as slow:
        harness.post(T_FLUSH)
        harness.post(T_FLUSH)
        writes = [harness.post(T_OUT, 8 * i, out=os.urandom(4096)) for i in range(200)]
        harness.core.notify(0)
        slow.wait_calls(2)
        start = time.monotonic()
        harness.device.close()
        assert time.monotonic() - start < CLOSE_WAIT_SECONDS + 1
        assert not harness.device.file.closed  # two requests still use it
        slow.release.set()
        wait_for(lambda: harness.device.file.closed, "the last flush closes the disk")
    assert [r.message for r in caplog.records] == [
        f"{harness.device.name}: close went on with 2 requests still in a host call (the host is stuck?)"
    ]
    assert image.read_bytes() == before and untouched(harness, writes)
    for thread in harness.device._threads:
        thread.join(5)
        assert not thread.is_alive()


def test_pyvmm_exits_with_a_worker_stuck_in_a_host_call(image: Path) -> None:
    """A disk read that never returns (a hung NFS server) does not keep the process
    alive after close(): nothing joins a pool thread without a bound at exit."""
    script = textwrap.dedent(
        f"""
        import sys, threading
        sys.path.insert(0, {str(TESTS)!r})
        from virtio.blk_harness import BlockHarness
        from pyvmm.device_config import DiskConfig
        from pyvmm.memory import GuestMemory
        from pyvmm.virtio.block import T_IN, BlockDevice

        ram = GuestMemory([(0, 16 << 20)])
        harness = BlockHarness(BlockDevice(DiskConfig({str(image)!r}), workers=2), ram)
        entered = threading.Event()

        def stuck(*args):
            entered.set()
            threading.Event().wait()

        harness.device.file.read_into = stuck
        harness.post(T_IN, 0, in_len=4096)
        harness.core.notify(0)
        assert entered.wait(10)
        harness.device.close()
        print("closed", flush=True)
        """
    )
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit with a block worker stuck in a host call")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "closed\n" and time.monotonic() - start < 20


def test_a_request_failing_on_a_pool_thread_puts_the_device_in_needs_reset(
    ram: GuestMemory, image: Path, caplog: pytest.LogCaptureFixture, closing_list: list[BlockHarness]
) -> None:
    """A bug while serving (not the guest's fault, no I/O thread to report it): the
    device needs a reset, rather than leaving the driver waiting for an answer."""
    caplog.set_level(logging.ERROR, "pyvmm.virtio.block_pool")
    harness = make(ram, image, workers=1)
    closing_list.append(harness)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    harness.device.file.read_into = broken  # type: ignore[method-assign]
    harness.post(T_IN, 0, in_len=512)
    harness.core.notify(0)
    wait_for(lambda: bool(harness.core.status & NEEDS_RESET), "DEVICE_NEEDS_RESET")
    assert harness.interrupts.config == 1 and harness.driver.used_idx() == 0
    assert "request 0 failed: RuntimeError('a bug')" in caplog.text
    del harness.device.file.read_into  # the bug fixed; the driver resets the device
    harness.restart()
    assert harness.one(T_IN, 0, in_len=512) == (S_OK, 513)


# --- the machine's pause ---------------------------------------------------------------------


def test_a_pause_waits_for_the_requests_in_flight_to_be_answered(
    ram: GuestMemory, image: Path, closing_list: list[BlockHarness]
) -> None:
    """With the I/O thread parked no request starts; a pause returns once those in
    flight are answered (used entries and interrupts out), so nothing touches guest
    RAM or the ring while the machine is paused. A host call that outlives the pause's
    timeout makes it fail (the machine then runs on), and it goes through afterwards."""
    harness = make(ram, image, workers=2)
    closing_list.append(harness)
    with held(harness.device.file, "read_into") as slow:
        requests = [harness.post(T_IN, i, in_len=512) for i in range(4)]
        harness.core.notify(0)
        slow.wait_calls(2)
        assert not harness.core.pause(0.2)  # held in the host call
        assert harness.driver.used_idx() == 0
        slow.release.set()
        assert harness.core.pause(10)
        assert harness.driver.used_idx() == 4  # all answered before the pause returned
        used_then = harness.memory.read(requests[0].data_in, 512)
    harness.core.resume()
    assert harness.memory.read(requests[0].data_in, 512) == used_then
