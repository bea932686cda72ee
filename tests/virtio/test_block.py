"""virtio-blk (virtio 1.2 §5.2) through a VirtioCore, with the test driver's rings in a
real GuestMemory and real image files: what the guest reads and writes reaches the
file, what it may not do gets the status the spec defines, and the image is locked."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from virtio.blk_harness import IMAGE_SIZE, UNWRITTEN, BlockHarness, held, segments
from virtio.driver import WRITE

from pyvmm.device_config import DiskConfig
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory
from pyvmm.virtio import DeviceStatus, VirtqueueError
from pyvmm.virtio.block import (
    CONFIG,
    F_DISCARD,
    F_FLUSH,
    F_RO,
    F_WRITE_ZEROES,
    HEADER,
    MAX_DISCARD_SEG,
    S_IOERR,
    S_OK,
    S_UNSUPP,
    T_DISCARD,
    T_FLUSH,
    T_GET_ID,
    T_IN,
    T_OUT,
    T_WRITE_ZEROES,
    BlockDevice,
)
from pyvmm.virtio.block_file import DiskFile, DiskImageError, DiskLockedError
from pyvmm.virtio.models import block_devices
from pyvmm.virtio.spec import Feature

MiB = 1 << 20
IMAGE = IMAGE_SIZE  # the `image` fixture's (conftest.py)
NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)


def make(
    ram: GuestMemory,
    path: Path,
    *,
    readonly: bool = False,
    serial: str | None = None,
    workers: int = 0,
    **opts: bool,
) -> BlockHarness:
    return BlockHarness(BlockDevice(DiskConfig(str(path), readonly, serial), workers=workers), ram, **opts)


@pytest.fixture(params=[0, 2], ids=["inline", "pool"])
def blk(ram: GuestMemory, image: Path, request: pytest.FixtureRequest) -> Iterator[BlockHarness]:
    harness = make(ram, image, workers=request.param)
    yield harness
    harness.device.close()


# --- configuration and features (§5.2.3, §5.2.4) --------------------------------------------


def test_config_space_says_capacity_and_limits(blk: BlockHarness) -> None:
    fields = CONFIG.unpack(blk.device.config())
    capacity, size_max, seg_max, _c, _h, _s, blk_size = fields[:7]
    assert capacity == IMAGE // 512 and blk_size == 512 and seg_max == 254 and size_max > 0
    assert fields[15] == MAX_DISCARD_SEG  # max_discard_seg
    assert blk.core.read_config(0, 8) == IMAGE // 512  # as the transport reads it
    # ext4 (tmp_path) punches holes: discard and write-zeroes are offered; RO is not
    assert (
        blk.device.device_features() & (F_DISCARD | F_WRITE_ZEROES | F_FLUSH)
        == F_DISCARD | F_WRITE_ZEROES | F_FLUSH
    )
    assert not blk.device.device_features() & F_RO


def test_a_partial_last_sector_is_not_exposed(ram: GuestMemory, tmp_path: Path) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(512 * 3 + 100))
    harness = make(ram, path)
    try:
        assert CONFIG.unpack(harness.device.config())[0] == 3
        assert harness.one(T_IN, 3, in_len=512) == (S_IOERR, 1)
    finally:
        harness.device.close()


# --- reads and writes ---------------------------------------------------------------------------


def test_read_returns_the_file_bytes_across_split_buffers(blk: BlockHarness, image: Path) -> None:
    length = 256 * 1024
    request = blk.post(T_IN, 24, in_len=length, in_split=(1000, 3096, 7))
    [(head, used)] = blk.run()
    assert (head, used, blk.status(request)) == (request.head, length + 1, S_OK)
    want = image.read_bytes()[24 * 512 : 24 * 512 + length]
    assert hashlib.sha256(blk.data(request)).digest() == hashlib.sha256(want).digest()


def test_status_byte_may_share_the_last_data_buffer(blk: BlockHarness, image: Path) -> None:
    request = blk.post(T_IN, 1, in_len=1024, status_with_data=True)
    assert blk.run() == [(request.head, 1025)]
    assert blk.status(request) == S_OK and blk.data(request) == image.read_bytes()[512:1536]


def test_write_then_flush_reaches_the_file(blk: BlockHarness, image: Path) -> None:
    data = os.urandom(8192)
    assert blk.one(T_OUT, 100, out=data) == (S_OK, 1)
    assert blk.one(T_FLUSH) == (S_OK, 1)
    with open(image, "rb") as file:
        file.seek(100 * 512)
        assert file.read(8192) == data
    assert image.stat().st_size == IMAGE


def test_write_from_a_header_sharing_its_descriptor(blk: BlockHarness, image: Path, ram: GuestMemory) -> None:
    """§2.7.4.1: no framing is assumed; header and data in one readable buffer."""
    data = os.urandom(512)
    body = HEADER.pack(T_OUT, 0, 7) + data
    addr = blk.driver.alloc(len(body), body)
    status = blk.driver.alloc(1)
    head = blk.post_elements([(addr, len(body), 0), (status, 1, WRITE)])
    assert blk.run() == [(head, 1)] and ram.read_u8(status) == S_OK
    assert image.read_bytes()[7 * 512 : 8 * 512] == data


def test_readonly_refuses_writes_and_leaves_the_file(
    ram: GuestMemory, image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = image.read_bytes()
    caplog.set_level(logging.WARNING, "pyvmm.virtio.block")
    harness = make(ram, image, readonly=True)
    try:
        assert harness.device.device_features() & F_RO
        assert not harness.device.device_features() & (F_DISCARD | F_WRITE_ZEROES)
        assert harness.one(T_OUT, 0, out=bytes(4096)) == (S_IOERR, 1)
        assert harness.one(T_DISCARD, 0, out=segments((0, 8, 0))) == (S_UNSUPP, 1)
        request = harness.post(T_IN, 0, in_len=512)
        harness.run()
        assert harness.status(request) == S_OK and harness.data(request) == before[:512]
    finally:
        harness.device.close()
    assert image.read_bytes() == before
    assert not caplog.records  # refused by the device, not by the kernel's EBADF


def test_get_id_returns_the_serial(ram: GuestMemory, image: Path) -> None:
    harness = make(ram, image, serial="root-disk")
    try:
        request = harness.post(T_GET_ID, in_len=20)
        assert harness.run() == [(request.head, 21)]
        assert harness.status(request) == S_OK and harness.data(request) == b"root-disk".ljust(20, b"\0")
        short = harness.post(T_GET_ID, in_len=4)  # a short buffer gets what fits
        assert harness.run() == [(short.head, 5)] and harness.data(short) == b"root"
    finally:
        harness.device.close()


def test_get_id_without_a_serial_is_zeros(blk: BlockHarness) -> None:
    request = blk.post(T_GET_ID, in_len=20)
    blk.run()
    assert blk.status(request) == S_OK and blk.data(request) == bytes(20)


def test_out_of_range_and_unaligned_requests_are_ioerr(blk: BlockHarness, image: Path) -> None:
    before = image.read_bytes()
    last = IMAGE // 512
    cases = [
        (T_IN, last, b"", 512),
        (T_IN, last - 1, b"", 1024),
        (T_IN, (1 << 64) - 1, b"", 512),
        (T_IN, 0, b"", 100),
        (T_OUT, last, bytes(512), 0),
        (T_OUT, (1 << 64) - 1, bytes(512), 0),
        (T_OUT, 0, bytes(513), 0),
    ]
    for kind, sector, out, in_len in cases:
        request = blk.post(kind, sector, out, in_len)
        assert blk.run() == [(request.head, 1)], (kind, sector)
        assert blk.status(request) == S_IOERR
        assert blk.data(request) == bytes([UNWRITTEN]) * in_len  # nothing was read
    assert blk.one(T_IN, last - 1, in_len=512)[0] == S_OK  # the last sector itself is fine
    assert image.read_bytes() == before


def test_unknown_types_are_unsupported(blk: BlockHarness) -> None:
    for kind in (2, 3, 5, 10, 14, 0xFFFF_FFFF):  # 10 get-lifetime, 14 secure erase: not offered
        assert blk.one(kind, 0, in_len=512) == (S_UNSUPP, 1)


# --- discard and write-zeroes (§5.2.6) -----------------------------------------------------------


def _blocks(path: Path) -> int:
    return os.stat(path).st_blocks


def test_discard_zeroes_the_range_and_frees_its_blocks(blk: BlockHarness, image: Path) -> None:
    before = _blocks(image)
    assert blk.one(T_DISCARD, 0, out=segments((2048, 2048, 0), (6000, 8, 0))) == (S_OK, 1)
    data = image.read_bytes()
    assert data[2048 * 512 : 4096 * 512] == bytes(MiB) and data[6000 * 512 : 6008 * 512] == bytes(4096)
    assert data[4096 * 512 : 4097 * 512] != bytes(512)
    assert _blocks(image) <= before - MiB // 512  # st_blocks counts 512-byte units
    assert image.stat().st_size == IMAGE


def test_write_zeroes_with_and_without_unmap(blk: BlockHarness, image: Path) -> None:
    before = _blocks(image)
    assert blk.one(T_WRITE_ZEROES, 0, out=segments((0, 2048, 0))) == (S_OK, 1)
    assert image.read_bytes()[:MiB] == bytes(MiB)
    assert _blocks(image) >= before - 8  # without UNMAP the blocks stay allocated
    assert blk.one(T_WRITE_ZEROES, 0, out=segments((2048, 2048, 1))) == (S_OK, 1)
    assert image.read_bytes()[MiB : 2 * MiB] == bytes(MiB)
    assert _blocks(image) <= before - MiB // 512


def test_discard_and_write_zeroes_rules(blk: BlockHarness, image: Path) -> None:
    before = image.read_bytes()
    capacity = IMAGE // 512
    cases = [
        (T_DISCARD, segments((0, 8, 1)), S_UNSUPP),  # §5.2.6.2: UNMAP on a discard
        (T_WRITE_ZEROES, segments((0, 8, 2)), S_UNSUPP),  # an unknown flag
        (T_DISCARD, segments((0, 8, 0), (capacity - 4, 8, 0)), S_IOERR),  # 2nd outside: none done
        (T_WRITE_ZEROES, segments(((1 << 64) - 1, 1, 0)), S_IOERR),
        (T_DISCARD, b"", S_IOERR),  # no segment
        (T_DISCARD, segments((0, 8, 0))[:12], S_IOERR),  # a partial one
        (T_DISCARD, segments(*[(0, 1, 0)] * (MAX_DISCARD_SEG + 1)), S_IOERR),
    ]
    for kind, out, status in cases:
        assert blk.one(kind, 0, out=out) == (status, 1), (kind, out.hex())
    assert image.read_bytes() == before


def test_discard_unsupported_when_not_negotiated(ram: GuestMemory, image: Path) -> None:
    harness = make(ram, image, features=int(Feature.VERSION_1), indirect=False, event_idx=False)
    try:
        assert harness.one(T_DISCARD, 0, out=segments((0, 8, 0))) == (S_UNSUPP, 1)
    finally:
        harness.device.close()


# --- malformed chains ---------------------------------------------------------------------------


def test_no_status_byte_needs_reset(blk: BlockHarness) -> None:
    blk.post(T_IN, 0, status=False)
    blk.run(count=0)
    assert blk.core.status & NEEDS_RESET and blk.interrupts.config == 1


def test_no_status_byte_raises_a_virtqueue_error_from_the_device(blk: BlockHarness) -> None:
    blk.post(T_FLUSH, 0, status=False)
    with pytest.raises(VirtqueueError):
        blk.device.notify(0)


def test_short_or_writable_header_is_ioerr(blk: BlockHarness, ram: GuestMemory) -> None:
    short = blk.driver.alloc(8, bytes(8))
    status = blk.driver.alloc(1)
    head = blk.post_elements([(short, 8, 0), (status, 1, WRITE)])
    assert blk.run() == [(head, 1)] and ram.read_u8(status) == S_IOERR
    header = blk.driver.alloc(16, bytes(16))  # a read (type 0) header, but device-writable
    head = blk.post_elements([(header, 16, WRITE), (status, 1, WRITE)])
    assert blk.run() == [(head, 1)] and ram.read_u8(status) == S_IOERR
    head = blk.post_elements([(status, 1, WRITE)])  # a status byte and nothing else
    assert blk.run() == [(head, 1)] and ram.read_u8(status) == S_IOERR


def test_an_empty_last_writable_buffer_is_skipped_for_the_status(blk: BlockHarness, ram: GuestMemory) -> None:
    header = blk.driver.alloc(16, HEADER.pack(T_FLUSH, 0, 0))
    status = blk.driver.alloc(1)
    empty = blk.driver.alloc(0)
    head = blk.post_elements([(header, 16, 0), (status, 1, WRITE), (empty, 0, WRITE)])
    assert blk.run() == [(head, 1)] and ram.read_u8(status) == S_OK


# --- host errors ---------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only): a file system that fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_file_system_gives_ioerr_and_the_device_goes_on(ram: GuestMemory, small_fs: Path) -> None:
    path = small_fs / "sparse.img"
    with open(path, "wb") as file:
        file.truncate(8 * MiB)  # sparse: 8 MiB of disk on 1 MiB of space
    harness = make(ram, path)
    try:
        # tmpfs punches holes but has no ZERO_RANGE: still offered
        assert harness.device.device_features() & F_DISCARD
        statuses = [harness.one(T_OUT, i * 512, out=b"\xab" * 256 * 1024)[0] for i in range(8)]
        assert statuses[0] == S_OK and S_IOERR in statuses
        failed = statuses.index(S_IOERR)
        assert harness.one(T_FLUSH) == (S_OK, 1)
        request = harness.post(T_IN, 0, in_len=4096)
        harness.run()
        assert harness.status(request) == S_OK and harness.data(request) == b"\xab" * 4096
        # freeing space makes writes work again
        assert harness.one(T_DISCARD, 0, out=segments((0, 2048, 0))) == (S_OK, 1)
        assert harness.one(T_OUT, failed * 512, out=b"\xcd" * 4096) == (S_OK, 1)
        holes = _blocks(path)
        assert harness.one(T_WRITE_ZEROES, 0, out=segments((0, 16, 0))) == (S_OK, 1)
        assert _blocks(path) >= holes + 16  # no ZERO_RANGE here: punched, then allocated again
        assert not harness.core.status & NEEDS_RESET
    finally:
        harness.device.close()
    with open(path, "rb") as file:
        file.seek(failed * 512 * 512)
        assert file.read(4096) == b"\xcd" * 4096


def test_a_file_that_shrank_reads_as_zeros_past_its_end(blk: BlockHarness, image: Path) -> None:
    os.truncate(image, IMAGE - 2048)
    request = blk.post(T_IN, IMAGE // 512 - 8, in_len=4096)
    blk.run()
    want = image.read_bytes()[-2048:] + bytes(2048)
    assert blk.status(request) == S_OK and blk.data(request) == want


# --- opening and locking --------------------------------------------------------------------------


def test_bad_images_are_one_clear_error(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, words in [
        (tmp_path / "missing.img", "no such file"),
        (tmp_path, "directory"),
        (fifo, "not a regular file or block device"),
        (Path("/dev/null"), "not a regular file or block device"),
    ]:
        for readonly in (False, True):
            with pytest.raises(DiskImageError, match=words) as info:
                BlockDevice(DiskConfig(str(path), readonly))
            assert isinstance(info.value, ImageError) and str(path) in str(info.value)


def test_no_permission_is_one_clear_error(tmp_path: Path, image: Path) -> None:
    """As root there is no EACCES on a mode-000 file: a read-only bind mount gives one
    (EROFS) for writing, which must be as clear."""
    image.chmod(0o000)
    if os.geteuid() == 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(
            ["mount", "--bind", "-o", "ro", str(tmp_path), str(ro)], capture_output=True
        ).returncode:
            pytest.skip("cannot make a read-only bind mount")
        try:
            with pytest.raises(DiskImageError, match=r"cannot be opened \(Read-only file system\)"):
                BlockDevice(DiskConfig(str(ro / image.name)))
        finally:
            subprocess.run(["umount", "-l", str(ro)], check=False)
    else:
        with pytest.raises(DiskImageError, match="no permission"):
            BlockDevice(DiskConfig(str(image)))


def test_one_image_cannot_have_two_writers_or_a_reader_beside_a_writer(image: Path) -> None:
    writer = DiskFile(str(image))
    try:
        with pytest.raises(DiskLockedError, match="in use by another VM"):
            DiskFile(str(image))
        with pytest.raises(DiskLockedError):
            DiskFile(str(image), readonly=True)
    finally:
        writer.close()
    readers = [DiskFile(str(image), readonly=True), DiskFile(str(image), readonly=True)]  # readers share
    try:
        with pytest.raises(DiskLockedError):
            DiskFile(str(image))
    finally:
        for reader in readers:
            reader.close()
    DiskFile(str(image)).close()  # the locks went with the files


def test_a_disk_file_owns_its_fd_as_every_fd_is_owned(image: Path) -> None:
    """pyvmm's one fd owner (FileDescriptor): a context manager, an idempotent close,
    and a file dropped without close() takes its fd and locks with it."""
    with DiskFile(str(image)) as disk:
        fd = disk.fileno()
        os.fstat(fd)
    assert disk.closed and disk.fileno() == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    disk.close()
    dropped = DiskFile(str(image))
    del dropped
    gc.collect()
    DiskFile(str(image)).close()  # no lock was left behind


def test_the_lock_holds_against_another_process(image: Path) -> None:
    """OFD locks on QEMU's bytes: a process holding byte 101 (a QEMU writer's WRITE
    permission) keeps pyvmm out, readonly or not."""
    script = (
        "import fcntl, os, struct, sys\n"
        f"fd = os.open({str(image)!r}, os.O_RDWR)\n"
        "fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack('hhqqi4x', fcntl.F_RDLCK, 0, 101, 1, 0))\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        ["python3", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        for readonly in (False, True):
            with pytest.raises(DiskLockedError, match="byte 101"):
                DiskFile(str(image), readonly)
    finally:
        holder.communicate("")
    DiskFile(str(image)).close()


def test_block_devices_builds_in_order_and_undoes_on_error(image: Path, tmp_path: Path) -> None:
    other = tmp_path / "b.img"
    other.write_bytes(bytes(MiB))
    devices = block_devices([DiskConfig(str(image)), DiskConfig(str(other), readonly=True)])
    try:
        assert [d.name for d in devices] == [f"virtio-blk {image}", f"virtio-blk {other}"]
    finally:
        for device in devices:
            device.close()
    with pytest.raises(DiskImageError, match="no such file"):
        block_devices([DiskConfig(str(image)), DiskConfig(str(tmp_path / "nope"))])
    DiskFile(str(image)).close()  # the first disk was closed again: not locked


# --- several requests in flight --------------------------------------------------------------------


def test_many_requests_in_one_notify(blk: BlockHarness, image: Path) -> None:
    data = image.read_bytes()
    requests = [blk.post(T_IN, 8 * i, in_len=4096) for i in range(100)]
    done = blk.run()
    assert sorted(h for h, _ in done) == sorted(r.head for r in requests)
    assert all(blk.data(r) == data[8 * i * 512 : 8 * i * 512 + 4096] for i, r in enumerate(requests))
    if blk.device.workers == 0:
        assert blk.interrupts.used == [0]  # one notification for the batch (EVENT_IDX)
    else:  # completions come one by one; EVENT_IDX still spares most notifications
        assert 1 <= len(blk.interrupts.used) <= len(requests)


def test_a_slow_request_does_not_hold_up_the_others(ram: GuestMemory, image: Path) -> None:
    harness = make(ram, image, workers=2)
    with closing(harness.device), held(harness.device.file, "flush") as slow:
        flush = harness.post(T_FLUSH)
        read = harness.post(T_IN, 0, in_len=512)
        assert harness.run(count=1) == [(read.head, 513)]
        assert harness.status(flush) == UNWRITTEN  # not reported before fdatasync returned
        slow.release.set()
        assert harness.run(count=1) == [(flush.head, 1)] and harness.status(flush) == S_OK
        assert harness.interrupts.used == [0, 0]


# --- hostile requests (hypothesis) ---------------------------------------------------------------

HOSTILE_CAPACITY = 8  # sectors: small, so that requests often touch its end
TAIL = b"tail-not-on-the-disk" * 5  # bytes past the last whole sector: never written


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BlockHarness, Path]]:
    path = tmp_path_factory.mktemp("hostile") / "disk.img"
    path.write_bytes(bytes(HOSTILE_CAPACITY * 512) + TAIL)
    memory = GuestMemory([(0, 16 * MiB)])
    harness = make(memory, path)
    yield harness, path
    harness.device.close()
    memory.close()


sectors = st.one_of(
    st.integers(0, HOSTILE_CAPACITY + 2),
    st.sampled_from([HOSTILE_CAPACITY - 1, HOSTILE_CAPACITY, (1 << 64) - 1]),
    st.integers(0, (1 << 64) - 1),
)

kinds = st.one_of(
    st.sampled_from([T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES]),
    st.integers(0, (1 << 32) - 1),
)
segment_lists = st.lists(st.tuples(sectors, st.integers(0, (1 << 32) - 1), st.integers(0, 3)), max_size=4)
payloads = st.one_of(
    st.binary(max_size=1100),
    st.sampled_from([512, 1024]).map(bytes),  # whole sectors: writes that succeed
    segment_lists.map(lambda entries: segments(*entries)),
)
pieces = st.lists(st.one_of(st.sampled_from([0, 1, 512, 1024]), st.integers(0, 1100)), max_size=4)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=kinds,
    sector=sectors,
    header_len=st.sampled_from([0, 1, 15, 16, 16, 16, 17]),
    out=payloads,
    in_split=pieces,
    status=st.booleans(),
)
# The edges, always tried: the sector or segment just past the end of the disk.
@example(kind=T_OUT, sector=HOSTILE_CAPACITY, header_len=16, out=bytes(512), in_split=[], status=True)
@example(kind=T_OUT, sector=HOSTILE_CAPACITY - 1, header_len=16, out=bytes(1024), in_split=[], status=True)
@example(
    kind=T_WRITE_ZEROES,
    sector=0,
    header_len=16,
    out=segments((HOSTILE_CAPACITY - 1, 2, 0)),
    in_split=[],
    status=True,
)
def test_any_request_gets_a_defined_status_and_stays_on_the_disk(
    hostile: tuple[BlockHarness, Path],
    kind: int,
    sector: int,
    header_len: int,
    out: bytes,
    in_split: list[int],
    status: bool,
) -> None:
    harness, path = hostile
    harness.rewind()
    header = HEADER.pack(kind, 0, sector)[:header_len]
    alloc = harness.driver.alloc
    elements = []
    if header:
        elements.append((alloc(len(header), header), len(header), 0))
    if out:
        elements.append((alloc(len(out), out), len(out), 0))
    in_len = sum(in_split)
    area = alloc(in_len + 1)
    harness.memory.fill(area, in_len + 1, UNWRITTEN)
    offset = 0
    for piece in in_split:
        elements.append((area + offset, piece, WRITE))
        offset += piece
    if status:
        elements.append((area + in_len, 1, WRITE))
    if not elements:
        return
    harness.post_elements(elements)
    try:
        done = harness.run()
    except VirtqueueError:  # only ever this, when no writable byte exists
        assert in_len == 0 and not status
        return
    if harness.core.status & NEEDS_RESET:
        assert in_len == 0 and not status
        harness.restart()
        return
    [(_head, used)] = done
    writable = in_len + (1 if status else 0)
    status_addr = area + writable - 1 if status else max(p for p in _ends(area, in_split))
    got = harness.memory.read_u8(status_addr)
    assert got in (S_OK, S_IOERR, S_UNSUPP)
    assert 1 <= used <= writable
    data = path.read_bytes()
    assert len(data) == HOSTILE_CAPACITY * 512 + len(TAIL) and data.endswith(TAIL)


def _ends(area: int, pieces: list[int]) -> list[int]:
    """The address of the last byte of each nonempty piece."""
    ends, offset = [], 0
    for piece in pieces:
        offset += piece
        if piece:
            ends.append(area + offset - 1)
    return ends
