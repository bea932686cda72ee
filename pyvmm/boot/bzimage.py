"""Booting a Linux bzImage (Linux Documentation/arch/x86/boot.rst), two ways.

- Host decompression (the default): the payload (boot.rst "payload_offset") is
  unpacked here (decompress.py), must be an x86-64 ELF vmlinux, and boots like one
  (elf64.py): through PVH when it has the Xen PVH note, else at its 64-bit entry
  with a zero page that starts as a copy of this bzImage's setup header. The guest
  skips the kernel's own decompressor and its relocation (no KASLR).
- Guest decompression: the classic way. The protected-mode part is loaded at
  0x100000, or at pref_address when the kernel is relocatable and fits there
  (boot.rst "Loading The Rest of The Kernel", "pref_address"), the zero page is the
  setup header copied and filled in as a boot loader does ("Sample Boot
  Configuration"), and the CPU starts at the 64-bit entry, load address + 0x200, in
  long mode with RSI = the zero page ("64-bit Boot Protocol"). The initrd and the
  command line stay out of [load address, runtime start + init_size).
"""

from __future__ import annotations

import logging
import time

from pyvmm.arch.x86.layout import CMDLINE_ADDRESS, HIGH_MEMORY_START, IDENTITY_MAP_END
from pyvmm.boot.decompress import decompress, split_payload
from pyvmm.boot.elf import ElfClass, elf_class, is_elf
from pyvmm.boot.elf64 import load_vmlinux
from pyvmm.boot.entry import BootImages, CpuMode, EntryPoint, KernelDecompress
from pyvmm.boot.initrd import load_initrd
from pyvmm.boot.memory_map import align_up, describe_ram, inside, memory_map, usable_ram
from pyvmm.boot.setup_header import BzImage, parse_bzimage
from pyvmm.boot.zeropage import LoadFlags, XLoadFlags, boot_params, c_string, write_boot_params
from pyvmm.errors import ImageError
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

BZIMAGE_LOAD_ADDRESS = HIGH_MEMORY_START  # boot.rst: "0x100000 for bzImage kernels"
ENTRY_64_OFFSET = 0x200  # boot.rst: "the start address of loaded 64-bit kernel plus 0x200"
# boot.rst "Sample Boot Configuration": for protocol >= 2.02 with LOADED_HIGH the
# setup heap ends at 0xe000 of the real-mode segment, and heap_end_ptr = heap_end - 0x200.
HEAP_END = 0xE000
HEAP_END_PTR = HEAP_END - 0x200


def load_bzimage(memory: GuestMemory, data: bytes, images: BootImages, initrd: bytes | None) -> EntryPoint:
    """Boot a bzImage file, decompressed by pyvmm or by the kernel itself."""
    image = parse_bzimage(data, str(images.kernel))
    command_line(images.cmdline_bytes, image)  # fail before a second of decompression
    if images.kernel_decompress == KernelDecompress.GUEST:
        return load_compressed(memory, image, images, initrd)
    return load_decompressed(memory, image, images, initrd)


def command_line(cmdline: bytes, image: BzImage) -> bytes:
    """The NUL-terminated command line, at most cmdline_size bytes (boot.rst)."""
    length = len(cmdline)
    if length > image.cmdline_limit:
        raise ImageError(
            f"{image.name}: kernel command line is {length} bytes; this kernel takes at most "
            f"{image.cmdline_limit} (cmdline_size)"
        )
    return c_string(cmdline, f"{image.name}: kernel command line")


def vmlinux(image: BzImage, memory: GuestMemory) -> tuple[str, bytes]:
    """The payload unpacked on the host: (compression name, ELF bytes)."""
    payload = split_payload(image.payload(), image.name)
    kind = payload.compression.value
    if payload.size > memory.size:
        raise ImageError(
            f"{image.name}: kernel too big for RAM: the {kind} payload unpacks to {payload.size >> 20} MiB, "
            f"the guest has {memory.size >> 20} MiB"
        )
    started = time.monotonic()
    data = decompress(payload, image.name)
    log.info(
        "%s: %s payload %#x -> %#x bytes in %.2f s",
        image.name, kind, len(payload.stream), len(data), time.monotonic() - started,
    )  # fmt: skip
    if not is_elf(data) or elf_class(data) != ElfClass.ELF64:
        raise ImageError(f"{image.name}: the {kind} payload does not hold a 64-bit ELF vmlinux")
    return kind, data


