"""`GsiAllocator`: who owns which GSI, and the whole KVM routing table.

The GSI space of the PC platform pyvmm builds (api.rst §4.24 KVM_CREATE_IRQCHIP):

- GSIs 0-15 are the ISA IRQs, fixed by the device (COM1 is 4): KVM routes each to
  the PIC and to the IOAPIC pin of the same number;
- GSIs 16-23 are the remaining IOAPIC pins, routed to the IOAPIC only: PCI INTx
  (and virtio-mmio devices on a machine without PCI) use them;
- GSIs from 24 up to KVM's limit (KVM_CHECK_EXTENSION(KVM_CAP_IRQ_ROUTING) is the
  most routes a table may hold) are MSI routes, one entry each.

KVM_SET_GSI_ROUTING (api.rst §4.52) replaces the whole table, so every commit sends
the 40 irqchip entries KVM_CREATE_IRQCHIP installed along with the MSI routes:
leaving them out would disconnect every ISA device.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pyvmm.irq.errors import InterruptError
from pyvmm.kvm import Cap, KvmError, Vm, uapi
from pyvmm.kvm.x86 import KVM_IOAPIC_NUM_PINS

if TYPE_CHECKING:
    from pyvmm.irq.msi import MsiMessage

ISA_IRQS = range(16)
PCI_INTX_GSIS = range(16, KVM_IOAPIC_NUM_PINS)
FIRST_MSI_GSI = KVM_IOAPIC_NUM_PINS
_PIC_PINS = 8  # per PIC: IRQs 0-7 on the master, 8-15 on the slave


def irqchip_routes() -> list[uapi.kvm_irq_routing_entry]:
    """The routes KVM_CREATE_IRQCHIP sets up: ISA IRQs to the PIC and the IOAPIC, the
    other IOAPIC pins to the IOAPIC alone (api.rst §4.24)."""
    entries = []
    for gsi in range(KVM_IOAPIC_NUM_PINS):
        entries.append(_irqchip_entry(gsi, uapi.KVM_IRQCHIP_IOAPIC, gsi))
        if gsi in ISA_IRQS:
            chip = uapi.KVM_IRQCHIP_PIC_MASTER if gsi < _PIC_PINS else uapi.KVM_IRQCHIP_PIC_SLAVE
            entries.append(_irqchip_entry(gsi, chip, gsi % _PIC_PINS))
    return entries


def _irqchip_entry(gsi: int, chip: int, pin: int) -> uapi.kvm_irq_routing_entry:
    entry = uapi.kvm_irq_routing_entry(gsi=gsi, type=uapi.KVM_IRQ_ROUTING_IRQCHIP)
    entry.irqchip.irqchip, entry.irqchip.pin = chip, pin
    return entry


def _msi_entry(gsi: int, message: MsiMessage) -> uapi.kvm_irq_routing_entry:
    entry = uapi.kvm_irq_routing_entry(gsi=gsi, type=uapi.KVM_IRQ_ROUTING_MSI)
    entry.msi.address_lo = message.address & 0xFFFF_FFFF
    entry.msi.address_hi = message.address >> 32
    entry.msi.data = message.data
    return entry


class GsiAllocator:
    """Hands out MSI routes and keeps KVM's routing table whole. Thread-safe: one lock
    orders allocations and commits. (Which device holds which pin GSI, 0-23, is the
    resource allocator's: `pyvmm.platform.resources.PinGsis`.)"""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        # 0 when this KVM has no KVM_SET_GSI_ROUTING: ISA and INTx lines still work.
        self.max_routes = vm.kvm.check_extension(Cap.IRQ_ROUTING)
        self._fixed = irqchip_routes()
        self._msi: dict[int, MsiMessage | None] = {}  # None: allocated, no route for now
        self._lock = threading.Lock()

    @staticmethod
    def isa(irq: int) -> int:
        """The GSI of ISA IRQ `irq` (the same number)."""
        if irq not in ISA_IRQS:
            raise InterruptError(f"ISA IRQs are 0-15, not {irq}")
        return irq

    @property
    def msi_capacity(self) -> int:
        """How many MSI routes fit next to the irqchip routes."""
        return max(self.max_routes - len(self._fixed), 0)

    @property
    def msi_in_use(self) -> int:
        """How many MSI GSIs are allocated, routed or not."""
        with self._lock:
            return len(self._msi)

    def allocate_msi(self, message: MsiMessage | None) -> int:
        """The lowest free GSI from 24, routed to `message` (None: no route yet)."""
        if not self.max_routes:
            raise InterruptError("this host's KVM lacks KVM_CAP_IRQ_ROUTING, needed for MSI routes")
        with self._lock:
            if len(self._msi) >= self.msi_capacity:
                raise InterruptError(f"all {self.msi_capacity} MSI routes of this KVM are in use")
            gsi = next(gsi for gsi in range(FIRST_MSI_GSI, self.max_routes) if gsi not in self._msi)
            self._msi[gsi] = message
            try:
                self._commit()
            except InterruptError:
                del self._msi[gsi]
                raise
            return gsi

    def set_msi(self, gsi: int, message: MsiMessage | None) -> None:
        """Route `gsi` to `message` (None: no route, interrupts on it are dropped). When
        KVM refuses, the previous route stays and `InterruptError` says why."""
        with self._lock:
            if gsi not in self._msi:
                raise InterruptError(f"GSI {gsi} is no allocated MSI route")
            previous, self._msi[gsi] = self._msi[gsi], message
            try:
                self._commit()
            except InterruptError:
                self._msi[gsi] = previous
                raise

    def free_msi(self, gsi: int) -> None:
        with self._lock:
            if self._msi.pop(gsi, None) is not None and self.vm.fd >= 0:
                self._commit()

    def entries(self) -> list[uapi.kvm_irq_routing_entry]:
        """The whole table as KVM_SET_GSI_ROUTING gets it."""
        with self._lock:
            return self._entries()

    def _entries(self) -> list[uapi.kvm_irq_routing_entry]:
        routed = sorted((gsi, message) for gsi, message in self._msi.items() if message is not None)
        return self._fixed + [_msi_entry(gsi, message) for gsi, message in routed]

    def _commit(self) -> None:
        try:
            self.vm.set_gsi_routing(self._entries())
        except KvmError as exc:
            raise InterruptError(f"KVM refused the GSI routing table: {exc}") from None
