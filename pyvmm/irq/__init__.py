"""Interrupts as objects: lines into the in-kernel PIC/IOAPIC, MSI vectors, and the
allocator of GSIs with KVM's routing table. Devices raise interrupts from any thread
(a vCPU thread's exit handler, the I/O thread) without touching the vCPU threads.

| module | job |
| --- | --- |
| `lines` | ISA/INTx lines: KVM_IRQ_LINE, irqfd (edge), irqfd with resample (level) |
| `msi` | `MsiMessage`, and vectors sent by KVM_SIGNAL_MSI or a GSI route + irqfd |
| `routing` | `GsiAllocator`: ISA 0-15, PCI INTx 16-23, MSI from 24; the whole routing table |
"""

from pyvmm.irq.errors import InterruptError
from pyvmm.irq.lines import IrqfdEdgeLine, IrqLine, KvmIrqLine, NoIrqLine, ResampledIrqfdLine
from pyvmm.irq.msi import MsiMessage, MsiVector, RoutedMsi, SignalledMsi, msi_vector
from pyvmm.irq.routing import FIRST_MSI_GSI, ISA_IRQS, PCI_INTX_GSIS, GsiAllocator, irqchip_routes

__all__ = [
    "FIRST_MSI_GSI",
    "ISA_IRQS",
    "PCI_INTX_GSIS",
    "GsiAllocator",
    "InterruptError",
    "IrqLine",
    "IrqfdEdgeLine",
    "KvmIrqLine",
    "MsiMessage",
    "MsiVector",
    "NoIrqLine",
    "ResampledIrqfdLine",
    "RoutedMsi",
    "SignalledMsi",
    "irqchip_routes",
    "msi_vector",
]
