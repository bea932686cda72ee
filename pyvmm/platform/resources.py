"""The platform's resources, handed out from one place: I/O ports, the 32-bit MMIO
window in the hole below 4 GiB, a 64-bit MMIO window above RAM, PCI slots, and the
GSIs of the irqchip's input pins.

Fixed resources (the PC's legacy ports, the ISA IRQs of its devices, the GSIs PCI's
_PRT names) are reserved first; what PCI BARs and virtio-mmio devices get is allocated
around them, so no two devices can ever be given overlapping ranges or one another's
interrupt line. MSI GSIs (from 24) are routes, not pins: `pyvmm.irq.GsiAllocator`
hands those out with KVM's routing table.

PCI takes its share once (`ResourceAllocator.pci`): a 512 MiB window at the bottom
of the 32-bit MMIO window (room for many 32-bit BARs, while devices outside PCI keep
the rest), the ECAM window right after it, half of the 64-bit window, and the PCI
I/O ports; the host bridge forwards exactly these
(its ACPI _CRS), and BARs are placed inside them. The rest of the 32- and 64-bit
windows stays free for devices outside PCI (virtio-mmio).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyvmm.arch.x86.layout import KVM_IDENTITY_MAP_ADDRESS, MMIO_HOLE_END, MMIO_HOLE_START, GiB, MiB
from pyvmm.errors import ConfigError
from pyvmm.kvm.x86 import KVM_IOAPIC_NUM_PINS

# PCI I/O BARs from 0xC000 up, as QEMU's PC places them: clear of every ISA device.
PCI_IO_WINDOW = (0xC000, 0x10000)
IOAPIC_ADDRESS = 0xFEC0_0000  # the IOAPIC, HPET and local APIC pages start here
# The 32-bit MMIO window: the hole below 4 GiB up to the IOAPIC; KVM's TSS and
# identity-map pages (0xFFFBC000...) lie above it.
MMIO32_WINDOW = (MMIO_HOLE_START, IOAPIC_ADDRESS)
MMIO64_SIZE = 64 * GiB
PCI_SLOTS = 32
PCI_MMIO32_SIZE = 512 * MiB
ECAM_BUS_SIZE = 1 * MiB  # configuration space of one bus (PCIe base §7.2.2)
PIN_GSIS = range(KVM_IOAPIC_NUM_PINS)  # ISA IRQs 0-15 (PIC and IOAPIC), IOAPIC pins 16-23


class ResourceError(ConfigError):
    """A window is full, or a fixed range is already taken."""


class PinGsis:
    """The GSIs of the in-kernel PIC and IOAPIC inputs (0-23, `pyvmm.irq.routing`):
    which a device holds. Fixed lines are `claim`ed (several claims of one GSI are
    one shared line, as PCI INTx is); a device that needs a line of its own gets the
    first free one of its candidates with `allocate`."""

    def __init__(self) -> None:
        self._taken: dict[int, str] = {}  # GSI -> who holds it

    def claim(self, gsi: int, owner: str) -> int:
        """A fixed line: `gsi` is taken (shared with whoever holds it already)."""
        if gsi not in PIN_GSIS:
            raise ResourceError(f"{owner}: GSI {gsi} is no input of the irqchip (0-{PIN_GSIS[-1]})")
        self._taken.setdefault(gsi, owner)
        return gsi

    def free(self, candidates: Iterable[int]) -> list[int]:
        """The candidates nobody holds, in order."""
        return [gsi for gsi in candidates if gsi in PIN_GSIS and gsi not in self._taken]

    def allocate(self, candidates: Iterable[int], owner: str) -> int:
        """The first free GSI of `candidates`, now `owner`'s alone."""
        candidates = list(candidates)
        for gsi in self.free(candidates):
            self._taken[gsi] = owner
            return gsi
        raise ResourceError(f"{owner}: no free GSI among {', '.join(map(str, candidates))}")

    def owner(self, gsi: int) -> str | None:
        return self._taken.get(gsi)

    def release(self, gsi: int) -> None:
        self._taken.pop(gsi, None)


