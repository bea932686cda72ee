"""The host side of a virtio-blk disk: a raw image file or block device, locked
against a second user, read and written straight into guest memory.

- Opening: a regular file or a block device; anything else (a directory, a FIFO, a
  missing path, no permission) is one `DiskImageError` naming the path.
- Locking, as QEMU's `locking=on` does (block/file-posix.c, "raw_apply_lock_bytes"):
  open file description (OFD) locks on single bytes, 100 + bit for each permission
  held and 200 + bit for each permission not shared with others. A writer holds
  CONSISTENT_READ and WRITE and shares neither WRITE nor RESIZE; a reader holds
  CONSISTENT_READ and, like QEMU's read-only drive, does not share WRITE. The locks
  are taken first and then checked against everyone else's (F_OFD_GETLK), so two
  processes opening at once both see each other. A writer thus excludes any other
  writer or reader, pyvmm's or QEMU's, and readers coexist.
- I/O: `os.preadv` / `os.pwritev` on the memoryviews of a descriptor chain (guest
  RAM, no copy), resumed after short transfers and split at the kernel's IOV_MAX; a
  read past the end of the file (it shrank under us) reads as zeros. `chunks` cuts a
  request's views into pieces of bounded size (the device serves one at a time).
- Host errors are `OSError`s for the device to turn into VIRTIO_BLK_S_IOERR.
- Discard and write-zeroes use fallocate(2), offered only when `probe_holes` finds
  that the file system punches holes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
from collections.abc import Iterator, Sequence

from pyvmm.errors import ImageError
from pyvmm.kvm.fd import FileDescriptor

log = logging.getLogger(__name__)

# fallocate(2) modes (linux/falloc.h).
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# QEMU's permission bits (include/block/block-common.h, BLK_PERM_*) and the offsets of
# the bytes that stand for them (RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE).
PERM_CONSISTENT_READ = 0
PERM_WRITE = 1
PERM_WRITE_UNCHANGED = 2
PERM_RESIZE = 3
LOCK_PERM_BASE = 100
LOCK_SHARED_BASE = 200

# struct flock on x86-64: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid (0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")
_IOV_MAX = os.sysconf("SC_IOV_MAX")

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


class DiskImageError(ImageError):
    """A disk image cannot be used: missing, not a file or block device, no permission."""


class DiskLockedError(DiskImageError):
    """Another process (pyvmm or QEMU) holds the image in a conflicting way."""


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2), which Python's os module has only without `mode`."""
    while _fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


def _lock_byte(fd: int, command: int, kind: int, offset: int) -> int:
    result = fcntl.fcntl(fd, command, _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0))
    assert isinstance(result, bytes)
    return int(_FLOCK.unpack(result)[0])


def _lock_like_qemu(fd: int, path: str, readonly: bool) -> None:
    """Take QEMU's lock bytes for a writer or a reader, then check nobody else's
    conflicts (see the module docstring). Raises DiskLockedError."""
    held = [PERM_CONSISTENT_READ] if readonly else [PERM_CONSISTENT_READ, PERM_WRITE]
    unshared = [PERM_WRITE] if readonly else [PERM_WRITE, PERM_RESIZE]
    ours = [LOCK_PERM_BASE + p for p in held] + [LOCK_SHARED_BASE + p for p in unshared]
    # Ours conflicts with: someone not sharing what we hold, someone holding what we
    # do not share.
    theirs = [LOCK_SHARED_BASE + p for p in held] + [LOCK_PERM_BASE + p for p in unshared]
    try:
        for offset in ours:
            _lock_byte(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, offset)
        for offset in theirs:
            # GETLK asks whether an exclusive lock could be taken: any other OFD's
            # shared lock on that byte says no (our own locks never conflict).
            if _lock_byte(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK, offset) != fcntl.F_UNLCK:
                raise DiskLockedError(f"disk {path}: in use by another VM (its lock byte {offset} is held)")
    except BlockingIOError as exc:  # EAGAIN: an exclusive lock where we want a shared one
        raise DiskLockedError(f"disk {path}: in use by another VM (locked)") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise DiskImageError(f"disk {path}: cannot be locked ({exc.strerror})") from exc
        raise


def skip_bytes(views: Sequence[memoryview], done: int) -> list[memoryview]:
    """`views` without their first `done` bytes (views, not copies)."""
    rest: list[memoryview] = []
    for view in views:
        if done >= len(view):
            done -= len(view)
            continue
        rest.append(view[done:] if done else view)
        done = 0
    return rest


