"""A writer for the cpio "newc" archive format, the one Linux unpacks as initramfs.

Format (Documentation/driver-api/early-userspace/buffer-format.rst in the kernel
source, and cpio(5)): every entry is a 110-byte ASCII header -- the magic
``070701`` and thirteen 8-digit hexadecimal fields -- then the path name with its
terminating NUL, padded with NULs to a multiple of 4 bytes, then the file data,
padded the same way. The archive ends with an entry named ``TRAILER!!!``.

Entries carry fixed owners (root) and a fixed modification time, so the same
inputs always give the same bytes.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, replace
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
ALIGNMENT = 4
_FIELD_MAX = 0xFFFF_FFFF


def _pad(length: int) -> bytes:
    return b"\0" * (-length % ALIGNMENT)


def _archive_name(path: str) -> str:
    """Names are stored relative ("bin/sh"); the root itself is "."."""
    name = path.strip("/")
    if not name:
        return "."
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"bad path in a cpio archive: {path!r}")
    return name


@dataclass(frozen=True)
class Header:
    """The thirteen numeric fields of a newc header, in their on-disk order."""

    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0
    filesize: int = 0
    devmajor: int = 0
    devminor: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    namesize: int = 0
    check: int = 0

    def pack(self) -> bytes:
        fields = (
            self.ino, self.mode, self.uid, self.gid, self.nlink, self.mtime, self.filesize,
            self.devmajor, self.devminor, self.rdevmajor, self.rdevminor, self.namesize, self.check,
        )
        for value in fields:
            if not 0 <= value <= _FIELD_MAX:
                raise ValueError(f"cpio header field out of range: {value}")
        return MAGIC + b"".join(b"%08X" % value for value in fields)


class CpioWriter:
    """Writes a newc archive to a binary stream, entry by entry.

    Each entry gets its own inode number and a link count of 1 (2 for
    directories), so the kernel's unpacker never mistakes two files for hard
    links of each other. Parent directories are not created implicitly: add them
    first, as the kernel's unpacker creates entries in archive order.
    """

    def __init__(self, out: BinaryIO, mtime: int = 0) -> None:
        self._out = out
        self._mtime = mtime
        self._next_ino = 1
        self._names: set[str] = set()
        self._closed = False

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._entry(path, stat.S_IFDIR | mode, b"", nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(path, stat.S_IFREG | mode, data)

    def add_symlink(self, path: str, target: str) -> None:
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(path, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def add_block_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(path, stat.S_IFBLK | mode, b"", rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer. The stream itself stays open (it belongs to the caller)."""
        if not self._closed:
            self._write(TRAILER, Header(ino=0, mode=0, nlink=1), b"")
            self._closed = True

    def __enter__(self) -> CpioWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._names)

    def _entry(self, path: str, mode: int, data: bytes, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0)) -> None:
        if self._closed:
            raise ValueError("cpio archive already closed")
        name = _archive_name(path)
        if name in self._names:
            raise ValueError(f"duplicate entry in a cpio archive: {name!r}")
        self._names.add(name)
        header = Header(
            ino=self._next_ino, mode=mode, nlink=nlink, mtime=self._mtime,
            rdevmajor=rdev[0], rdevminor=rdev[1],
        )
        self._next_ino += 1
        self._write(name, header, data)

    def _write(self, name: str, header: Header, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        header = replace(header, filesize=len(data), namesize=len(encoded))
        head = header.pack() + encoded
        self._out.write(head + _pad(len(head)))
        self._out.write(data + _pad(len(data)))
