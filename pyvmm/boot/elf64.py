"""64-bit ELF kernels (a Linux vmlinux, or any x86-64 ELF) entered directly.

Segments load at their physical addresses (p_paddr). Then one of two entries:
- PVH, when the kernel has the Xen PVH note (pvh.py): 32-bit protected mode at the
  note's address, EBX = hvm_start_info.
- Otherwise docs/boot.md's 64-bit entry: RAM identity-mapped, RIP = e_entry (a
  vmlinux's e_entry is the physical address of startup_64), RSI = the `boot_params`
  page (Linux Documentation/arch/x86/boot.rst, "64-bit Boot Protocol").
The initrd goes as high as it fits under the kernel's limit (4 GiB for a bare ELF),
out of the kernel's way, as boot.rst asks of loaders that place it themselves.

A vmlinux unpacked from a bzImage (bzimage.py) brings the bzImage's setup header:
its zero page starts as a copy of that header, and its limits (cmdline_size,
initrd_addr_max) apply.
"""

from __future__ import annotations

from pyvmm.arch.x86.layout import (
    CMDLINE_ADDRESS,
    CMDLINE_MAX,
    IDENTITY_MAP_END,
    PD_ADDRESS,
    PML4_ADDRESS,
    ZERO_PAGE_ADDRESS,
    GiB,
)
from pyvmm.boot.elf import ElfClass, ElfFile, Reservation, SegmentType, load_segments, parse_elf
from pyvmm.boot.entry import BootImages, CpuMode, EntryPoint
from pyvmm.boot.initrd import load_initrd
from pyvmm.boot.memory_map import describe_ram
from pyvmm.boot.pvh import pvh_entry, write_start_info
from pyvmm.boot.setup_header import BzImage
from pyvmm.boot.zeropage import boot_params, c_string, write_boot_params
from pyvmm.errors import ImageError
from pyvmm.memory import PAGE_SIZE, GuestMemory

INITRD_LIMIT = 4 * GiB  # ramdisk_image is 32 bits unless the kernel reads ext_ramdisk_image
PVH_ENTRY_LIMIT = 4 * GiB  # the PVH entry runs with paging off

# What the loader and the arch code write besides the kernel: no segment may land there.
RESERVED: tuple[Reservation, ...] = (
    (0, PAGE_SIZE, "page 0 (interrupt vector table, BIOS data area, boot GDT)"),
    (ZERO_PAGE_ADDRESS, ZERO_PAGE_ADDRESS + PAGE_SIZE, "the zero page"),
    (PML4_ADDRESS, PD_ADDRESS + IDENTITY_MAP_END // GiB * PAGE_SIZE, "the boot page tables"),
    (CMDLINE_ADDRESS, CMDLINE_ADDRESS + CMDLINE_MAX, "the kernel command line"),
)


def load_elf64(memory: GuestMemory, kernel: bytes, images: BootImages, initrd: bytes | None) -> EntryPoint:
    """Load an x86-64 ELF kernel file and the initrd; PVH or 64-bit entry."""
    return load_vmlinux(memory, kernel, images, initrd)


def load_vmlinux(
    memory: GuestMemory,
    kernel: bytes,
    images: BootImages,
    initrd: bytes | None,
    bzimage: BzImage | None = None,
    what: str = "",
) -> EntryPoint:
    """Load an x86-64 ELF kernel, the initrd and the boot information.

    `bzimage` is the image `kernel` was unpacked from, if any; `what` names the
    kernel in errors and descriptions (default: the kernel file).
    """
    name = what or str(images.kernel)
    elf = parse_elf(kernel, name)
    if elf.elf_class is not ElfClass.ELF64:
        raise ImageError(f"{name}: not a 64-bit ELF file")
    cmdline_limit = min(bzimage.cmdline_limit, CMDLINE_MAX - 1) if bzimage else CMDLINE_MAX - 1
    cmdline = c_string(images.cmdline_bytes, f"{images.kernel}: kernel command line", cmdline_limit)
    loaded = load_segments(memory, kernel, elf.loadable(), name, RESERVED)
    pvh = pvh_entry(kernel, elf, name)
    entry = pvh if pvh is not None else elf.entry
    what_entry = "Xen PVH entry" if pvh is not None else "entry point"
    if not memory.contains(entry, 1) or (pvh is not None and entry >= PVH_ENTRY_LIMIT):
        raise ImageError(f"{name}: {what_entry} {entry:#x} is not in guest RAM ({describe_ram(memory)})")

    initrd_range = None
    if initrd is not None:
        limit = bzimage.initrd_limit if bzimage else INITRD_LIMIT
        taken = [(start, end) for start, end, _ in loaded]
        initrd_range = load_initrd(memory, initrd, images.initrd, taken, limit)
        loaded.append((initrd_range[0], initrd_range[0] + len(initrd), f"initrd {images.initrd}"))
    memory.write(CMDLINE_ADDRESS, cmdline)

    source = f" from {bzimage.name} (boot protocol {bzimage.protocol})" if bzimage else ""
    if pvh is not None:
        modules = [initrd_range] if initrd_range else []
        start_info = write_start_info(memory, CMDLINE_ADDRESS, modules, images.rsdp_address, images.reserved)
        return EntryPoint(
            CpuMode.PROTECTED32,
            rip=pvh,
            registers={"rbx": start_info},
            loaded=loaded,
            description=f"64-bit ELF kernel {name}{source}, Xen PVH entry",
        )
    header = bzimage.header_bytes if bzimage else b""
    params = boot_params(
        memory,
        CMDLINE_ADDRESS,
        initrd_range,
        kernel_header=header,
        rsdp_address=images.rsdp_address,
        reserved=images.reserved,
    )
    if bzimage is None:
        params.hdr.kernel_alignment = _alignment(elf)
    return EntryPoint(
        CpuMode.LONG64,
        rip=entry,
        registers={"rsi": write_boot_params(memory, params)},
        loaded=loaded,
        description=f"64-bit ELF kernel {name}{source}",
    )


def _alignment(elf: ElfFile) -> int:
    """The largest alignment the loadable segments ask for: what a bare vmlinux
    tells of its kernel_alignment (CONFIG_PHYSICAL_ALIGN)."""
    aligns = [
        s.align
        for s in elf.segments
        if s.type == SegmentType.LOAD and s.align > 0 and s.align & (s.align - 1) == 0
    ]
    return min(max(aligns, default=PAGE_SIZE), 1 << 31)
