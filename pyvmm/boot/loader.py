"""Pick the loader for a kernel file and run it (docs/boot.md, "What pyvmm boots").

Detection order: a Linux bzImage (boot sector signature 0xAA55 at 0x1fe and "HdrS"
at 0x202, Linux boot.rst), a Multiboot header in the first 8 KiB, then a 64-bit x86
ELF file (a vmlinux); a 32-bit ELF file without a Multiboot header is refused;
anything else is a flat binary, which takes no initrd.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pyvmm.boot.elf import ElfClass, elf_class, is_elf
from pyvmm.boot.entry import BootImages, EntryPoint
from pyvmm.boot.multiboot import find_header, load_multiboot
from pyvmm.boot.setup_header import is_bzimage
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)


def read_image(path: Path, what: str) -> bytes:
    """The whole file, or an ImageError naming it and why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: {what} is a directory, not a file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def load(memory: GuestMemory, images: BootImages) -> EntryPoint:
    """Load `images` into guest memory and say how the bootstrap CPU starts."""
    name = str(images.kernel)
    kernel = read_image(images.kernel, "kernel")
    if not kernel:
        raise ImageError(f"{name}: kernel file is empty")
    initrd = read_image(images.initrd, "initrd") if images.initrd is not None else None

    # The loaders of the other formats (and the decompressors) load with their format:
    # they are a large part of the start-up of a small guest.
    if is_bzimage(kernel):
        from pyvmm.boot.bzimage import load_bzimage

        entry = load_bzimage(memory, kernel, images, initrd)
    elif (header := find_header(kernel, name)) is not None:
        entry = load_multiboot(memory, kernel, images, initrd, header)
    elif is_elf(kernel) and elf_class(kernel) == ElfClass.ELF32:
        raise ImageError(f"{name}: 32-bit ELF without a Multiboot header is not bootable")
    elif is_elf(kernel):
        from pyvmm.boot.elf64 import load_elf64

        entry = load_elf64(memory, kernel, images, initrd)  # refuses all but x86-64 ELF64
    elif initrd is not None:
        raise ImageError(f"{name}: a flat binary takes no initrd (got --initrd {images.initrd})")
    else:
        from pyvmm.boot.flat import load_flat

        entry = load_flat(memory, kernel, name)
    for start, end, what in entry.loaded:
        log.debug("loaded %s at [%#x, %#x)", what, start, end)
    log.info("%s: entry %#x (%s)", entry.description, entry.rip, entry.mode.value)
    return entry