def chunks(views: Sequence[memoryview], limit: int) -> Iterator[tuple[int, list[memoryview]]]:
    """`views` as pieces of at most `limit` bytes, each with its offset in the stream
    the views make (views cut where a piece ends, not copied; empty ones left out)."""
    batch: list[memoryview] = []
    start = size = 0
    for view in views:
        while len(view) > limit - size:  # this view ends the piece
            cut = limit - size
            if cut:
                batch.append(view[:cut])
            yield start, batch
            start += limit
            view = view[cut:]
            batch, size = [], 0
        if len(view):
            batch.append(view)
            size += len(view)
    if batch:
        yield start, batch


class DiskFile(FileDescriptor):
    """One open, locked disk image. Methods raise OSError on host I/O errors.

    Its fd is owned as every fd in pyvmm is (`FileDescriptor`: `close()` once, also
    from the context manager or when the object is dropped), and the OFD locks go with
    it. The fd is not used under `FileDescriptor`'s lock: the device closes the file
    once no request is being served (at its close, or when the last request a stuck
    host call held up returns), so no I/O races the close.
    """

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_NOCTTY
        try:
            # O_NONBLOCK only so that opening a FIFO by mistake does not hang; it has
            # no effect on regular files and block devices, and is cleared below.
            fd = os.open(path, flags | os.O_NONBLOCK)
        except FileNotFoundError:
            raise DiskImageError(f"disk {path}: no such file") from None
        except IsADirectoryError:
            raise DiskImageError(f"disk {path}: is a directory, not a disk image") from None
        except PermissionError:
            wanted = "reading" if readonly else "reading and writing (readonly=on for read-only)"
            raise DiskImageError(f"disk {path}: no permission for {wanted}") from None
        except OSError as exc:
            raise DiskImageError(f"disk {path}: cannot be opened ({exc.strerror})") from None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise DiskImageError(f"disk {path}: is a directory, not a disk image")
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise DiskImageError(f"disk {path}: not a regular file or block device")
            os.set_blocking(fd, True)
            self.is_block_device = stat.S_ISBLK(mode)
            _lock_like_qemu(fd, path, readonly)
            # lseek gives a block device's size as well as a file's.
            self.size = os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)  # not ours yet: FileDescriptor owns it from the next line
            raise
        super().__init__(fd)
        self.punch_holes = False if readonly else self._probe_holes()
        self.zero_range = self.punch_holes and self._probe(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)

    # --- probing -----------------------------------------------------------------------

    def _probe(self, mode: int) -> bool:
        """Whether fallocate with `mode` works here, tried past the end of the data
        (with KEEP_SIZE the file is unchanged: there is nothing there to lose)."""
        if self.is_block_device:
            # A block device refuses ranges past its end (EINVAL) whatever it supports:
            # no harmless probe, so none of this is offered.
            return False
        start = (self.size + 4095) & ~4095
        try:
            fallocate(self.fd, mode, start, 4096)
        except OSError as exc:
            log.debug("%s: fallocate mode %#x not supported: %s", self.path, mode, exc.strerror)
            return False
        return True

    def _probe_holes(self) -> bool:
        return self._probe(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)

    # --- I/O -----------------------------------------------------------------------------

    def read_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """Fill `views` (in order) from the image at `offset`; past the end, zeros."""
        pending = list(views)
        while pending:
            batch = pending[:_IOV_MAX]
            wanted = sum(len(v) for v in batch)
            count = os.preadv(self.fd, batch, offset)
            if count == 0:  # end of file: the image shrank under us
                for view in pending:
                    _zero(view)
                return
            offset += count
            pending = skip_bytes(batch, count) + pending[_IOV_MAX:] if count < wanted else pending[_IOV_MAX:]

    def write_from(self, offset: int, views: Sequence[memoryview]) -> None:
        """Write `views` (in order) to the image at `offset`."""
        pending = list(views)
        while pending:
            batch = pending[:_IOV_MAX]
            wanted = sum(len(v) for v in batch)
            count = os.pwritev(self.fd, batch, offset)
            if count == 0:  # no progress and no errno: treat as a full disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            offset += count
            pending = skip_bytes(batch, count) + pending[_IOV_MAX:] if count < wanted else pending[_IOV_MAX:]

    def flush(self) -> None:
        """Make every completed write durable (fdatasync) before returning."""
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """Give back the blocks of a range; it reads as zeros afterwards."""
        fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        """Make a range read as zeros; with `unmap` its blocks may be freed, without it
        they stay allocated (so later writes there cannot fail for space)."""
        if unmap:
            self.discard(offset, length)
        elif self.zero_range:
            fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
        else:  # e.g. tmpfs: punch, then allocate the range again
            self.discard(offset, length)
            fallocate(self.fd, FALLOC_FL_KEEP_SIZE, offset, length)


_ZEROS = bytes(65536)


def _zero(view: memoryview) -> None:
    for start in range(0, len(view), len(_ZEROS)):
        piece = view[start : start + len(_ZEROS)]
        piece[:] = _ZEROS[: len(piece)]
