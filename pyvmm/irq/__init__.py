"""Interrupts as objects: lines into the in-kernel PIC/IOAPIC, MSI vectors, and the
allocator of GSIs with KVM's routing table. Devices raise interrupts from any thread
(a vCPU thread's exit handler, the I/O thread) without touching the vCPU threads.

| module | job |
| --- | --- |
| `lines` | ISA/INTx lines: KVM_IRQ_LINE, irqfd (edge), irqfd with resample (level) |
| `msi` | `MsiMessage`, and vectors sent by a GSI route + irqfd, or KVM_SIGNAL_MSI |
| `routing` | the GSI plan (ISA 0-15, pins 16-23, MSI from 24); `GsiAllocator`: the routing table |
| `msix_routing` | `MsixRoute`: the PCI platform's MSI-X sink, an `MsiVector` per unmasked table entry |

Which device holds which pin GSI (0-23) is the resource allocator's (`pyvmm.platform.resources`).
"""

from pyvmm.irq.errors import InterruptError
from pyvmm.irq.lines import IrqfdEdgeLine, IrqLine, KvmIrqLine, NoIrqLine, ResampledIrqfdLine
from pyvmm.irq.msi import MsiMessage, MsiVector, RoutedMsi, SignalledMsi, can_route, can_signal, msi_vector
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
    "can_route",
    "can_signal",
    "irqchip_routes",
    "msi_vector",
]
