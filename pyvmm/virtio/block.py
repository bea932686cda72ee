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

How requests run (block_pool.py, `RequestPool`, this device's base): `notify` pops
them; they are served inline or on a pool of `workers` threads, and a reset or a
close cancels what has not started and waits a bounded time for what has. For that a
request's data moves in pieces of at most `IO_CHUNK`, one host call each, a discard
or write-zeroes one segment at a time, each piece through `_touch`.

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
from collections.abc import Iterable, Sequence

from pyvmm.device_config import SERIAL_MAX, DiskConfig
from pyvmm.log_limit import LogLimit
from pyvmm.snapshot.checks import check_type, fail
from pyvmm.virtio.block_file import DiskFile, chunks, skip_bytes
from pyvmm.virtio.block_pool import SAVE_WAIT_SECONDS, RequestPool, RequestResult
from pyvmm.virtio.chain import DescriptorChain
from pyvmm.virtio.device import DeviceType
from pyvmm.virtio.device_state import BlockState

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
# The most one host call of a request reads or writes (block_pool.py: what a reset
# waits for). A page-cached MiB moves in about 0.1 ms, a disk's in a few ms; a request
# up to this size still takes one call, cut nowhere.
IO_CHUNK = SIZE_MAX
WORKERS = 2  # the file-I/O pool's size (module docstring: measured)


def _pieces(views: list[memoryview], length: int) -> Iterable[tuple[int, list[memoryview]]]:
    """A request's `length` bytes of data as pieces of at most `IO_CHUNK` bytes with
    their offsets; one piece without cutting anything for most requests."""
    return ((0, views),) if length <= IO_CHUNK else chunks(views, IO_CHUNK)


class BlockDevice(RequestPool):
    """One virtio-blk disk on `disk.path`.

    `BlockDevice(disk, workers=N)`: the image is opened and locked here (a
    `DiskImageError` for a missing, wrong or locked image), so a bad --disk fails
    before the VM starts. `workers` is the size of the file-I/O thread pool (0: all
    I/O on the thread that calls `notify`; see the module docstring for the default).
    Its requests run, and are cancelled and waited for, in `RequestPool`.
    """

    device_type = DeviceType.BLOCK
    kind = "virtio-blk"

    def __init__(self, disk: DiskConfig, *, workers: int = WORKERS, queue_size: int = QUEUE_SIZE) -> None:
        super().__init__(workers=workers, thread_name=f"pyvmm-blk-{disk.path}")
        self.disk = disk
        self.name = f"{self.kind} {disk.path}"
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
        self._warnings = LogLimit(log)  # the guest decides how often requests fail

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

    def _close_disk(self) -> None:
        """For `close()` (block_pool.py), once no request uses the file."""
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
        self._wait_idle(timeout)
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

    # --- requests (§5.2.6) -----------------------------------------------------------------

    def _serve(self, chain: DescriptorChain, generation: int) -> RequestResult:
        """Carry out one request whose chain has at least one writable byte: where its
        status byte is (the chain's last writable byte), the status, the used length.
        A reset or close stops it (`_touch`, `_check_cancelled`: block_pool.py)."""
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
            self._check_cancelled(generation)
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
