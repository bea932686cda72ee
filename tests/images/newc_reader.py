"""A strict newc reader for the tests: checks alignment, magic and padding."""

from __future__ import annotations

from pyvmm.images.cpio import HEADER_SIZE, MAGIC, TRAILER

_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
           "rdevmajor", "rdevminor", "namesize", "check")


def parse(data: bytes) -> list[tuple[str, dict[str, int], bytes]]:
    """A strict reader: every header 4-aligned, magic right, padding all NULs."""
    entries = []
    offset = 0
    while True:
        assert offset % 4 == 0
        assert data[offset:offset + 6] == MAGIC
        fields = [int(data[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        header = dict(zip(_FIELDS, fields, strict=True))
        name_end = offset + HEADER_SIZE + header["namesize"]
        name = data[offset + HEADER_SIZE:name_end - 1].decode()
        assert data[name_end - 1] == 0
        data_start = name_end + (-name_end % 4)
        assert data[name_end:data_start] == b"\0" * (data_start - name_end)
        data_end = data_start + header["filesize"]
        next_entry = data_end + (-data_end % 4)
        assert data[data_end:next_entry] == b"\0" * (next_entry - data_end)
        entries.append((name, header, data[data_start:data_end]))
        offset = next_entry
        if name == TRAILER:
            assert offset == len(data)
            return entries