def load_decompressed(
    memory: GuestMemory, image: BzImage, images: BootImages, initrd: bytes | None
) -> EntryPoint:
    kind, elf = vmlinux(image, memory)
    return load_vmlinux(memory, elf, images, initrd, bzimage=image, what=f"{image.name} ({kind} vmlinux)")


def load_compressed(
    memory: GuestMemory, image: BzImage, images: BootImages, initrd: bytes | None
) -> EntryPoint:
    """The bzImage's own 64-bit entry; its decompressor runs in the guest."""
    name = image.name
    if not image.xloadflags & XLoadFlags.KERNEL_64:
        raise ImageError(
            f"{name}: no 64-bit entry point (xloadflags XLF_KERNEL_64 clear, protocol {image.protocol}); "
            "boot it with --kernel-decompress host"
        )
    cmdline = command_line(images.cmdline_bytes, image)
    load, runtime = _placement(memory, image)
    end = max(load + len(image.kernel), runtime + image.init_size)
    loaded = [(load, load + len(image.kernel), f"{name} protected-mode kernel")]
    initrd_range = None
    if initrd is not None:
        initrd_range = load_initrd(memory, initrd, images.initrd, [(load, end)], image.initrd_limit)
        loaded.append((initrd_range[0], initrd_range[0] + len(initrd), f"initrd {images.initrd}"))
    memory.write(load, image.kernel)
    memory.write(CMDLINE_ADDRESS, cmdline)

    params = boot_params(
        memory,
        CMDLINE_ADDRESS,
        initrd_range,
        kernel_header=image.header_bytes,
        rsdp_address=images.rsdp_address,
        reserved=images.reserved,
    )
    hdr = params.hdr
    hdr.code32_start = load  # boot.rst "code32_start": a relocated kernel's load address
    hdr.loadflags |= LoadFlags.CAN_USE_HEAP
    hdr.heap_end_ptr = HEAP_END_PTR
    zero_page = write_boot_params(memory, params)
    return EntryPoint(
        CpuMode.LONG64,
        rip=load + ENTRY_64_OFFSET,
        registers={"rsi": zero_page},
        loaded=loaded,
        description=f"bzImage {name} (boot protocol {image.protocol}) at {load:#x}, unpacked by the guest",
    )


def _placement(memory: GuestMemory, image: BzImage) -> tuple[int, int]:
    """(load address, runtime start) of the protected-mode part.

    boot.rst "init_size": the kernel runs from align_up(load address, kernel_alignment)
    when relocatable, else from pref_address, and needs init_size bytes there.
    """
    ram = usable_ram(memory_map(memory))
    size = len(image.kernel)
    pref = image.pref_address
    if (
        image.relocatable
        and pref >= BZIMAGE_LOAD_ADDRESS
        and pref % image.kernel_alignment == 0
        and pref + image.init_size <= IDENTITY_MAP_END
        and inside(ram, pref, max(size, image.init_size))
    ):
        return pref, pref
    load = BZIMAGE_LOAD_ADDRESS
    runtime = align_up(load, image.kernel_alignment) if image.relocatable else (pref or load)
    # An x86-64 kernel never runs below its pref_address (LOAD_PHYSICAL_ADDR), even
    # when relocatable: count on the move up.
    runtime = max(runtime, pref)
    for start, length, what in (
        (load, size, "its protected-mode part"),
        (runtime, image.init_size, "init_size"),
    ):
        if start + length > IDENTITY_MAP_END or not inside(ram, start, length):
            raise ImageError(
                f"{image.name}: kernel too big for RAM: {what} needs [{start:#x}, {start + length:#x}) "
                f"({describe_ram(memory)})"
            )
    return load, runtime
