"""64-bit ELF kernels entered directly in long mode with a Linux zero page.

The entry state is docs/boot.md's: RAM identity-mapped, RIP = e_entry, RSI = the
`boot_params` page (Linux Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
The initrd goes as high as it fits below 4 GiB, out of the kernel's way, as boot.rst
asks of loaders that place it themselves.
"""

from __future__ import annotations

from pyvmm.arch.x86.layout import (
    CMDLINE_ADDRESS,
    CMDLINE_MAX,
    HIGH_MEMORY_START,
    IDENTITY_MAP_END,
    PD_ADDRESS,
    PML4_ADDRESS,
    ZERO_PAGE_ADDRESS,
    GiB,
)
from pyvmm.boot.elf import ElfClass, Reservation, load_segments, parse_elf
from pyvmm.boot.entry import BootImages, CpuMode, EntryPoint
from pyvmm.boot.memory_map import describe_ram, memory_map, place_high, subtract, usable_ram
from pyvmm.boot.zeropage import write_zero_page
from pyvmm.errors import ImageError
from pyvmm.memory import PAGE_SIZE, GuestMemory

INITRD_LIMIT = 4 * GiB  # ramdisk_image is 32 bits unless the kernel reads ext_ramdisk_image

# What the loader and the arch code write besides the kernel: no segment may land there.
RESERVED: tuple[Reservation, ...] = (
    (0, PAGE_SIZE, "page 0 (interrupt vector table, BIOS data area, boot GDT)"),
    (ZERO_PAGE_ADDRESS, ZERO_PAGE_ADDRESS + PAGE_SIZE, "the zero page"),
    (PML4_ADDRESS, PD_ADDRESS + IDENTITY_MAP_END // GiB * PAGE_SIZE, "the boot page tables"),
    (CMDLINE_ADDRESS, CMDLINE_ADDRESS + CMDLINE_MAX, "the kernel command line"),
)


def load_elf64(memory: GuestMemory, kernel: bytes, images: BootImages, initrd: bytes | None) -> EntryPoint:
    """Load an x86-64 ELF kernel, the initrd and the zero page; 64-bit entry."""
    name = str(images.kernel)
    elf = parse_elf(kernel, name)
    if elf.elf_class is not ElfClass.ELF64:
        raise ImageError(f"{name}: not a 64-bit ELF file")
    loaded = load_segments(memory, kernel, elf.loadable(), name, RESERVED)
    if not memory.contains(elf.entry, 1):
        raise ImageError(f"{name}: entry point {elf.entry:#x} is not in guest RAM ({describe_ram(memory)})")
    initrd_range = None
    if initrd is not None:
        free = subtract(usable_ram(memory_map(memory)), [(start, end) for start, end, _ in loaded])
        address = place_high(free, len(initrd), above=HIGH_MEMORY_START, below=INITRD_LIMIT, align=PAGE_SIZE)
        if address is None:
            raise ImageError(
                f"{images.initrd}: no room for {len(initrd):#x} bytes of initrd between 1 MiB and 4 GiB "
                f"beside the kernel ({describe_ram(memory)})"
            )
        memory.write(address, initrd)
        initrd_range = (address, len(initrd))
        loaded.append((address, address + len(initrd), f"initrd {images.initrd}"))
    zero_page = write_zero_page(memory, images.cmdline, initrd_range)
    return EntryPoint(
        CpuMode.LONG64,
        rip=elf.entry,
        registers={"rsi": zero_page},
        loaded=loaded,
        description=f"64-bit ELF kernel {name}",
    )
