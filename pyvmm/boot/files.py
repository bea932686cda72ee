"""Reading the user's boot files: the one place pyvmm opens a kernel or an initrd.

A path can name anything: a FIFO (opening it blocks until a writer comes), a device
(/dev/zero never ends), a sparse file of 100 GB. So the path is checked with stat()
before it is opened, opened without blocking, checked again on the open descriptor
(the path may have been replaced in between), and read no further than `limit`
bytes: nothing bigger than guest RAM can be loaded by any loader, so nothing bigger
is ever read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyvmm.errors import ImageError

# What a path that is not a regular file names, for the error (inode(7), file types).
_NOT_REGULAR = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}
_CHUNK = 1 << 20  # read size once the announced size is read (files in /proc announce 0)


def describe_size(size: int) -> str:
    """Bytes for error messages: exact below 1 MiB, in MiB above."""
    return f"{size} bytes" if size < 1 << 20 else f"{size >> 20} MiB"


def read_image(path: Path, what: str, limit: int) -> bytes:
    """The whole regular file at `path`, at most `limit` bytes (the guest's RAM), or
    an ImageError naming the file and why it cannot be used; `what` is "kernel" or
    "initrd"."""
    try:
        _check(path, os.stat(path), what, limit)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            _check(path, info, what, limit)
            return _read_bounded(fd, info.st_size, limit, path, what)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path with a NUL byte (from the Python API)
        raise ImageError(f"{path!r}: not a usable {what} path: {exc}") from None


def _check(path: Path, info: os.stat_result, what: str, limit: int) -> None:
    kind = stat.S_IFMT(info.st_mode)
    if kind != stat.S_IFREG:
        raise ImageError(f"{path}: {what} is {_NOT_REGULAR.get(kind, 'not a file')}, not a regular file")
    if info.st_size > limit:
        raise ImageError(
            f"{path}: {what} is too big: {describe_size(info.st_size)}, more than the "
            f"guest's {describe_size(limit)} of RAM"
        )


def _read_bounded(fd: int, size: int, limit: int, path: Path, what: str) -> bytes:
    """Read to the end of the file, failing once more than `limit` bytes came: the
    file may have grown since stat(), or (in /proc) have announced no size at all."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        # What stat() announced and one byte more in one read, then chunks to the end.
        chunk = os.read(fd, min(max(size + 1 - total, _CHUNK), limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise ImageError(f"{path}: {what} is too big: more than the guest's {describe_size(limit)} of RAM")
    return b"".join(chunks)  # one chunk (the usual case) is returned without a copy
