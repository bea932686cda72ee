"""The loaders' promise for any input (issue 11, "Harden every entrance"): whatever
the kernel file, the initrd and the command line hold, `pyvmm.boot.load` either
returns an EntryPoint that lies in guest RAM or raises one clear VmmError line, and
never uses host memory in proportion to a size the file claims.

Inputs are arbitrary bytes, and every supported format (bzImage in each compression,
with host and guest decompression; vmlinux with and without the PVH note; Multiboot
ELF and a.out; the real test guests; flat binaries and boot sectors) truncated, bit-
flipped and overwritten with boundary values, so that the parsers see plausible
headers with wrong fields, not only noise.
"""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from boot.boot_images import aout_kernel, code, multiboot_elf
from boot.linux_images import FORMATS, bzimage, vmlinux
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.arch.x86.layout import MiB
from pyvmm.boot import BootImages, EntryPoint, load
from pyvmm.errors import VmmError
from pyvmm.memory import GuestMemory

BOOT_SECTOR = code(510) + b"\x55\xaa"
# The most host memory (traced by tracemalloc) one load of these small files may take:
# liblzma's dictionary allowance (65 MiB, decompress.py) and an lz4 block (8 MiB);
# everything else is far smaller. A loader that allocated what a header claims (a
# 4 GiB bss or dictionary, a payload's trailer) would exceed it.
HOST_MEMORY_BOUND = 96 * MiB

GUESTS = ("hello.elf", "mbinfo.elf", "long64.elf", "realmode.bin")
GUESTS = ("hello.elf", "mbinfo.elf", "long64.elf", "realmode.bin")  # build/guests
SEEDS: dict[str, Callable[[Path], bytes]] = {
    **{f"bzImage {fmt}": functools.partial(lambda fmt, _: bzimage(fmt=fmt), fmt) for fmt in FORMATS},
    "bzImage, 64-bit entry": lambda _: bzimage(vmlinux(pvh=None)),
    "vmlinux with PVH note": lambda _: vmlinux(),
    "vmlinux, 64-bit entry": lambda _: vmlinux(pvh=None),
    "Multiboot ELF": lambda _: multiboot_elf().build(),
    "Multiboot a.out": lambda _: aout_kernel(),
    "boot sector": lambda _: BOOT_SECTOR,
    "flat": lambda _: code(300),
    **{name: functools.partial(lambda name, guests: (guests / name).read_bytes(), name) for name in GUESTS},
}
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x200, 0x7FFF_FFFF, 0xFFFF_FFFF, 2**63, 2**64 - 1)


@dataclass(frozen=True)
class Flip:
    at: int
    bit: int

    def apply(self, data: bytearray) -> None:
        if data:
            data[self.at % len(data)] ^= 1 << self.bit


@dataclass(frozen=True)
class Overwrite:
    at: int
    width: int
    value: int

    def apply(self, data: bytearray) -> None:
        if data:
            at = self.at % len(data)
            data[at : at + self.width] = (self.value % 2 ** (8 * self.width)).to_bytes(self.width, "little")


@dataclass(frozen=True)
class Truncate:
    at: int

    def apply(self, data: bytearray) -> None:
        del data[self.at % (len(data) + 1) :]


Mutation = Flip | Overwrite | Truncate

# Offsets: most headers live in the first KiB (ELF and program headers, the Multiboot
# header, the setup header at 0x1f1); anywhere else reaches payloads and notes.
offsets = st.one_of(st.integers(0, 0x400), st.integers(0, 1 << 20))
mutations = st.one_of(
    st.builds(Flip, offsets, st.integers(0, 7)),
    st.builds(
        Overwrite, offsets, st.sampled_from([1, 2, 4, 8]), st.sampled_from(INTERESTING) | st.integers()
    ),
    st.builds(Truncate, offsets),
)


@functools.cache
def seed(name: str, guests: Path) -> bytes:
    return SEEDS[name](guests)


def check_entry(memory: GuestMemory, entry: EntryPoint) -> None:
    """A returned entry starts in guest RAM, and what it says it loaded is in RAM."""
    assert memory.contains(entry.rip, 1), f"entry {entry.rip:#x} outside RAM"
    for start, end, what in entry.loaded:
        assert start <= end and memory.contains(start, end - start), f"{what} [{start:#x}, {end:#x})"


def load_bounded(memory: GuestMemory, images: BootImages) -> None:
    """Load; a VmmError must be one line; host allocations stay under the bound."""
    tracemalloc.start()
    try:
        entry = load(memory, images)
    except VmmError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
    else:
        check_entry(memory, entry)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < HOST_MEMORY_BOUND, f"{peak >> 20} MiB of host memory"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("any-input")
    return directory / "kernel", directory / "initrd"


SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(
    name=st.sampled_from(sorted(SEEDS)),
    changes=st.lists(mutations, max_size=6),
    initrd=st.none() | st.binary(max_size=2048),
    cmdline=st.binary(max_size=80) | st.text(max_size=40),
    kernel_format=st.sampled_from(["auto", "auto", "auto", "flat"]),
    decompress=st.sampled_from(["host", "guest"]),
)
def test_any_mutation_of_any_format_loads_or_raises_one_error(
    memory: GuestMemory,
    guests: Path,
    files: tuple[Path, Path],
    name: str,
    changes: list[Mutation],
    initrd: bytes | None,
    cmdline: bytes | str,
    kernel_format: str,
    decompress: str,
) -> None:
    data = bytearray(seed(name, guests))
    for change in changes:
        change.apply(data)
    kernel_path, initrd_path = files
    kernel_path.write_bytes(data)
    if initrd is not None:
        initrd_path.write_bytes(initrd)
    images = BootImages(
        kernel_path,
        initrd_path if initrd is not None else None,
        cmdline,
        kernel_decompress=decompress,
        kernel_format=kernel_format,
    )
    load_bounded(memory, images)


@SETTINGS
@given(data=st.binary(max_size=8192), kernel_format=st.sampled_from(["auto", "flat"]))
def test_arbitrary_bytes_load_or_raise_one_error(
    memory: GuestMemory, files: tuple[Path, Path], data: bytes, kernel_format: str
) -> None:
    kernel_path, _ = files
    kernel_path.write_bytes(data)
    load_bounded(memory, BootImages(kernel_path, kernel_format=kernel_format))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_loads(memory: GuestMemory, guests: Path, files: tuple[Path, Path], name: str) -> None:
    """The unmutated seeds are valid images: the properties start from real formats."""
    kernel_path, _ = files
    kernel_path.write_bytes(seed(name, guests))
    flat = name in ("flat", "realmode.bin")
    entry = load(memory, BootImages(kernel_path, kernel_format="flat" if flat else "auto"))
    check_entry(memory, entry)
