"""The PCI part of the PC platform: the host bridge on bus 0 as firmware leaves it for
the OS, and what the machine does when the guest programs a device; or, for a machine
without PCI (virtio over MMIO, as Firecracker's and QEMU's microvm), `NoPci`.

What a guest finds (as on QEMU's PC with SeaBIOS, which test suites expect):

- configuration mechanism #1 on ports 0xCF8-0xCFF and an ECAM window (PCIe base
  §7.2.2) described by an MCFG table (PCI Firmware Specification 3.2 §4.1.2),
  reserved in the E820 map and by a PNP0C02 device (Linux wants one of the two, or
  logs "MMCONFIG ... not reserved" and ignores the window);
- ``\\_SB.PCI0`` (PNP0A03) in the DSDT forwarding exactly the windows the resource
  allocator gave PCI (`ResourceAllocator.pci`), and a _PRT with the (slot + pin)
  mod 4 swizzle onto GSIs 16-19 (`acpi.pci_host`);
- every function's BARs already placed in those windows with decoding on (Command
  I/O and Memory Space), and its Interrupt Line register holding its GSI, as a PC
  BIOS leaves them (PCI Firmware Specification 3.2 §2.1): Linux keeps firmware
  assignments it can claim in the bridge's windows, and kvm-unit-tests' x86 PCI
  tests use the BARs as they find them.

BAR changes (`PciFunction.bars.on_bar_change`) come from a vCPU thread in the middle
of a configuration write. The new range goes on the port or MMIO bus in one step
(`Bus.move`); a range the guest places over RAM, over the in-kernel IOAPIC or local
APIC, over KVM's own pages, or over another device's range is left off the bus
(accesses to it reach whatever was there before, or nothing) and logged once per
BAR: PCI 3.0 §6.2.5.1 leaves overlapping BARs undefined, and pyvmm's definition is
"the newcomer loses". A refusal lasts only as long as its reason: a decoding BAR
answers at its address on real hardware, so every refused BAR is tried again
whenever the platform's view may have changed (after any BAR or Command write of any
function, the same value rewritten included, `bars.on_bar_write`, and after a
function leaves the bus). An OS that reassigns BARs one at a time through a moment
of overlap gets both devices back once the second one has moved.

INTx: each GSI is a wired-OR of the pins routed to it (PCI 3.0 §2.2.6: INTx# are
shareable, open-drain), driven through the machine's level-triggered KVM_IRQ_LINE.
MSI-X: one `MsixRoute` per function (`pyvmm.irq.msix_routing`).

Saved state (`PciHostState`): what the platform itself keeps, CONFIG_ADDRESS and the
host bridge's configuration space, plus which functions sit in which slots (checked,
not restored). Each function's own state is saved by the device that owns it (a
virtio-pci transport, pci-testdev), whose restore moves its BARs back through
`on_bar_change`; the buses, INTx levels and MSI-X routes follow from those, so they
are no state of their own here.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyvmm.arch.x86.acpi.aml import Aml
from pyvmm.arch.x86.acpi.mcfg import EcamRegion, build_mcfg
from pyvmm.arch.x86.acpi.pci_host import (
    DEFAULT_GSIS,
    PciWindows,
    ecam_reservation_device,
    gsi_for,
    host_bridge_device,
)
from pyvmm.arch.x86.layout import KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS
from pyvmm.bus import Bus, BusConflictError, BusRange
from pyvmm.devices.device import DeviceState, Region, mmio, ports
from pyvmm.irq.msix_routing import MsiVectors, MsixRoute
from pyvmm.outcome import InterruptLine
from pyvmm.pci import (
    CONFIG_IO_LENGTH,
    CONFIG_IO_PORT,
    BarKind,
    BarRange,
    MsixTable,
    PciError,
    PciFunction,
    PciHost,
    Space,
)
from pyvmm.pci.bus import SLOTS
from pyvmm.pci.config_access import CONFIG_ADDRESS_MASK
from pyvmm.pci.host_bridge import HOST_BRIDGE_SLOT
from pyvmm.pci.registers import BAR0, COMMAND, DEVICE_ID, INTERRUPT_LINE, INTERRUPT_PIN, VENDOR_ID, Command
from pyvmm.pci.state import PciHostState
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.resources import AddressWindow, PciResources
from pyvmm.snapshot.checks import check_int, check_mask, check_tuple, check_type, fail

log = logging.getLogger(__name__)

PAGE = 0x1000
LAPIC_ADDRESS = 0xFEE0_0000
IOAPIC_ADDRESS = 0xFEC0_0000
KVM_TSS_PAGES = 3  # KVM_SET_TSS_ADDR takes three pages (api.rst §4.41)
# Guest-physical ranges KVM answers itself: a BAR there would never see an access.
KVM_OWNED = (
    (IOAPIC_ADDRESS, IOAPIC_ADDRESS + PAGE, "the IOAPIC"),
    (LAPIC_ADDRESS, LAPIC_ADDRESS + PAGE, "the local APIC"),
    (KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS + KVM_TSS_PAGES * PAGE, "KVM's TSS and identity-map pages"),
)


class SharedGsi:
    """One GSI wired to several INTx pins: high while any of them is asserted."""

    def __init__(self, line: InterruptLine) -> None:
        self._line = line
        self._asserted: set[int] = set()
        self._inputs = 0
        self._lock = threading.Lock()  # pins of different functions change on different vCPUs

    def pin(self) -> InterruptLine:
        """A new input of the wired-OR."""
        with self._lock:
            self._inputs += 1
            return _GsiInput(self, self._inputs)

    def set(self, key: int, high: bool) -> None:
        with self._lock:
            before = bool(self._asserted)
            if high:
                self._asserted.add(key)
            else:
                self._asserted.discard(key)
            after = bool(self._asserted)
            if before != after:
                self._line.set_level(after)


class _GsiInput:
    def __init__(self, gsi: SharedGsi, key: int) -> None:
        self._gsi = gsi
        self._key = key

    def set_level(self, high: bool) -> None:
        self._gsi.set(self._key, high)


@dataclass
class PciSlot:
    """A function the platform placed: where, and which of its BARs are on a bus."""

    slot: int
    function: PciFunction
    label: str
    gsi: int | None
    allocations: list[tuple[AddressWindow, int]] = field(default_factory=list)
    mapped: dict[int, tuple[Bus, BusRange]] = field(default_factory=dict)
    warned: set[int] = field(default_factory=set)  # BARs whose refusal was logged as a warning
    # BARs that decode but are off the bus (`_remap` refused them): where they want to be.
    refused: dict[int, BarRange] = field(default_factory=dict)
    # Told (BAR index, the range now on a bus, or None) after every BAR change: what a
    # device keeps outside the buses (its KVM ioeventfds) follows the BAR through it.
    observer: Callable[[int, BarRange | None], None] | None = None
    msix: MsixRoute | None = None


class PciPlatform:
    """Bus 0 behind its host bridge, as one device of the device manager (its regions:
    the configuration ports and the ECAM window; its AML: the host bridge and the
    ECAM reservation), plus `add_function` for the devices on it."""

    name = "pci"

    def __init__(
        self,
        devices: DeviceManager,
        ram: Sequence[tuple[int, int]],
        line: Callable[[int], InterruptLine],
        msi: MsiVectors | None = None,
        *,
        buses: int = 1,
    ) -> None:
        self._devices = devices
        self._ram = list(ram)
        self._line = line
        self._msi = msi
        self.resources: PciResources = devices.resources.pci(buses)
        self.buses = buses
        self.host = PciHost(buses)
        devices.resources.pci_slot(HOST_BRIDGE_SLOT)
        for gsi in DEFAULT_GSIS:  # the _PRT gives them to PCI, whichever slots get used
            devices.resources.gsis.claim(gsi, "PCI INTx")
        self._gsis: dict[int, SharedGsi] = {}
        self.slots: dict[int, PciSlot] = {}
        self._lock = threading.Lock()  # BAR changes of different vCPUs

    # --- what the device manager and the boot need ---------------------------------

    def regions(self) -> Sequence[Region]:
        r = self.resources
        return (
            ports(CONFIG_IO_PORT, CONFIG_IO_LENGTH, self.host.config_io, "pci-config"),
            mmio(r.ecam_base, r.ecam_size, self.host.ecam, "pci-ecam"),
        )

    @property
    def windows(self) -> PciWindows:
        r = self.resources
        return PciWindows(
            mmio32=(r.mmio32.start, r.mmio32.length),
            mmio64=(r.mmio64.start, r.mmio64.length),
            io=[(r.io.start, r.io.length)],
            buses=self.buses,
        )

    def aml(self) -> Sequence[Aml]:
        r = self.resources
        return (host_bridge_device(self.windows), ecam_reservation_device(r.ecam_base, r.ecam_size))

    def acpi_tables(self) -> list[bytes]:
        """The MCFG, for the XSDT and RSDT."""
        r = self.resources
        return [build_mcfg([EcamRegion(r.ecam_base, 0, self.buses - 1)])]

    def reserved(self) -> tuple[tuple[int, int], ...]:
        """[start, end) ranges the E820 map reports reserved: the ECAM window."""
        r = self.resources
        return ((r.ecam_base, r.ecam_base + r.ecam_size),)

    def close(self) -> None:
        for placed in list(self.slots.values()):
            self._unmap_all(placed)
            if placed.msix is not None:
                placed.msix.close()

    # --- state (see the module docstring: the functions save their own) --------------

    def reset(self) -> None:
        """CONFIG_ADDRESS and the host bridge's header back to power-on."""
        self.host.config_io.address = 0
        self.host.bridge.reset()

    def _slots(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(
            (slot, function.config_read(VENDOR_ID, 2), function.config_read(DEVICE_ID, 2))
            for slot, _number, function in self.host.bus.functions()
        )

    def save(self) -> DeviceState:
        host = self.host
        return DeviceState((PciHostState(host.config_io.address, host.bridge.save(), self._slots()),))

    def restore(self, state: object) -> None:
        """Checked first; a refusal (`StateError`) changes nothing. The bus must hold
        the same functions in the same slots as the saved one did."""
        name = self.name
        models = check_tuple(name, "models", check_type(name, state, DeviceState).models, 1)
        if len(models) != 1:
            raise fail(name, f"{len(models)} model states, not 1")
        checked = check_type(name, models[0], PciHostState)
        address = check_mask(name, "config_address", checked.config_address, CONFIG_ADDRESS_MASK)
        slots = tuple(_slot_entry(entry) for entry in check_tuple(name, "slots", checked.slots, SLOTS))
        if slots != self._slots():
            raise fail(name, f"bus 0 held {_describe(slots)}; this one holds {_describe(self._slots())}")
        self.host.bridge.restore(checked.bridge)  # checks its own part before changing it
        self.host.config_io.address = address

    # --- devices -------------------------------------------------------------------

    def add_function(
        self,
        function: PciFunction,
        slot: int | None = None,
        *,
        msix: MsixTable | None = None,
        name: str = "",
        observer: Callable[[int, BarRange | None], None] | None = None,
    ) -> int:
        """Put `function` in `slot` (or the lowest free one) of bus 0, as firmware
        would: INTx routed, MSI-X connected, BARs placed and decoding. Its slot.
        `observer` hears of every BAR change after the buses did (see `PciSlot`)."""
        slot = self._devices.resources.pci_slot(slot)
        self.host.bus.add(function, slot)
        label = f"{name or 'pci'} 00:{slot:02x}.0"
        pin = function.config_read(INTERRUPT_PIN, 1)
        gsi = gsi_for(slot, pin - 1, DEFAULT_GSIS) if 1 <= pin <= 4 else None
        placed = PciSlot(slot, function, label, gsi, observer=observer)
        with self._lock:  # a vCPU's retry (`_retry_refused`) walks the slots
            self.slots[slot] = placed
        if gsi is not None:
            function.intx_line = self._shared_gsi(gsi).pin()
            function.config.set(INTERRUPT_LINE, 1, gsi)  # what a PC BIOS writes there
        if msix is not None:
            placed.msix = msix.sink = MsixRoute(label, self._msi, msix.count)
        function.bars.on_bar_change = functools.partial(self._bar_changed, placed)
        function.bars.on_bar_write = self._bar_written
        self._assign_bars(placed)
        log.debug("%s: BARs %s, GSI %s", label, function.bars.specs, gsi)
        return slot

    def remove_function(self, slot: int) -> PciFunction:
        """Hot unplug: the function's ranges off the buses, its slot and windows freed."""
        with self._lock:
            placed = self.slots.pop(slot, None)
        if placed is None:
            raise PciError(f"no PCI function at 00:{slot:02x}.0")
        placed.function.bars.on_bar_change = None
        placed.function.bars.on_bar_write = None
        self._unmap_all(placed)
        with self._lock:
            self._retry_refused()  # what it held is free now
        if placed.msix is not None:
            placed.msix.close()
        for window, base in placed.allocations:
            window.release(base)
        self._devices.resources.release_pci_slot(slot)
        return self.host.bus.remove(slot)

    def _shared_gsi(self, gsi: int) -> SharedGsi:
        if gsi not in self._gsis:
            self._gsis[gsi] = SharedGsi(self._line(gsi))
        return self._gsis[gsi]

    def _assign_bars(self, placed: PciSlot) -> None:
        """Place every BAR in its window, then turn decoding on (through the guest's own
        register path, so the bus sees the same reports a guest's writes give)."""
        function, r = placed.function, self.resources
        command = 0
        for index, spec in sorted(function.bars.specs.items()):
            if spec.kind is BarKind.IO:
                window, align = r.io, spec.size
                command |= Command.IO_SPACE
            else:
                # Page aligned at least: each BAR in pages of its own.
                window = r.mmio64 if spec.kind is BarKind.MEMORY64 else r.mmio32
                align = max(spec.size, PAGE)
                command |= Command.MEMORY_SPACE
            base = window.allocate(spec.size, align)
            placed.allocations.append((window, base))
            function.config_write(BAR0 + 4 * index, 4, base & 0xFFFF_FFFF)
            if spec.kind is BarKind.MEMORY64:
                function.config_write(BAR0 + 4 * index + 4, 4, base >> 32)
        if command:
            function.config_write(COMMAND, 2, function.config_read(COMMAND, 2) | command)

    # --- BAR changes, on a vCPU thread -----------------------------------------------

    def _bus(self, space: Space) -> Bus:
        return self._devices.ports if space is Space.IO else self._devices.mmio

    def _refusal(self, new: BarRange) -> str | None:
        """Why `new` cannot go on its bus (besides overlapping another range), or None."""
        if new.space is Space.MEMORY:
            for start, end in self._ram:
                if new.base < end and start < new.end:
                    return f"overlaps RAM [{start:#x}, {end:#x})"
            for start, end, what in KVM_OWNED:
                if new.base < end and start < new.end:
                    return f"overlaps {what}, which KVM answers itself"
        return None

    def _bar_changed(self, placed: PciSlot, index: int, old: BarRange | None, new: BarRange | None) -> None:
        """`on_bar_change`: never raises, whatever the guest programmed."""
        with self._lock:
            self._remap(placed, index, new)
            if placed.observer is not None:
                mapped = placed.mapped.get(index)
                placed.observer(index, new if mapped is not None else None)

    def _bar_written(self) -> None:
        """`on_bar_write`, after any function's BAR or Command write: never raises."""
        with self._lock:
            self._retry_refused()

    def _remap(self, placed: PciSlot, index: int, new: BarRange | None) -> None:
        """With the lock held: the bus gets BAR `index` at `new`, or loses it."""
        # What is on the bus is what this platform put there: `old` can be a range it
        # refused (an overlap), so it goes by its own record.
        current = placed.mapped.pop(index, None)
        placed.refused.pop(index, None)
        if new is None:
            if current is not None:
                current[0].remove(current[1])
            return
        problem = self._map(placed, index, new, current)
        if problem is not None:
            if current is not None:
                current[0].remove(current[1])
            placed.refused[index] = new
            # Once per BAR at warning level: a guest looping on it must not flood the log.
            level = logging.DEBUG if index in placed.warned else logging.WARNING
            placed.warned.add(index)
            log.log(
                level,
                "%s BAR %d at %s %#x+%#x left unmapped: %s",
                placed.label, index, new.space.value, new.base, new.size, problem,
            )  # fmt: skip

    def _map(
        self, placed: PciSlot, index: int, new: BarRange, current: tuple[Bus, BusRange] | None
    ) -> str | None:
        """With the lock held: put BAR `index` on its bus at `new` (moving `current`,
        its range there now, if any) and record it; or why not, with nothing changed."""
        refusal = self._refusal(new)
        if refusal is not None:
            return refusal
        bus = self._bus(new.space)
        try:
            if current is not None:
                placed.mapped[index] = (bus, bus.move(current[1], new.base))
            else:
                handler = placed.function.bar_handler(index)
                placed.mapped[index] = (
                    bus,
                    bus.insert(new.base, new.size, handler, f"{placed.label} BAR{index}"),
                )
        except (BusConflictError, PciError) as exc:
            return str(exc)
        return None

    def _retry_refused(self) -> None:
        """With the lock held: map every refused BAR whose place is free now (lowest
        slot first, if two want the same place), and tell its observer."""
        for placed in sorted(self.slots.values(), key=lambda p: p.slot):
            for index, wanted in sorted(placed.refused.items()):
                if self._map(placed, index, wanted, None) is not None:
                    continue  # still in the way; its refusal was logged when it was made
                del placed.refused[index]
                log.info(
                    "%s BAR %d at %s %#x+%#x mapped: its place is free now",
                    placed.label, index, wanted.space.value, wanted.base, wanted.size,
                )  # fmt: skip
                if placed.observer is not None:
                    placed.observer(index, wanted)

    def _unmap_all(self, placed: PciSlot) -> None:
        with self._lock:
            for bus, entry in placed.mapped.values():
                bus.remove(entry)
            placed.mapped.clear()
            placed.refused.clear()


def _slot_entry(entry: object) -> tuple[int, int, int]:
    """One checked (slot, vendor ID, device ID) of a saved `PciHostState`."""
    if type(entry) is not tuple or len(entry) != 3:
        raise fail("pci", "a slot entry is not a (slot, vendor, device) tuple")
    slot, vendor, device = entry
    return (
        check_int("pci", "slot", slot, 0, SLOTS - 1),
        check_int("pci", "vendor ID", vendor, 0, 0xFFFF),
        check_int("pci", "device ID", device, 0, 0xFFFF),
    )


def _describe(slots: Sequence[tuple[int, int, int]]) -> str:
    return ", ".join(f"{vendor:04x}:{device:04x} at 00:{slot:02x}.0" for slot, vendor, device in slots)


class NoPci:
    """The PCI part of a machine that has none (`--transport mmio`): nothing on the
    buses or in ACPI (no host bridge, no MCFG), and `pci=off` for a Linux guest.

    QEMU's microvm and Firecracker have no PCI either (Firecracker's documented boot
    arguments carry `pci=off`). The word stops Linux probing configuration
    mechanisms #1 and #2 and MMCONFIG (arch/x86/pci/common.c pcibios_setup clears
    pci_probe), whose port accesses would reach nothing here; Linux 6.1 still logs
    "PCI: Fatal: No config space access function found" and "PCI: System does not
    support PCI" once (arch/x86/pci/init.c prints it whenever no mechanism exists,
    pci=off or not), as on those VMMs. Keeping a bare host bridge instead would
    silence it at the price of a bus scan and a _PRT in every boot, and of GSIs
    16-19 and 512 MiB of the MMIO window that virtio-mmio devices use here.
    """

    name = "pci"  # the same device name as PciPlatform's: one machine has one of them
    kernel_parameters = ("pci=off",)

    def regions(self) -> Sequence[Region]:
        return ()

    def aml(self) -> Sequence[Aml]:
        return ()

    def close(self) -> None:
        pass

    def reset(self) -> None:
        pass

    def save(self) -> DeviceState:
        return DeviceState(())

    def restore(self, state: object) -> None:
        """Nothing to restore: only an empty state is this device's."""
        check_tuple(self.name, "models", check_type(self.name, state, DeviceState).models, 0)
