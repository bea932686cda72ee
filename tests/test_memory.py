"""GuestMemory: layout, bounds checks, and the dirty log on a real VM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from guest_code import real_mode_guest
from hypothesis import given
from hypothesis import strategies as st

from pyvmm.errors import ConfigError, GuestMemoryError
from pyvmm.kvm import ExitReason, Kvm
from pyvmm.memory import PAGE_SIZE, GuestMemory, split_around_hole

MiB = 1 << 20
GiB = 1 << 30


def test_layout_skips_the_mmio_hole() -> None:
    assert split_around_hole(256 * MiB, 3 * GiB, 4 * GiB) == [(0, 256 * MiB)]
    assert split_around_hole(5 * GiB, 3 * GiB, 4 * GiB) == [(0, 3 * GiB), (4 * GiB, 2 * GiB)]


def test_large_sparse_guest_has_two_regions() -> None:
    memory = GuestMemory(split_around_hole(5 * GiB, 3 * GiB, 4 * GiB))
    assert memory.ram_ranges() == [(0, 3 * GiB), (4 * GiB, 6 * GiB)]
    assert memory.size == 5 * GiB
    memory.write_u64(4 * GiB + 8, 0xDEADBEEF)
    assert memory.read_u64(4 * GiB + 8) == 0xDEADBEEF
    with pytest.raises(GuestMemoryError):
        memory.read(3 * GiB, 1)  # the hole
    memory.close()


def test_reads_writes_and_views() -> None:
    memory = GuestMemory([(0, MiB)])
    memory.write(0x1000, b"hello")
    assert memory.read(0x1000, 5) == b"hello"
    view = memory.view(0x1000, 5)
    view[0:1] = b"j"
    assert memory.read(0x1000, 5) == b"jello"
    memory.write_u32(0x2000, 0x11223344)
    assert memory.read_u8(0x2000) == 0x44
    assert memory.read_u16(0x2000) == 0x3344
    assert memory.contains(MiB - 4, 4) and not memory.contains(MiB - 4, 5)


@given(st.integers(min_value=-(1 << 64), max_value=1 << 64), st.integers(min_value=-16, max_value=1 << 21))
def test_every_access_is_checked(gpa: int, length: int) -> None:
    size = 64 * PAGE_SIZE
    memory = GuestMemory([(0, size)])
    if gpa >= 0 and length >= 0 and gpa + length <= size:
        assert len(memory.read(gpa, length)) == length
    else:
        with pytest.raises(GuestMemoryError):
            memory.read(gpa, length)
    data = b"\xaa" * max(min(length, 2 * size), 0)
    if gpa >= 0 and gpa + len(data) <= size:
        memory.write(gpa, data)
        assert memory.read(gpa, len(data)) == data
    else:
        with pytest.raises(GuestMemoryError):
            memory.write(gpa, data)
    memory.close()


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(ConfigError):
        GuestMemory([])
    with pytest.raises(ConfigError):
        GuestMemory([(0, 1000)])
    with pytest.raises(ConfigError):
        GuestMemory([(0, 2 * PAGE_SIZE), (PAGE_SIZE, PAGE_SIZE)])


@pytest.mark.kvm
def test_dirty_log_reports_pages_the_guest_wrote() -> None:
    """Real-mode code stores to 0x5000 and 0x9000; the dirty log names those pages."""
    memory = GuestMemory([(0, MiB)])
    # mov byte [0x5000], 1 ; mov byte [0x9000], 2 ; hlt
    code = bytes.fromhex("c606005001c606009002f4")
    with real_mode_guest(code, memory=memory, log_dirty=True) as (vm, vcpu):
        list(memory.dirty_pages(vm))  # clear whatever the loader write dirtied
        assert vcpu.run() == ExitReason.HLT
        dirty = set(memory.dirty_pages(vm))
        assert {0x5000, 0x9000} <= dirty
        assert memory.read_u8(0x5000) == 1 and memory.read_u8(0x9000) == 2
    memory.close()


def resident_bytes() -> int:
    """This process's resident set now (proc(5), /proc/self/statm field 2)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def test_fill_zeroes_gigabytes_without_host_memory() -> None:
    """A bss of 1 GiB (an ELF's p_memsz) costs neither a Python buffer nor RSS."""
    import tracemalloc

    memory = GuestMemory([(0, 2 * GiB)])
    try:
        memory.write(0x1000, b"\x11" * 0x2000)  # the edges of the range, and a page inside it
        memory.write(0x1000 + GiB, b"\x22" * 0x2000)
        resident = resident_bytes()
        tracemalloc.start()
        try:
            memory.fill(0x1001, GiB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < MiB
        assert resident_bytes() - resident < 16 * MiB
        assert memory.read(0x1000, 1) == b"\x11"
        assert memory.read(0x1001, 0x2000) == bytes(0x2000)
        assert memory.read(0x1000 + GiB, 2) == b"\x00\x22"  # the last byte filled, the first after it
        assert memory.read(GiB - 4, 8) == bytes(8)
    finally:
        memory.close()


@pytest.mark.parametrize(
    ("gpa", "length", "byte"), [(0, 3 * PAGE_SIZE, 0xAB), (5, 7, 0), (PAGE_SIZE - 1, 2, 0), (0, 0, 0)]
)
def test_fill_sets_exactly_the_range(gpa: int, length: int, byte: int) -> None:
    memory = GuestMemory([(0, 4 * PAGE_SIZE)])
    try:
        memory.write(0, b"\x5a" * 4 * PAGE_SIZE)
        memory.fill(gpa, length, byte)
        expected = bytearray(b"\x5a" * 4 * PAGE_SIZE)
        expected[gpa : gpa + length] = bytes([byte]) * length
        assert memory.read(0, 4 * PAGE_SIZE) == expected
        with pytest.raises(GuestMemoryError):
            memory.fill(3 * PAGE_SIZE, PAGE_SIZE + 1)
        with pytest.raises(ValueError, match="fill byte 256"):
            memory.fill(0, 1, 256)
    finally:
        memory.close()


def _file_of_pages(tmp_path: Path, *pages: bytes) -> Path:
    path = tmp_path / "ram.img"
    path.write_bytes(b"".join(page.ljust(PAGE_SIZE, b"\0") for page in pages))
    return path


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_memory_from_a_file_is_a_private_lazy_copy(tmp_path: Path) -> None:
    path = _file_of_pages(tmp_path, b"header", b"page one", b"page two", b"page three")
    fds = _open_fds()
    with open(path, "rb") as image:
        memory = GuestMemory.from_file(
            image.fileno(), [(0x10000, PAGE_SIZE, 3 * PAGE_SIZE), (0, 2 * PAGE_SIZE, PAGE_SIZE)]
        )
    assert memory.ram_ranges() == [(0, 2 * PAGE_SIZE), (0x10000, 0x10000 + PAGE_SIZE)]
    assert memory.read(0, 8) == b"page one" and memory.read(PAGE_SIZE, 8) == b"page two"
    assert memory.read(0x10000, 10) == b"page three"
    memory.write(0, b"PAGE")
    memory.fill(0x10000, PAGE_SIZE)  # zeros, not the file's page back (MADV_DONTNEED would)
    assert memory.read(0, 8) == b"PAGE one" and memory.read(0x10000, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert path.read_bytes()[PAGE_SIZE : PAGE_SIZE + 8] == b"page one"
    assert path.read_bytes()[3 * PAGE_SIZE : 3 * PAGE_SIZE + 10] == b"page three"
    with pytest.raises(GuestMemoryError):
        memory.read(2 * PAGE_SIZE, 1)
    memory.close()
    assert _open_fds() == fds  # the duplicate it kept is closed


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ([(0, PAGE_SIZE, 1)], "page-aligned"),
        ([(0, 100, 0)], "page-aligned"),
        ([], "non-empty"),
        ([(0, 2 * PAGE_SIZE, 0), (PAGE_SIZE, PAGE_SIZE, 0)], "overlap"),
        ([(0, 4 * PAGE_SIZE, 2 * PAGE_SIZE)], "cannot map"),  # past the end of the file
    ],
)
def test_memory_from_a_file_refuses_bad_layouts(
    tmp_path: Path, layout: list[tuple[int, int, int]], message: str
) -> None:
    path = _file_of_pages(tmp_path, b"a", b"b", b"c", b"d")
    fds = _open_fds()
    with open(path, "rb") as image, pytest.raises(ConfigError, match=message):
        GuestMemory.from_file(image.fileno(), layout)
    assert _open_fds() == fds
    with pytest.raises(ConfigError, match="cannot map"):
        GuestMemory.from_file(-1, [(0, PAGE_SIZE, 0)])


@pytest.mark.kvm
def test_memory_from_a_file_registers_with_kvm(tmp_path: Path) -> None:
    path = _file_of_pages(tmp_path, b"\x90" * 16, b"x")
    with open(path, "rb") as image:
        memory = GuestMemory.from_file(image.fileno(), [(0, 2 * PAGE_SIZE, 0)])
    with Kvm() as kvm, kvm.create_vm() as vm:
        memory.register(vm, log_dirty=True)
        assert list(memory.dirty_pages(vm)) == []
    memory.close()
