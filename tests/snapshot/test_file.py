"""The snapshot file: round trips, sparse memory, MAP_PRIVATE restore, atomic
replacement (a writer killed by SIGKILL), and the reader against damaged and hostile
files (hypothesis)."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from guest_code import real_mode_guest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.errors import StateError
from pyvmm.images.progress import Progress
from pyvmm.kvm import ExitReason
from pyvmm.memory import PAGE_SIZE, GuestMemory
from pyvmm.snapshot import file as snapshot_file
from pyvmm.snapshot import memory_image
from pyvmm.snapshot.file import SnapshotError, read_snapshot, write_snapshot
from pyvmm.snapshot.progress import SnapshotProgress

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
PARTS = {"config": b'{"memory": 8}', "vcpu/0": bytes(range(256)) * 3, "empty": b"", "état": b"\xff"}


def _patterned_memory() -> GuestMemory:
    """Two regions: random pages, a page only read, a page written then zeroed, and
    the last page of each region; everything else never touched."""
    memory = GuestMemory([(0, 8 * MiB), (16 * MiB, 4 * MiB)])
    memory.write(0x3000, os.urandom(5 * PAGE_SIZE))
    memory.read(0x10000, PAGE_SIZE)  # present in pagemap (the zero page), still zero
    memory.write(0x20000, b"\x01" * PAGE_SIZE)
    memory.write(0x20000, bytes(PAGE_SIZE))  # present and zero
    memory.write(8 * MiB - 9, b"end of r0")
    memory.write(20 * MiB - 2, b"r1")
    memory.write(16 * MiB, b"\x00" * 100 + b"\x07")  # non-zero past the start of a page
    return memory


def _same_memory(left: GuestMemory, right: GuestMemory) -> bool:
    assert left.ram_ranges() == right.ram_ranges()
    return all(
        left.read(start, end - start) == right.read(start, end - start) for start, end in left.ram_ranges()
    )


def _data_ranges(path: Path) -> list[tuple[int, int]]:
    """The file's data extents (SEEK_DATA/SEEK_HOLE)."""
    ranges = []
    with open(path, "rb") as handle:
        fd, size, position = handle.fileno(), os.fstat(handle.fileno()).st_size, 0
        while position < size:
            try:
                data = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:
                break
            position = os.lseek(fd, data, os.SEEK_HOLE)
            ranges.append((data, position))
    return ranges


def test_round_trip_keeps_parts_and_memory_and_leaves_untouched_pages_holes(tmp_path: Path) -> None:
    memory = _patterned_memory()
    path = tmp_path / "vm.snap"
    info = write_snapshot(path, PARTS, memory)
    status = path.stat()
    assert (info.size, info.allocated) == (status.st_size, status.st_blocks * 512)
    touched = 5 + 1 + 1 + 1  # data pages: 5 random, two region ends, one at 16 MiB
    assert status.st_blocks * 512 <= touched * PAGE_SIZE + MiB
    with read_snapshot(path, verify_memory=True) as snapshot:
        assert dict(snapshot.parts) == PARTS and snapshot.version == 1
        assert [(r.gpa, r.size, r.data_pages) for r in snapshot.regions] == [
            (0, 8 * MiB, 6),
            (16 * MiB, 4 * MiB, 2),
        ]
        restored = snapshot.guest_memory()
        image = snapshot.regions[0].file_offset
    assert _same_memory(memory, restored)
    with read_snapshot(path) as snapshot:
        snapshot.guest_memory([(16 * MiB, 4 * MiB), (0, 8 * MiB)]).close()  # in any order
        with pytest.raises(
            SnapshotError, match=r"guest memory 0x0\+0x800000, .* the machine has 0x0\+0x1000000"
        ):
            snapshot.guest_memory([(0, 16 * MiB)])
    # The pages only read, or zeroed, take no block: no data extent reaches them.
    for page in (0x10000, 0x20000, 0x100000):
        assert not any(
            start < image + page + PAGE_SIZE and image + page < end for start, end in _data_ranges(path)
        )
    restored.close()
    memory.close()


