"""The command line and file names reach the guest as the user's bytes, through every
loader: Linux takes the command line as bytes (boot.rst "cmd_line_ptr"), so does
Multiboot (§3.3 "cmdline", module "string"), and command-line arguments reach
Python as str with surrogateescape, which os.fsencode undoes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from boot.boot_images import MODULE, c_string, multiboot_elf, read_mbi
from boot.linux_images import bzimage, vmlinux

from pyvmm.boot import BootImages, CpuMode, EntryPoint, load
from pyvmm.errors import ConfigError, ImageError
from pyvmm.memory import GuestMemory

RAW = b"root=/dev/vda \xff\xfe caf\xc3\xa9"  # not UTF-8, then UTF-8
AS_TYPED = os.fsdecode(RAW)  # what sys.argv holds for those bytes
PVH_MAGIC = 0x336EC578
MULTIBOOT_MAGIC = 0x2BADB002


def write(tmp_path: Path, name: str | bytes, data: bytes) -> Path:
    path = tmp_path / os.fsdecode(name)
    path.write_bytes(data)
    return path


def guest_cmdline(memory: GuestMemory, entry: EntryPoint) -> bytes:
    """Follow the boot information the entry registers point at to the command line."""
    if entry.mode is CpuMode.LONG64:  # a zero page: cmd_line_ptr at 0x228
        return c_string(memory, memory.read_u32(entry.registers["rsi"] + 0x228))
    info = entry.registers["rbx"]
    if entry.registers.get("rax") == MULTIBOOT_MAGIC:
        return c_string(memory, read_mbi(memory, info)["cmdline"])
    assert memory.read_u32(info) == PVH_MAGIC  # hvm_start_info: cmdline_paddr at 24
    return c_string(memory, struct.unpack_from("<Q", memory.read(info + 24, 8))[0])


KERNELS = {
    "bzImage host, PVH": (lambda: bzimage(), "host"),
    "bzImage host, 64-bit entry": (lambda: bzimage(vmlinux(pvh=None)), "host"),
    "bzImage guest": (lambda: bzimage(), "guest"),
    "vmlinux, PVH": (lambda: vmlinux(), "host"),
    "ELF64, 64-bit entry": (lambda: vmlinux(pvh=None), "host"),
}


@pytest.mark.parametrize("kind", list(KERNELS))
@pytest.mark.parametrize("cmdline", [AS_TYPED, RAW], ids=["str", "bytes"])
def test_linux_loaders_pass_the_bytes(
    memory: GuestMemory, tmp_path: Path, kind: str, cmdline: str | bytes
) -> None:
    build, decompress = KERNELS[kind]
    images = BootImages(write(tmp_path, "kernel", build()), cmdline=cmdline, kernel_decompress=decompress)
    assert guest_cmdline(memory, load(memory, images)) == RAW


@pytest.mark.parametrize("cmdline", [AS_TYPED, RAW], ids=["str", "bytes"])
def test_multiboot_strings_are_the_bytes_of_names_and_command_line(
    memory: GuestMemory, tmp_path: Path, cmdline: str | bytes
) -> None:
    kernel = write(tmp_path, b"kernel-\xe9.elf", multiboot_elf().build())
    initrd = write(tmp_path, b"initrd-\xff.img", b"module")
    entry = load(memory, BootImages(kernel, initrd, cmdline))
    assert guest_cmdline(memory, entry) == os.fsencode(kernel) + b" " + RAW
    module = MODULE.unpack(memory.read(read_mbi(memory, entry.registers["rbx"])["mods_addr"], MODULE.size))
    assert c_string(memory, module[2]) == os.fsencode(initrd)
    assert os.fsencode(initrd).endswith(b"/initrd-\xff.img")


def test_bzimage_cmdline_size_counts_bytes(memory: GuestMemory, tmp_path: Path) -> None:
    kernel = write(tmp_path, "vmlinuz", bzimage(cmdline_size=4))
    assert (
        guest_cmdline(memory, load(memory, BootImages(kernel, cmdline=b"\xff\xfe\xfd\xfc")))
        == b"\xff\xfe\xfd\xfc"
    )
    message = r"vmlinuz: kernel command line is 5 bytes; this kernel takes at most 4 \(cmdline_size\)$"
    for too_long in (b"\xff" * 5, "é\udcffxy"):  # the str has 4 characters and 5 bytes
        with pytest.raises(ImageError, match=message):
            load(memory, BootImages(kernel, cmdline=too_long))


@pytest.mark.parametrize("cmdline", [b"a\0b", "a\0b"])
def test_nul_is_refused_in_bytes_too(memory: GuestMemory, tmp_path: Path, cmdline: str | bytes) -> None:
    kernel = write(tmp_path, "vmlinux", vmlinux())
    with pytest.raises(ImageError, match=r"kernel command line contains a NUL character$"):
        load(memory, BootImages(kernel, cmdline=cmdline))


def test_unencodable_command_line_is_a_config_error() -> None:
    """A lone surrogate that no argv byte decodes to (only the Python API can make one)."""
    with pytest.raises(ConfigError, match=r"^kernel command line cannot be encoded as bytes: .* at index 2$"):
        BootImages(Path("k"), cmdline="ab\ud800")
