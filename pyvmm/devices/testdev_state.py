"""The saved state of QEMU's test devices (`pc_testdev`, `pci_testdev`): what a guest
can see of them, as plain data checked on restore (`pyvmm.snapshot.checks`)."""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.snapshot.registry import SavedState, saved_state


@saved_state("pc-testdev")
@dataclass(frozen=True)
class PcTestdevState:
    """pc-testdev: the scratch register behind ports 0xE0 and 0xE8, the 64 KiB iomem,
    and the level the guest last wrote to each IRQ line (a line never written is low)."""

    data: int  # 32 bits
    iomem: bytes  # IOMEM_LENGTH bytes
    lines: tuple[bool, ...]  # IRQ_LINES levels


@saved_state("pci-testdev")
@dataclass(frozen=True)
class PciTestdevState:
    """pci-testdev: its PCI function, the test selected last (0-5, or None) and the
    writes that test has counted (the header's 32-bit count)."""

    function: SavedState  # its `PciFunction`'s (pyvmm.pci.state), which checks it
    selected: int | None
    count: int
