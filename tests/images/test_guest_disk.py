"""The default guest's writable root disk (pyvmm.images.guest_disk), on real files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pyvmm.images import guest_disk
from pyvmm.images.cache import CachedImages
from pyvmm.images.errors import GuestDiskError

MIB = 1 << 20


@pytest.fixture
def images(tmp_path: Path) -> CachedImages:
    """A cache entry whose rootfs.ext4 is 64 MiB with data at 0, 5 MiB and at the end."""
    entry = CachedImages("default", "0123456789abcdef", tmp_path / "cache" / "default-0123456789abcdef")
    entry.directory.mkdir(parents=True)
    with open(entry.directory / "rootfs.ext4", "wb") as rootfs:
        rootfs.write(b"superblock".ljust(8192, b"s"))
        rootfs.seek(5 * MIB)
        rootfs.write(os.urandom(3 * MIB + 17))  # not a whole block: a partial one at its end
        rootfs.seek(64 * MIB - 4096)
        rootfs.write(b"last block".ljust(4096, b"l"))
    return entry


def test_the_location_follows_xdg_data_home(tmp_path: Path) -> None:
    assert guest_disk.disks_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "pyvmm" / "disks"
    assert guest_disk.disks_dir({}) == Path("~/.local/share/pyvmm/disks").expanduser()
    entry = CachedImages("default", "0123456789abcdef", tmp_path)
    assert guest_disk.disk_path(entry, tmp_path) == tmp_path / "default-0123456789abcdef.ext4"


def test_the_copy_is_the_image_with_its_holes(images: CachedImages, tmp_path: Path) -> None:
    disk, made = guest_disk.writable_disk(images, tmp_path / "disks")
    assert made and disk == tmp_path / "disks" / "default-0123456789abcdef.ext4"
    source = images.path("rootfs")
    assert disk.read_bytes() == source.read_bytes()
    # About 3 MiB of data: the holes stayed holes (st_blocks count 512 bytes).
    assert disk.stat().st_blocks * 512 <= source.stat().st_blocks * 512 + MIB
    assert disk.stat().st_blocks * 512 < 8 * MIB
    assert [p.name for p in disk.parent.iterdir()] == [disk.name]  # no partial copy left


def test_an_existing_copy_is_kept(images: CachedImages, tmp_path: Path) -> None:
    disk, _ = guest_disk.writable_disk(images, tmp_path)
    with open(disk, "r+b") as handle:
        handle.write(b"changed by the guest")
    again, made = guest_disk.writable_disk(images, tmp_path)
    assert (again, made) == (disk, False)
    assert disk.read_bytes().startswith(b"changed by the guest")


def test_first_runs_at_once_share_one_copy(images: CachedImages, tmp_path: Path) -> None:
    """Each copy is linked into place only where no file is: whichever run loses keeps
    the winner's file, which the winner may have opened already."""
    disks = tmp_path / "disks"
    results: list[tuple[Path, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(guest_disk.writable_disk(images, disks)))
               for _ in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({path for path, _ in results}) == 1 and sum(made for _, made in results) >= 1
    assert [p.name for p in disks.iterdir()] == ["default-0123456789abcdef.ext4"]


def test_a_copy_appearing_meanwhile_is_not_replaced(
    images: CachedImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks = tmp_path / "disks"
    target = guest_disk.disk_path(images, disks)
    copy = guest_disk.sparse_copy

    def racing_copy(source: Path, out: int) -> None:
        copy(source, out)
        target.write_bytes(b"another run's copy, in use")  # made while ours was copied

    monkeypatch.setattr(guest_disk, "sparse_copy", racing_copy)
    assert guest_disk.writable_disk(images, disks) == (target, False)
    assert target.read_bytes() == b"another run's copy, in use"
    assert [p.name for p in disks.iterdir()] == [target.name]


def test_reset_removes_the_copy(images: CachedImages, tmp_path: Path) -> None:
    assert guest_disk.reset_disk(images, tmp_path) is None
    disk, _ = guest_disk.writable_disk(images, tmp_path)
    assert guest_disk.reset_disk(images, tmp_path) == disk and not disk.exists()
    assert guest_disk.writable_disk(images, tmp_path) == (disk, True)


def test_failures_are_one_guest_disk_error(images: CachedImages, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    made_in_a_file = f"^cannot make the guest's root disk .*: File exists: {blocked}$"
    with pytest.raises(GuestDiskError, match=made_in_a_file):
        guest_disk.writable_disk(images, blocked)
    images.path("rootfs").unlink()
    with pytest.raises(GuestDiskError, match=f"No such file or directory: {images.path('rootfs')}$"):
        guest_disk.writable_disk(images, tmp_path / "disks")
    assert list((tmp_path / "disks").iterdir()) == []  # no partial copy left
