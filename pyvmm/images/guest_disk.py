"""The default guest's writable root disk: a sparse copy of the cached rootfs.ext4.

`pyvmm run` without `--kernel` boots from this copy, never from the cached image,
which stays as built (and so every copy starts the same). It is made once per
cache entry and then kept, so what the guest writes is there at the next run, as
a QEMU or Firecracker user's own disk image would be:

    ${XDG_DATA_HOME:-~/.local/share}/pyvmm/disks/<flavour>-<key>.ext4

A data directory, not the image cache: the XDG base directory specification lets
anyone delete a cache at any time, and this file holds the user's changes. A
rebuilt guest (a new key) gets a fresh copy beside the old one; deleting the file,
or `pyvmm images reset-disk`, starts afresh.

The copy keeps the image's holes (SEEK_DATA / SEEK_HOLE, lseek(2)): 64 MiB of
image are about 6 MB of data. It is written under a temporary name and linked
into place with link(2), which fails when the name exists: two first runs at once
both end with the same copy, and neither replaces the file the other has opened.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pyvmm.images.cache import CachedImages
from pyvmm.images.errors import GuestDiskError

SUFFIX = ".ext4"
_CHUNK = 1 << 20


def disks_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the writable root disks live (XDG base directory spec, $XDG_DATA_HOME)."""
    env = os.environ if environ is None else environ
    data = env.get("XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data) / "pyvmm" / "disks"


def disk_path(images: CachedImages, directory: Path | None = None) -> Path:
    """The writable copy of `images`' root disk (made or not)."""
    return (directory or disks_dir()) / f"{images.flavour}-{images.key}{SUFFIX}"


def writable_disk(images: CachedImages, directory: Path | None = None) -> tuple[Path, bool]:
    """The writable copy of `images`' root disk, made now if missing; (path, made now)."""
    target = disk_path(images, directory)
    if os.path.lexists(target):
        return target, False
    source = images.path("rootfs")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        try:
            with open(handle, "wb") as out:  # mkstemp's 0600: the guest's files are the user's own
                sparse_copy(source, out.fileno())
                os.fsync(out.fileno())
            try:
                os.link(partial, target)
            except FileExistsError:
                return target, False  # another run made it meanwhile: that copy is the one
        finally:
            os.unlink(partial)
    except OSError as exc:
        reason = _reason(exc)
        raise GuestDiskError(f"cannot make the guest's root disk {target} from {source}: {reason}") from None
    return target, True


def reset_disk(images: CachedImages, directory: Path | None = None) -> Path | None:
    """Remove the writable copy of `images`' root disk; its path, or None if there was none."""
    target = disk_path(images, directory)
    try:
        target.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GuestDiskError(f"cannot remove the guest's root disk {target}: {_reason(exc)}") from None
    return target


def _reason(exc: OSError) -> str:
    """The error and the file it is about: not always the disk (a parent, the image)."""
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)


def sparse_copy(source: Path, out: int) -> None:
    """Copy the file `source` into the empty file open as `out`, leaving its holes as
    holes: only the ranges lseek(SEEK_DATA) finds are read and written. A file system
    without hole support reports the whole file as data, which is still a copy."""
    with open(source, "rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                break  # nothing but a hole up to the end
            end = os.lseek(fd, start, os.SEEK_HOLE)
            _copy_range(fd, out, start, end)
            offset = end
    os.ftruncate(out, size)  # the trailing hole, and the size itself


def _copy_range(source: int, out: int, start: int, end: int) -> None:
    while start < end:
        data = os.pread(source, min(_CHUNK, end - start), start)
        if not data:
            raise OSError(errno.EIO, "the root disk image shrank while it was copied")
        written = 0
        while written < len(data):
            written += os.pwrite(out, data[written:], start + written)
        start += len(data)