def test_without_pagemap_every_page_is_read_and_the_file_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = _patterned_memory()
    write_snapshot(tmp_path / "pagemap.snap", PARTS, memory)
    monkeypatch.setattr(memory_image, "_PAGEMAP", str(tmp_path / "no-pagemap"))
    assert memory_image.candidate_pages(memory.regions[0]) == b"\x01" * (8 * MiB // PAGE_SIZE)
    info = write_snapshot(tmp_path / "scan.snap", PARTS, memory)
    assert (tmp_path / "scan.snap").read_bytes() == (tmp_path / "pagemap.snap").read_bytes()
    assert info.allocated <= 8 * PAGE_SIZE + MiB
    memory.close()


def test_restored_memory_is_a_private_copy(tmp_path: Path) -> None:
    memory = _patterned_memory()
    path = tmp_path / "vm.snap"
    write_snapshot(path, PARTS, memory)
    before = hashlib.sha256(path.read_bytes()).digest()
    with read_snapshot(path) as snapshot:
        restored = snapshot.guest_memory()
    restored.write(0x3000, b"guest wrote this")
    restored.fill(0, 8 * MiB)  # zeroing a file-backed region must not bring the file back
    assert restored.read(0x3000, 16) == bytes(16)
    assert hashlib.sha256(path.read_bytes()).digest() == before
    read_snapshot(path, verify_memory=True).close()
    restored.close()
    memory.close()


def test_a_snapshot_of_restored_memory_holds_what_the_file_had_and_what_changed(tmp_path: Path) -> None:
    """Pages never touched since the restore live only in the old file; the new one,
    written over the same path while the old is mapped, must still hold them."""
    memory = _patterned_memory()
    path = tmp_path / "vm.snap"
    write_snapshot(path, PARTS, memory)
    with read_snapshot(path) as snapshot:
        restored = snapshot.guest_memory()
    restored.write(0x40000, b"after restore")
    memory.write(0x40000, b"after restore")
    write_snapshot(path, {"second": b"2"}, restored)
    with read_snapshot(path, verify_memory=True) as snapshot:
        assert dict(snapshot.parts) == {"second": b"2"}
        again = snapshot.guest_memory()
    assert _same_memory(memory, again)
    for each in (memory, restored, again):
        each.close()


@pytest.mark.kvm
def test_a_guest_runs_on_restored_memory(tmp_path: Path) -> None:
    """Real-mode code copies a byte the snapshot holds at 0x5000 to 0x6000: KVM faults
    the page in from the file, the write lands in the private copy and the dirty log."""
    memory = GuestMemory([(0, MiB)])
    memory.write_u8(0x5000, 0x5A)
    path = tmp_path / "vm.snap"
    write_snapshot(path, {}, memory)
    memory.close()
    before = path.read_bytes()
    with read_snapshot(path) as snapshot:
        restored = snapshot.guest_memory()
    # mov al, [0x5000] ; mov [0x6000], al ; hlt
    code = bytes.fromhex("a00050a20060f4")
    with real_mode_guest(code, memory=restored, log_dirty=True) as (vm, vcpu):
        list(restored.dirty_pages(vm))
        assert vcpu.run() == ExitReason.HLT
        assert 0x6000 in set(restored.dirty_pages(vm))
    assert restored.read_u8(0x6000) == 0x5A
    assert path.read_bytes() == before
    restored.close()


def test_progress_goes_from_zero_to_the_whole_memory(tmp_path: Path) -> None:
    memory = _patterned_memory()
    calls: list[tuple[int, int]] = []
    write_snapshot(tmp_path / "vm.snap", PARTS, memory, lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, memory.size) and calls[-1] == (memory.size, memory.size)
    assert all(total == memory.size for _, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    stream = io.StringIO()
    shown = SnapshotProgress(Progress(stream, live=True, prefix="pyvmm"))
    write_snapshot(tmp_path / "vm.snap", PARTS, memory, shown)
    assert "pyvmm: snapshot" in stream.getvalue() and "done in" in stream.getvalue()
    assert stream.getvalue().rstrip().endswith("(12 MiB)")
    memory.close()


def test_a_failed_write_leaves_the_old_snapshot_and_no_temporary_file(tmp_path: Path) -> None:
    memory = _patterned_memory()
    path = tmp_path / "vm.snap"
    write_snapshot(path, {"old": b"1"}, memory)
    old = path.read_bytes()

    def interrupted(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_snapshot(path, {"new": b"2"}, memory, interrupted)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["vm.snap"]
    with pytest.raises(SnapshotError, match="cannot write a snapshot"):
        write_snapshot(tmp_path / "missing" / "vm.snap", {}, memory)
    memory.close()


_KILLED_WRITER = """
import os, signal, sys
from pyvmm.memory import GuestMemory
from pyvmm.snapshot.file import write_snapshot
memory = GuestMemory([(0, 64 << 20)])
memory.write(0, os.urandom(48 << 20))
def progress(done, total):
    if done >= total // 2:
        os.kill(os.getpid(), signal.SIGKILL)
write_snapshot(sys.argv[1], {"new": b"2"}, memory, progress)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_snapshot_whole(tmp_path: Path) -> None:
    memory = _patterned_memory()
    path = tmp_path / "vm.snap"
    write_snapshot(path, {"old": b"1"}, memory)
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=ROOT, capture_output=True, timeout=60
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    leftovers = [name for name in os.listdir(tmp_path) if name != "vm.snap"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".vm.snap.") and leftovers[0].endswith(".tmp")
    assert os.path.getsize(tmp_path / leftovers[0]) > 32 * MiB  # it was killed while writing memory
    with read_snapshot(path, verify_memory=True) as snapshot:
        assert dict(snapshot.parts) == {"old": b"1"}
        restored = snapshot.guest_memory()
    assert _same_memory(memory, restored)
    restored.close()
    memory.close()


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"": b""}, "name"),
        ({"x" * 65: b""}, "name"),
        ({"a\0b": b""}, "name"),
        ({"\udc80": b""}, "name"),
        ({"ok": "text"}, "str name and bytes"),
        ({f"p{i}": b"" for i in range(257)}, "at most 256"),
    ],
)
def test_the_writer_refuses_parts_it_cannot_store(
    tmp_path: Path, parts: dict[str, Any], message: str
) -> None:
    memory = GuestMemory([(0, 4 * PAGE_SIZE)])
    with pytest.raises(SnapshotError, match=message):
        write_snapshot(tmp_path / "vm.snap", parts, memory)
    assert os.listdir(tmp_path) == []
    memory.close()


# ---------------------------------------------------------------- hostile files


@functools.cache
def _sample() -> tuple[bytes, int]:
    """A small real snapshot (two regions of 16 KiB with data and holes, three parts)
    and where its memory starts."""
    memory = GuestMemory([(0, 4 * PAGE_SIZE), (0x10000, 4 * PAGE_SIZE)])
    memory.write(PAGE_SIZE, b"\x11" * PAGE_SIZE)
    memory.write(0x10000 + 3 * PAGE_SIZE + 7, b"x")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sample.snap"
        write_snapshot(path, {"config": b"c" * 40, "state": b"s" * 300, "empty": b""}, memory)
        data = path.read_bytes()
        with read_snapshot(path) as snapshot:
            memory_offset = snapshot.regions[0].file_offset
    memory.close()
    return data, memory_offset


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the damaged files go (module-scoped: hypothesis reruns a test many times)."""
    return tmp_path_factory.mktemp("damaged") / "damaged.snap"


def _read_back(path: Path, data: bytes, *, verify_memory: bool = False) -> snapshot_file.SnapshotFile:
    path.write_bytes(data)
    return read_snapshot(path, verify_memory=verify_memory)


def test_the_sample_is_accepted(scratch: Path) -> None:
    data, memory_offset = _sample()
    with _read_back(scratch, data, verify_memory=True) as snapshot:
        assert snapshot.parts["state"] == b"s" * 300
        restored = snapshot.guest_memory()
    assert restored.read(0x10000 + 3 * PAGE_SIZE + 7, 1) == b"x"
    restored.close()
    assert memory_offset == PAGE_SIZE


@given(st.data())
def test_a_truncated_or_extended_file_is_refused(scratch: Path, data: st.DataObject) -> None:
    sample, _ = _sample()
    length = data.draw(
        st.integers(0, len(sample) - 1) | st.integers(len(sample) + 1, len(sample) + 3 * PAGE_SIZE)
    )
    damaged = sample[:length] + bytes(max(0, length - len(sample)))
    with pytest.raises(SnapshotError):
        _read_back(scratch, damaged)


@settings(max_examples=300)
@given(st.data())
def test_flipped_bits_are_refused(scratch: Path, data: st.DataObject) -> None:
    """Any flip before the memory images is refused by the plain read; a flip inside
    them only when memory is verified (it is guest data, not read at restore)."""
    sample, memory_offset = _sample()
    damaged = bytearray(sample)
    in_metadata = data.draw(st.booleans())
    span = (0, memory_offset - 1) if in_metadata else (memory_offset, len(sample) - 1)
    for offset in data.draw(st.lists(st.integers(*span), min_size=1, max_size=8, unique=True)):
        damaged[offset] ^= 1 << data.draw(st.integers(0, 7))
    if in_metadata:
        with pytest.raises(SnapshotError):
            _read_back(scratch, bytes(damaged))
    else:
        _read_back(scratch, bytes(damaged)).close()
        with pytest.raises(SnapshotError, match="checksum"):
            _read_back(scratch, bytes(damaged), verify_memory=True)


_HEADER_WORDS = st.sampled_from([0, 1, 7, PAGE_SIZE - 1, PAGE_SIZE, 0x10000, 1 << 31, 1 << 52, (1 << 64) - 1])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_header_with_a_recomputed_checksum_is_checked_field_by_field(
    scratch: Path, data: st.DataObject
) -> None:
    """Someone who rewrites header words and recomputes the (unkeyed) digest gets a
    refusal, or a file whose every table entry is in place: it maps as guest memory."""
    sample, memory_offset = _sample()
    header_size = snapshot_file._header_size(3, 2)
    damaged = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 3))):
        word = data.draw(st.integers(2, (header_size - 32) // 4 - 1)) * 4  # after the magic
        size = data.draw(st.sampled_from([4, 8])) if word + 8 <= header_size - 32 else 4
        value = data.draw(_HEADER_WORDS | st.integers(0, (1 << 32) - 1)) % (1 << (8 * size))
        damaged[word : word + size] = value.to_bytes(size, "little")
    damaged[header_size - 32 : header_size] = hashlib.blake2b(
        damaged[: header_size - 32], digest_size=32
    ).digest()
    try:
        snapshot = _read_back(scratch, bytes(damaged))
    except SnapshotError:
        return
    with snapshot:
        end = os.path.getsize(scratch)
        for region in snapshot.regions:
            assert region.gpa % PAGE_SIZE == 0 and region.size % PAGE_SIZE == 0
            assert memory_offset <= region.file_offset and region.file_offset + region.size <= end
        snapshot.guest_memory().close()


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (8, "<I", 2, "format version 2; this pyvmm reads version 1"),
        (12, "<I", 1, "unknown flags"),
        (16, "<I", 0xFFFF_FFFF, "too many"),
        (20, "<I", 0, "too many or none"),
        (24, "<Q", 1 << 40, "out of place"),
    ],
)
def test_the_reader_names_what_it_refuses(
    scratch: Path, offset: int, fmt: str, value: int, message: str
) -> None:
    sample, _ = _sample()
    damaged = bytearray(sample)
    struct.pack_into(fmt, damaged, offset, value)
    with pytest.raises(SnapshotError, match=message):
        _read_back(scratch, bytes(damaged))


def test_other_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("hello, not a snapshot\n")
    (tmp_path / "empty").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    for name, message in [
        ("text", "not a pyvmm snapshot"),
        ("empty", "not a pyvmm snapshot"),
        ("fifo", "not a regular file"),
        (".", "not a regular file"),
        ("missing", "cannot open"),
    ]:
        with pytest.raises(SnapshotError, match=message):
            read_snapshot(tmp_path / name)
    assert issubclass(SnapshotError, StateError)
