"""boot/files.py: the kernel and initrd paths a user can give that are not a loadable
file (FIFOs, devices, sockets, sparse giants), refused before they are read, through
`pyvmm.boot.load` as the CLI calls it."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from boot.boot_images import multiboot_elf

from pyvmm.arch.x86.layout import GiB, MiB
from pyvmm.boot import BootImages, load
from pyvmm.boot.files import read_image
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

RAM_MIB = 64  # the `memory` fixture's guest


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "kernel.elf"
    path.write_bytes(multiboot_elf().build())
    return path


def load_with(memory: GuestMemory, kernel: Path, other: Path, role: str) -> None:
    """Load with `other` as the kernel or as the initrd of a good Multiboot kernel."""
    load(memory, BootImages(other) if role == "kernel" else BootImages(kernel, other))


ROLES = pytest.mark.parametrize("role", ["kernel", "initrd"])


@ROLES
def test_fifo_is_refused_without_blocking(
    memory: GuestMemory, kernel: Path, tmp_path: Path, role: str
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            load_with(memory, kernel, fifo, role)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # blocked in open(): be the writer it waits for, then fail
        with open(fifo, "wb"):
            pass
        worker.join(10)
        pytest.fail(f"opening a FIFO as the {role} blocked")
    assert len(errors) == 1 and isinstance(errors[0], ImageError)
    assert str(errors[0]) == f"{fifo}: {role} is a FIFO, not a regular file"


@ROLES
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_character_device_is_refused(memory: GuestMemory, kernel: Path, role: str, device: str) -> None:
    with pytest.raises(ImageError, match=f"^{device}: {role} is a character device, not a regular file$"):
        load_with(memory, kernel, Path(device), role)


@ROLES
def test_symlink_to_a_device_is_refused(memory: GuestMemory, kernel: Path, tmp_path: Path, role: str) -> None:
    link = tmp_path / "looks-like-a-file"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageError, match=f"^{link}: {role} is a character device"):
        load_with(memory, kernel, link, role)


@ROLES
def test_socket_is_refused(memory: GuestMemory, kernel: Path, tmp_path: Path, role: str) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with pytest.raises(ImageError, match=f"^{path}: {role} is a socket, not a regular file$"):
            load_with(memory, kernel, path, role)


@ROLES
def test_sparse_giant_is_refused_unread(memory: GuestMemory, kernel: Path, tmp_path: Path, role: str) -> None:
    """100 GB of holes: refused from stat() alone, before a byte is read."""
    giant = tmp_path / "giant.img"
    with open(giant, "wb") as file:
        file.truncate(100 * 10**9)
    message = f"^{giant}: {role} is too big: 95367 MiB, more than the guest's {RAM_MIB} MiB of RAM$"
    with pytest.raises(ImageError, match=message):
        load_with(memory, kernel, giant, role)


@ROLES
def test_one_byte_more_than_ram_is_refused(
    memory: GuestMemory, kernel: Path, tmp_path: Path, role: str
) -> None:
    big = tmp_path / "big.img"
    with open(big, "wb") as file:
        file.truncate(RAM_MIB * MiB + 1)
    with pytest.raises(ImageError, match=f"^{big}: {role} is too big: {RAM_MIB} MiB, more than the guest's"):
        load_with(memory, kernel, big, role)


def test_a_file_as_large_as_ram_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "exact"
    path.write_bytes(b"\x01" * 8192)
    assert read_image(path, "initrd", 8192) == b"\x01" * 8192


def test_files_that_announce_no_size_are_read_to_their_end() -> None:
    """Files in /proc say st_size 0 and have content; the limit still holds."""
    proc = Path("/proc/self/mounts")
    content = read_image(proc, "initrd", GiB)
    assert content and content.startswith(proc.read_bytes()[:16])
    with pytest.raises(
        ImageError, match=r"^/proc/self/mounts: initrd is too big: more than the guest's 8 bytes"
    ):
        read_image(proc, "initrd", 8)


def test_path_with_a_nul_byte(memory: GuestMemory) -> None:
    with pytest.raises(ImageError, match=r"not a usable kernel path: embedded null byte"):
        load(memory, BootImages(Path("ker\0nel")))


def test_path_through_a_file(memory: GuestMemory, kernel: Path) -> None:
    with pytest.raises(ImageError, match=f"^{kernel}/x: cannot read kernel: Not a directory$"):
        load(memory, BootImages(kernel / "x"))
