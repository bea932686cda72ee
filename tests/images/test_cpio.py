"""The newc writer, read back by Debian's cpio and checked byte by byte."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest
from images.newc_reader import parse

from pyvmm.images.cpio import TRAILER, CpioWriter

# Name lengths 1..8 and data lengths 0..7 walk every padding case of both.
FILES = {f"d/{'n' * (size + 1)}": bytes(range(65, 65 + size)) for size in range(8)}
BIG = os.urandom(70_001)


def archive() -> bytes:
    out = io.BytesIO()
    with CpioWriter(out) as writer:
        writer.add_dir("d")
        writer.add_dir("dev")
        for name, data in FILES.items():
            writer.add_file(name, data, 0o640)
        writer.add_file("/big.bin", BIG, 0o755)
        writer.add_symlink("d/link", "/big.bin")
        writer.add_char_device("dev/console", 5, 1)
        writer.add_block_device("dev/vda", 254, 0)
    return out.getvalue()


def test_the_format_byte_by_byte() -> None:
    entries = parse(archive())
    names = [name for name, _, _ in entries]
    assert names[:2] == ["d", "dev"] and names[-1] == TRAILER
    by_name = {name: (header, data) for name, header, data in entries}
    header, data = by_name["big.bin"]
    assert data == BIG and stat.S_IMODE(header["mode"]) == 0o755 and stat.S_ISREG(header["mode"])
    header, data = by_name["d/link"]
    assert stat.S_ISLNK(header["mode"]) and data == b"/big.bin"
    header, _ = by_name["dev/console"]
    assert stat.S_ISCHR(header["mode"]) and (header["rdevmajor"], header["rdevminor"]) == (5, 1)
    inodes = [header["ino"] for name, header, _ in entries if name != TRAILER]
    assert len(set(inodes)) == len(inodes), "every entry needs its own inode (no false hard links)"
    assert all(header["mtime"] == 0 and header["uid"] == 0 for _, header, _ in entries)


def test_the_same_entries_give_the_same_bytes() -> None:
    assert archive() == archive()


def test_debian_cpio_lists_it(cpio_tool: Path) -> None:
    listing = subprocess.run(
        [str(cpio_tool), "-it", "--quiet"], input=archive(), capture_output=True, check=True
    ).stdout.decode().split()
    assert listing == ["d", "dev", *FILES, "big.bin", "d/link", "dev/console", "dev/vda"]
    verbose = subprocess.run(
        [str(cpio_tool), "-itv", "--quiet"], input=archive(), capture_output=True, check=True
    ).stdout.decode()
    console = next(line for line in verbose.splitlines() if line.endswith("dev/console"))
    assert console.startswith("crw-------") and "5,   1" in console


def test_debian_cpio_extracts_it(cpio_tool: Path, tmp_path: Path) -> None:
    subprocess.run(
        [str(cpio_tool), "-idm", "--quiet", "--no-absolute-filenames"],
        input=archive(), cwd=tmp_path, check=True, capture_output=True,
    )
    for name, data in FILES.items():
        assert (tmp_path / name).read_bytes() == data
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert os.readlink(tmp_path / "d" / "link") == "/big.bin"
    if os.geteuid() == 0:  # only root may create device nodes
        console = (tmp_path / "dev" / "console").lstat()
        assert stat.S_ISCHR(console.st_mode)
        assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)


def test_an_empty_archive_is_just_the_trailer() -> None:
    out = io.BytesIO()
    CpioWriter(out).close()
    assert [name for name, _, _ in parse(out.getvalue())] == [TRAILER]


@pytest.mark.parametrize("path", ["a/../b", "a//b", "./a", "../x"])
def test_bad_paths_are_refused(path: str) -> None:
    writer = CpioWriter(io.BytesIO())
    with pytest.raises(ValueError):
        writer.add_file(path, b"")


def test_duplicates_and_writes_after_close_are_refused() -> None:
    writer = CpioWriter(io.BytesIO())
    writer.add_dir("bin")
    with pytest.raises(ValueError, match="duplicate"):
        writer.add_file("/bin/", b"")
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.add_dir("etc")
