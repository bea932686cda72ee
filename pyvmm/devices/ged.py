"""The Generic Event Device: how a hardware-reduced ACPI platform tells the OS about
an event (ACPI 6.4 §5.6.9), here the power button and a new VM generation ID.

A hardware-reduced platform has no SCI and no fixed power button (its FADT says
HW_REDUCED_ACPI). Instead the GED (``ACPI0013``) has an interrupt, and the OS runs its
``_EVT`` method when it fires (Linux: drivers/acpi/evged.c). pyvmm's ``_EVT``
(`pyvmm.arch.x86.acpi.dsdt.generic_event_device`) reads the event selector below and
notifies the device of each event bit set: Notify(PWRB, 0x80), the control-method
power button (PNP0C0C), or Notify(VGEN, 0x80), the generation ID. QEMU's microvm and
Cloud Hypervisor signal their power button the same way.

Event selector (I/O port `GED_PORT`, 32 bits, read-only): the `GedEvent` bits raised
since the last read; a read returns them and clears them, so an event raised while
``_EVT`` runs is kept for the next interrupt. Writes are ignored. A byte or word read
returns (and clears) just those bytes.

Interrupt: edge-triggered, active high, on ISA GSI `GED_GSI` (9, the SCI's line on a
PC, which a hardware-reduced platform does not use). Each event pulses it, as QEMU's
GED does; the selector, not the line, remembers what happened.

`press_power_button()` and `notify_generation_id()` may be called from any thread
(QMP, the caller's); the selector and the pulse are under one lock.
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass

from pyvmm.outcome import InterruptLine
from pyvmm.snapshot.checks import check_mask, check_type
from pyvmm.snapshot.registry import saved_state

logger = logging.getLogger(__name__)

GED_PORT = 0x608  # after the sleep (0x600-0x602) and PM1a control (0x604) registers
GED_LENGTH = 4
GED_GSI = 9


class GedEvent(enum.IntFlag):
    """Event selector bits; the DSDT's _EVT notifies one device per bit."""

    POWER_BUTTON = 1 << 0  # Notify(PWRB, 0x80)
    GENERATION_ID = 1 << 1  # Notify(VGEN, 0x80)


ALL_EVENTS = int(GedEvent.POWER_BUTTON | GedEvent.GENERATION_ID)


@saved_state("ged")
@dataclass(frozen=True)
class GedState:
    """A `Ged`'s state: the events raised and not yet read by the guest."""

    pending: int


class Ged:
    """The event selector register and the interrupt it pulses."""

    def __init__(self, line: InterruptLine) -> None:
        self._line = line
        self._lock = threading.Lock()
        self._pending = 0
        self.events_raised = 0  # counters, for tests and --stats; not state
        self.events_read = 0

    # --- host side (any thread) --------------------------------------------------------

    def press_power_button(self) -> None:
        """Press the ACPI power button: the guest's OS decides what it means (Linux
        with pyvmm's init: a clean power-off)."""
        self.raise_event(GedEvent.POWER_BUTTON)

    def notify_generation_id(self) -> None:
        """Tell the guest the VM generation ID changed (the ID is already written)."""
        self.raise_event(GedEvent.GENERATION_ID)

    def raise_event(self, event: GedEvent) -> None:
        """Set `event` in the selector and pulse the interrupt."""
        with self._lock:
            self._pending |= int(event) & ALL_EVENTS  # a plain int: saved as one
            self.events_raised += 1
            # An edge: the IOAPIC latches it; the line must be low again for the next.
            self._line.set_level(True)
            self._line.set_level(False)
        logger.debug("GED event %s", event)

    @property
    def pending(self) -> GedEvent:
        with self._lock:
            return GedEvent(self._pending)

    # --- guest side (vCPU thread) ---------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            value = 0
            for i in range(size):
                byte = offset + i
                if 0 <= byte < GED_LENGTH:
                    value |= ((self._pending >> (8 * byte)) & 0xFF) << (8 * i)
                    self._pending &= ~(0xFF << (8 * byte))
                else:
                    value |= 0xFF << (8 * i)  # beyond the register: an empty port
            if offset == 0:
                self.events_read += 1
            return value

    def write(self, offset: int, size: int, value: int) -> None:
        pass  # the selector is read-only; clearing is by reading

    # --- state ---------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self._pending = 0
            self._line.set_level(False)

    def save(self) -> GedState:
        with self._lock:
            return GedState(int(self._pending))

    def restore(self, state: object) -> None:
        """Take `state`, checked first (a bad one raises `StateError`, nothing changes).
        Pending events are not pulsed again: the edge that announced them is the
        interrupt controller's state, saved with it."""
        checked = check_type("ged", state, GedState)
        pending = check_mask("ged", "pending", checked.pending, ALL_EVENTS)
        with self._lock:
            self._pending = pending
