"""The saved state of a virtio device on each transport: what the transport keeps
beside the `VirtioCore` (whose `CoreState` holds the negotiation, the queues and the
device model's own part).

- virtio-pci (§4.1): the PCI function (configuration space, INTx), its MSI-X table
  and PBA, the MSI-X vector of the configuration change notification and of each
  queue (§4.1.4.3 config_msix_vector / queue_msix_vector), and the ISR (§4.1.4.5).
- virtio-mmio (§4.2): InterruptStatus (§4.2.2); the line's level follows from it.

What the transport does not save: where it is placed (the platform builds the same
machine again from its configuration) and its doorbells (eventfds, ioeventfds: the
restoring VMM makes new ones, and they follow BAR 0 when its restore moves it).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.pci.state import MsixState, PciFunctionState
from pyvmm.snapshot.registry import saved_state
from pyvmm.virtio.state import CoreState


@saved_state("virtio-pci")
@dataclass(frozen=True)
class VirtioPciState:
    """A `VirtioPciFunction`'s state."""

    function: PciFunctionState
    msix: MsixState
    core: CoreState
    config_vector: int  # an MSI-X table index, or NO_VECTOR (0xffff)
    queue_vectors: tuple[int, ...]  # one per queue, the same
    isr: int  # bit 0 used buffer, bit 1 configuration change


@saved_state("virtio-mmio")
@dataclass(frozen=True)
class VirtioMmioState:
    """A `VirtioMmio`'s state."""

    core: CoreState
    interrupt_status: int  # bit 0 used buffer, bit 1 configuration change
