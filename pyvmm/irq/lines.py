"""Interrupt lines: the inputs of the in-kernel PIC and IOAPIC, raised by devices from
any thread without touching the vCPU threads.

- `KvmIrqLine`: KVM_IRQ_LINE (api.rst §4.25), level or edge; one ioctl per change.
- `IrqfdEdgeLine`: an irqfd (api.rst §4.75): a write to an eventfd makes KVM pulse
  the GSI; what the I/O thread uses for edge-triggered lines (ISA devices).
- `ResampledIrqfdLine`: an irqfd with a resample fd (KVM_CAP_IRQFD_RESAMPLE): a
  level line (PCI INTx) whose deassertion happens at the guest's EOI; the I/O
  thread re-raises it then if the device still holds it high.
- `NoIrqLine`: without an in-kernel irqchip there is nothing to raise.

Each keeps its level under a lock, so two threads changing it reach KVM in the
order in which the level was recorded.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from pyvmm.io.eventfd import EventFd
from pyvmm.io.ioevent import Registrar  # where a line watches its resample fd
from pyvmm.irq.errors import InterruptError, require
from pyvmm.kvm import Cap, KvmError, Vm
from pyvmm.outcome import InterruptLine

log = logging.getLogger(__name__)


class IrqLine(InterruptLine, Protocol):
    """An interrupt line that can also send an edge."""

    def pulse(self) -> None:
        """Raise and lower the line: one edge; the line is low afterwards."""
        ...


class KvmIrqLine:
    """An input pin of the in-kernel PIC/IOAPIC, driven with KVM_IRQ_LINE (api.rst §4.25:
    an edge-triggered input needs 1 then 0)."""

    def __init__(self, vm: Vm, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi
        self.level = False
        self._lock = threading.Lock()

    def set_level(self, high: bool) -> None:
        with self._lock:
            self.vm.irq_line(self.gsi, high)
            self.level = high

    def pulse(self) -> None:
        with self._lock:
            self.vm.irq_line(self.gsi, True)
            self.vm.irq_line(self.gsi, False)
            self.level = False


class NoIrqLine:
    """Without an in-kernel irqchip there is nothing to raise."""

    level = False

    def set_level(self, high: bool) -> None:
        pass

    def pulse(self) -> None:
        pass


def _assign(vm: Vm, trigger: EventFd, gsi: int, resample: EventFd | None = None) -> None:
    try:
        vm.irqfd(trigger.fileno(), gsi, resample_fd=None if resample is None else resample.fileno())
    except KvmError as exc:
        raise InterruptError(f"cannot attach an irqfd to GSI {gsi}: {exc}") from None


class IrqfdEdgeLine:
    """An edge-triggered GSI raised through an irqfd: a write to the eventfd makes KVM
    assert and deassert the GSI (api.rst §4.75). `set_level` sends an edge on each
    rising transition, so an edge-triggered device can use it like a pin."""

    def __init__(self, vm: Vm, gsi: int) -> None:
        require(vm, Cap.IRQFD, f"an irqfd for GSI {gsi}")
        self.vm = vm
        self.gsi = gsi
        self.level = False
        self.trigger = EventFd()
        self._lock = threading.Lock()
        try:
            _assign(vm, self.trigger, gsi)
        except InterruptError:
            self.trigger.close()
            raise

    def set_level(self, high: bool) -> None:
        with self._lock:
            rising = high and not self.level
            self.level = high
        if rising:
            self.trigger.signal()

    def pulse(self) -> None:
        self.trigger.signal()

    def close(self) -> None:
        if not self.trigger.closed and self.vm.fd >= 0:  # closing the VM dropped the irqfd
            self.vm.irqfd(self.trigger.fileno(), self.gsi, deassign=True)
        self.trigger.close()


class ResampledIrqfdLine:
    """A level-triggered GSI through an irqfd with a resample fd (api.rst §4.75).

    Raising writes the trigger eventfd: KVM asserts the GSI and keeps it asserted
    until the guest's EOI, when it deasserts it and signals the resample fd. Lowering
    only records the level: KVM deasserts at that EOI, and since the device's level
    is then low, nothing re-raises it. (A guest that handled the device before it
    lowered the line sees one interrupt with nothing to do, as with any level line.)
    """

    def __init__(self, vm: Vm, gsi: int, io: Registrar) -> None:
        require(vm, Cap.IRQFD_RESAMPLE, f"a level-triggered irqfd for GSI {gsi}")
        self.vm = vm
        self.gsi = gsi
        self.level = False
        self.trigger = EventFd()
        self.resample = EventFd()
        self.resamples = 0  # EOIs seen (statistics, tests)
        self._io = io
        self._lock = threading.Lock()
        try:
            _assign(vm, self.trigger, gsi, self.resample)
        except InterruptError:
            self.trigger.close()
            self.resample.close()
            raise
        io.register(self.resample, self._resampled, f"GSI {gsi} resample")

    def set_level(self, high: bool) -> None:
        with self._lock:
            self.level = high
            if high:
                self.trigger.signal()

    def pulse(self) -> None:
        """One assertion, ended by the guest's EOI."""
        with self._lock:
            self.level = False
            self.trigger.signal()

    def _resampled(self) -> None:
        """In the I/O thread: the guest EOIed and KVM deasserted; still high means again."""
        self.resamples += self.resample.consume()
        with self._lock:
            if self.level:
                self.trigger.signal()

    def close(self) -> None:
        self._io.unregister(self.resample)
        if not self.trigger.closed and self.vm.fd >= 0:
            self.vm.irqfd(self.trigger.fileno(), self.gsi, deassign=True)
        self.trigger.close()
        self.resample.close()
