"""Pick the loader for a kernel file and run it (docs/boot.md, "What pyvmm boots").

Detection order: a Linux bzImage (boot sector signature 0xAA55 at 0x1fe and "HdrS"
at 0x202, Linux boot.rst), a Multiboot header in the first 8 KiB, then a 64-bit x86
ELF file (a vmlinux); a 32-bit ELF file without a Multiboot header is refused. A
file that is none of these boots as a flat binary only when it is a 512-byte boot
sector (55 AA at 510, as a PC BIOS checks) or the user said kernel format "flat";
anything else is refused, as QEMU refuses a -kernel that is not a kernel. With
"flat" no detection is done: a raw binary may hold any bytes. Flat binaries take no
initrd.
"""

from __future__ import annotations

import logging

from pyvmm.boot.elf import ElfClass, elf_class, is_elf
from pyvmm.boot.entry import BootImages, EntryPoint
from pyvmm.boot.files import read_image
from pyvmm.boot.multiboot import find_header, load_multiboot
from pyvmm.boot.setup_header import is_bzimage
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

EXPECTED = (
    "a Linux bzImage, a Multiboot kernel, an x86-64 ELF kernel or a 512-byte boot sector ending in 55 AA"
)


def load(memory: GuestMemory, images: BootImages) -> EntryPoint:
    """Load `images` into guest memory and say how the bootstrap CPU starts."""
    name = str(images.kernel)
    # Nothing larger than guest RAM could be loaded, so nothing larger is read.
    kernel = read_image(images.kernel, "kernel", memory.size)
    if not kernel:
        raise ImageError(f"{name}: kernel file is empty")
    initrd = read_image(images.initrd, "initrd", memory.size) if images.initrd is not None else None
    entry = _load(memory, kernel, images, initrd, name)
    for start, end, what in entry.loaded:
        log.debug("loaded %s at [%#x, %#x)", what, start, end)
    log.info("%s: entry %#x (%s)", entry.description, entry.rip, entry.mode.value)
    return entry


def _load(
    memory: GuestMemory, kernel: bytes, images: BootImages, initrd: bytes | None, name: str
) -> EntryPoint:
    # The loaders of the other formats (and the decompressors) load with their format:
    # they are a large part of the start-up of a small guest.
    if images.kernel_format == "flat":
        return _load_flat(memory, kernel, images, initrd, name)
    if is_bzimage(kernel):
        from pyvmm.boot.bzimage import load_bzimage

        return load_bzimage(memory, kernel, images, initrd)
    if (header := find_header(kernel, name)) is not None:
        return load_multiboot(memory, kernel, images, initrd, header)
    if is_elf(kernel) and elf_class(kernel) == ElfClass.ELF32:
        raise ImageError(f"{name}: 32-bit ELF without a Multiboot header is not bootable")
    if is_elf(kernel):
        from pyvmm.boot.elf64 import load_elf64

        return load_elf64(memory, kernel, images, initrd)  # refuses all but x86-64 ELF64
    from pyvmm.boot.flat import is_boot_sector

    if is_boot_sector(kernel):
        return _load_flat(memory, kernel, images, initrd, name)
    raise ImageError(
        f"{name}: not a kernel pyvmm recognises ({len(kernel)} bytes, starting {kernel[:8].hex(' ')}): "
        f"expected {EXPECTED}; to boot a raw real-mode binary say --kernel-format flat"
    )


def _load_flat(
    memory: GuestMemory, kernel: bytes, images: BootImages, initrd: bytes | None, name: str
) -> EntryPoint:
    from pyvmm.boot.flat import load_flat

    if initrd is not None:
        raise ImageError(f"{name}: a flat binary takes no initrd (got --initrd {images.initrd})")
    return load_flat(memory, kernel, name)