@dataclass
class AddressWindow:
    """First-fit allocation of aligned ranges inside [start, end)."""

    name: str
    start: int
    end: int
    _taken: list[tuple[int, int]] = field(default_factory=list)  # sorted (base, end)

    def reserve(self, base: int, length: int) -> int:
        """Take exactly [base, base + length), or raise `ResourceError`."""
        if length <= 0 or base < self.start or base + length > self.end:
            window = f"[{self.start:#x}, {self.end:#x})"
            raise ResourceError(f"{self.name}: {base:#x}+{length:#x} is outside {window}")
        index = bisect.bisect_right(self._taken, (base, base + length))
        for other_base, other_end in self._taken[max(index - 1, 0) : index + 1]:
            if base < other_end and other_base < base + length:
                raise ResourceError(f"{self.name}: {base:#x}+{length:#x} is already taken")
        self._taken.insert(index, (base, base + length))
        return base

    def allocate(self, length: int, align: int = 1) -> int:
        """The lowest free `align`-aligned base with room for `length`."""
        if length <= 0 or align <= 0 or align & (align - 1):
            raise ResourceError(f"{self.name}: cannot allocate {length:#x} bytes aligned to {align:#x}")
        candidate = -(-self.start // align) * align
        for base, end in self._taken:
            if candidate + length <= base:
                break
            candidate = max(candidate, -(-end // align) * align)
        if candidate + length > self.end:
            raise ResourceError(f"{self.name}: no room for {length:#x} bytes aligned to {align:#x}")
        return self.reserve(candidate, length)

    def release(self, base: int) -> None:
        self._taken = [entry for entry in self._taken if entry[0] != base]

    @property
    def length(self) -> int:
        return self.end - self.start

    def sub_window(self, name: str, length: int, align: int) -> AddressWindow:
        """Allocate [base, base + length) here and hand it out as a window of its own."""
        base = self.allocate(length, align)
        return AddressWindow(name, base, base + length)


@dataclass(frozen=True)
class PciResources:
    """What the PCI host bridge forwards and where its ECAM window is."""

    ecam_base: int
    ecam_size: int
    io: AddressWindow
    mmio32: AddressWindow
    mmio64: AddressWindow


class ResourceAllocator:
    """Every address range and PCI slot of one machine."""

    def __init__(self, ram_end: int) -> None:
        self.ports = AddressWindow("I/O ports", 0, 0x10000)
        self.pci_io = AddressWindow("PCI I/O window", *PCI_IO_WINDOW)
        self.mmio32 = AddressWindow("32-bit MMIO window", *MMIO32_WINDOW)
        mmio64_start = max(-(-ram_end // GiB) * GiB, MMIO_HOLE_END)
        self.mmio64 = AddressWindow("64-bit MMIO window", mmio64_start, mmio64_start + MMIO64_SIZE)
        self._slots = [False] * PCI_SLOTS
        self.gsis = PinGsis()
        self._pci: PciResources | None = None
        assert MMIO32_WINDOW[1] <= KVM_IDENTITY_MAP_ADDRESS

    def pci(self, buses: int = 1) -> PciResources:
        """PCI's windows and ECAM window (for `buses` buses), allocated at the first call;
        later calls return the same."""
        if self._pci is None:
            if not 1 <= buses <= 256:
                raise ResourceError(f"an ECAM window covers 1 to 256 buses, not {buses}")
            mmio32 = self.mmio32.sub_window("PCI 32-bit MMIO window", PCI_MMIO32_SIZE, PCI_MMIO32_SIZE)
            ecam_size = buses * ECAM_BUS_SIZE
            # Aligned to its size, as PCIe base §7.2.2 asks of a window of 2^n buses.
            ecam_base = self.mmio32.allocate(ecam_size, 1 << (ecam_size - 1).bit_length())
            mmio64 = self.mmio64.sub_window("PCI 64-bit MMIO window", self.mmio64.length // 2, GiB)
            self._pci = PciResources(ecam_base, ecam_size, self.pci_io, mmio32, mmio64)
        return self._pci

    def pci_slot(self, slot: int | None = None) -> int:
        """A free PCI slot on bus 0 (`slot`, or the lowest free one)."""
        candidates = range(PCI_SLOTS) if slot is None else [slot]
        for candidate in candidates:
            if 0 <= candidate < PCI_SLOTS and not self._slots[candidate]:
                self._slots[candidate] = True
                return candidate
        raise ResourceError(f"PCI slot {slot} is taken" if slot is not None else "all 32 PCI slots are taken")

    def release_pci_slot(self, slot: int) -> None:
        """Give `slot` back (a function was unplugged)."""
        if 0 <= slot < PCI_SLOTS:
            self._slots[slot] = False
