"""MSI-X routing: the `MsixSink` (`pyvmm.pci.msix`) the PCI platform gives each function.

Each table entry the guest unmasks with a message gets an
`MsiVector` of its own (`pyvmm.irq.msi_vector`: a GSI route and an irqfd, so a
device's interrupt is one eventfd write from its thread; KVM_SIGNAL_MSI where KVM
has no routes or they are all taken). The vector is made at the entry's first
unmask and kept: a rewrite of the message re-routes it, masking it (its Mask bit,
the Function Mask, MSI-X off, a reset) takes its route out of KVM's table, and
closing the function frees the GSI. So a guest gets at most one GSI per entry of
tables whose sizes pyvmm chose, however it loops over them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyvmm.irq.errors import InterruptError
from pyvmm.irq.msi import MsiMessage, MsiVector

if TYPE_CHECKING:
    from pyvmm.pci.msix import MsixVector  # what the table tells its sink: a type, no code

log = logging.getLogger(__name__)

MsiVectors = Callable[[], MsiVector]  # a new vector, no message yet (pyvmm.irq.msi_vector)


class MsixRoute:
    """The `MsixSink` of one function: a `MsiVector` per table entry, made by `make` at
    the entry's first unmask (see the module docstring)."""

    def __init__(self, label: str, make: MsiVectors | None, count: int) -> None:
        self.label = label
        self._make = make
        self._vectors: list[MsiVector | None] = [None] * count
        self._failed = False  # a vector could not be made: warned once
        self.delivered = 0

    @property
    def vectors(self) -> tuple[MsiVector | None, ...]:
        return tuple(self._vectors)

    def vector_changed(self, index: int, vector: MsixVector) -> None:
        """On the vCPU thread writing the table (under the table's lock)."""
        message = None if vector.masked else MsiMessage(vector.address, vector.data)
        msi = self._vectors[index]
        if msi is None:
            if message is None or self._make is None:  # nothing to route, or no irqchip
                return
            try:
                msi = self._vectors[index] = self._make()
            except InterruptError as exc:
                level = logging.DEBUG if self._failed else logging.WARNING
                self._failed = True
                log.log(level, "%s MSI-X vector %d gets no interrupt: %s", self.label, index, exc)
                return
        msi.update(message)

    def deliver(self, index: int, vector: MsixVector) -> None:
        """On the device's thread: one eventfd write (or one KVM_SIGNAL_MSI)."""
        msi = self._vectors[index]
        if msi is not None:
            msi.trigger()
            self.delivered += 1

    def close(self) -> None:
        """Drop every route and irqfd (while the VM is open) and free their GSIs."""
        for index, msi in enumerate(self._vectors):
            if msi is not None:
                msi.close()
                self._vectors[index] = None
