"""Where pyvmm puts things in guest physical memory (one table, named once).

Low memory follows the PC: the real-mode interrupt table and BIOS data area at 0,
conventional memory up to 0x9FC00, then the EBDA, VGA and BIOS ranges up to 1 MiB,
which the memory maps report as reserved. Above 3 GiB sits the MMIO hole.
"""

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

GDT_ADDRESS = 0x500  # boot GDT used for protected and long mode entry
IDT_ADDRESS = 0x540  # an empty IDT (limit 0), after the 5-entry GDT (0x500-0x527)
ZERO_PAGE_ADDRESS = 0x7000  # Linux boot_params ("zero page")
FLAT_LOAD_ADDRESS = 0x7C00  # flat binaries, as a BIOS loads a boot sector
PML4_ADDRESS = 0x9000  # long-mode identity page tables: PML4, PDPT, then 4 PDs
PDPT_ADDRESS = 0xA000
PD_ADDRESS = 0xB000  # 4 pages: 2 MiB pages covering the low 4 GiB
CMDLINE_ADDRESS = 0x20000  # kernel command line for zero-page boots
CMDLINE_MAX = 0x10000
LOW_RAM_END = 0x9FC00  # end of conventional memory (start of the EBDA)
BIOS_AREA_START = 0xA0000  # VGA, option ROMs, BIOS: reserved in the memory map
HIGH_MEMORY_START = 1 * MiB
MMIO_HOLE_START = 3 * GiB  # PCI/MMIO window below 4 GiB for large guests
MMIO_HOLE_END = 4 * GiB
IDENTITY_MAP_END = 4 * GiB  # long-mode entry maps [0, 4 GiB) one to one

# Pages KVM needs for its own use on Intel hosts (KVM_SET_TSS_ADDR takes three pages,
# KVM_SET_IDENTITY_MAP_ADDR one), in the MMIO hole just below the BIOS ROM.
KVM_IDENTITY_MAP_ADDRESS = 0xFFFB_C000
KVM_TSS_ADDRESS = 0xFFFB_D000
