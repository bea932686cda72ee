"""One PCI function: a type-0 configuration header (PCI Local Bus Specification 3.0
§6.1-6.2) with its BARs, capability list and INTx pin, and the handlers behind its
BARs. Devices build one and fill it in (IDs, BARs, capabilities, BAR handlers); the
PCI bus reaches it through `config_read` / `config_write`; the platform connects
`bars.on_bar_change`, `bar_handler(index)` and `intx_line`.

What the guest may write in the header (the rest is read-only):

    Command        I/O Space, Memory Space, Bus Master, Parity Error Response,
                   SERR# Enable, Interrupt Disable (§6.2.2)
    Status         the error bits, write 1 to clear; Interrupt Status and Capabilities
                   List are read-only (§6.2.3)
    Cache Line     read/write (Linux writes it; nothing here uses it)
    BARs           their address bits above the size (see `bar`)
    Interrupt Line read/write: a scratch byte for the OS (§6.2.4)

Latency Timer, BIST, CardBus CIS, the expansion ROM BAR (no ROM: sizing reads 0) and
Min_Gnt/Max_Lat read 0, as on a PCI Express function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyvmm.bus import BusDevice
from pyvmm.outcome import InterruptLine
from pyvmm.pci.bar import BarSet, BarSpec
from pyvmm.pci.capabilities import CapabilityList
from pyvmm.pci.config_space import ConfigSpace
from pyvmm.pci.errors import PciError
from pyvmm.pci.registers import (
    CACHE_LINE_SIZE,
    CLASS_BASE,
    CLASS_PROG_IF,
    CLASS_SUBCLASS,
    COMMAND,
    COMMAND_WRITABLE,
    DEVICE_ID,
    HEADER_TYPE,
    HEADER_TYPE_MULTI_FUNCTION,
    INTERRUPT_LINE,
    INTERRUPT_PIN,
    REVISION_ID,
    STATUS,
    STATUS_W1C,
    SUBSYSTEM_ID,
    SUBSYSTEM_VENDOR_ID,
    VENDOR_ID,
    Command,
    InterruptPin,
    Status,
)
from pyvmm.pci.state import PciFunctionState
from pyvmm.snapshot.checks import check_bool, check_bytes, check_type, fail

# QEMU's default subsystem IDs (Red Hat / QEMU), which guests already know.
QEMU_SUBSYSTEM_VENDOR = 0x1AF4
QEMU_SUBSYSTEM_ID = 0x1100


@dataclass(frozen=True)
class PciIds:
    """The read-only identity of a function (§6.2.1)."""

    vendor: int
    device: int
    base_class: int
    subclass: int
    prog_if: int = 0
    revision: int = 0
    subsystem_vendor: int = QEMU_SUBSYSTEM_VENDOR
    subsystem: int = QEMU_SUBSYSTEM_ID

    def __post_init__(self) -> None:
        for name, value, bits in (
            ("vendor", self.vendor, 16),
            ("device", self.device, 16),
            ("base class", self.base_class, 8),
            ("subclass", self.subclass, 8),
            ("programming interface", self.prog_if, 8),
            ("revision", self.revision, 8),
            ("subsystem vendor", self.subsystem_vendor, 16),
            ("subsystem", self.subsystem, 16),
        ):
            if not 0 <= value < 1 << bits:
                raise PciError(f"PCI {name} ID {value:#x} does not fit in {bits} bits")
        if self.vendor == 0xFFFF:
            raise PciError("vendor ID 0xffff means 'no function here' (§6.2.1)")


class PciFunction:
    """A function's configuration space and the state that hangs off it."""

    def __init__(
        self,
        ids: PciIds,
        *,
        bars: Mapping[int, BarSpec] | None = None,
        interrupt_pin: InterruptPin = InterruptPin.NONE,
    ) -> None:
        self.ids = ids
        self.config = ConfigSpace()
        config = self.config
        config.set(VENDOR_ID, 2, ids.vendor)
        config.set(DEVICE_ID, 2, ids.device)
        config.set(REVISION_ID, 1, ids.revision)
        config.set(CLASS_PROG_IF, 1, ids.prog_if)
        config.set(CLASS_SUBCLASS, 1, ids.subclass)
        config.set(CLASS_BASE, 1, ids.base_class)
        config.set(SUBSYSTEM_VENDOR_ID, 2, ids.subsystem_vendor)
        config.set(SUBSYSTEM_ID, 2, ids.subsystem)
        config.set(INTERRUPT_PIN, 1, interrupt_pin)
        config.set_writable(COMMAND, 2, COMMAND_WRITABLE)
        config.set_w1c(STATUS, 2, STATUS_W1C)
        config.set_device_owned(STATUS, 2, Status.INTERRUPT)
        config.set_writable(CACHE_LINE_SIZE, 1, 0xFF)
        config.set_writable(INTERRUPT_LINE, 1, 0xFF)
        self.bars = BarSet(config, bars or {})
        self.capabilities = CapabilityList(config)
        self.intx_line: InterruptLine | None = None
        self._intx_asserted = False
        self._line_level = False
        self._bar_handlers: dict[int, BusDevice] = {}
        self._reset_hooks: list[Callable[[], None]] = []
        config.watch(COMMAND, 2, self._drive_intx)

    # --- the bus's side ------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.config.write(offset, size, value)

    def set_multi_function(self, value: bool) -> None:
        """Header Type bit 7, set by the bus on function 0 of a slot with more functions."""
        header = self.config.get(HEADER_TYPE, 1) & ~HEADER_TYPE_MULTI_FUNCTION
        self.config.set(HEADER_TYPE, 1, header | (HEADER_TYPE_MULTI_FUNCTION if value else 0))

    # --- the device's side ---------------------------------------------------------

    def set_bar_handler(self, index: int, handler: BusDevice) -> None:
        """What answers accesses to BAR `index` (offsets relative to the BAR)."""
        if index not in self.bars.specs:
            raise PciError(f"BAR {index} is not declared by this function")
        self._bar_handlers[index] = handler

    def bar_handler(self, index: int) -> BusDevice:
        """The BusDevice the platform puts on a bus at BAR `index`'s range."""
        try:
            return self._bar_handlers[index]
        except KeyError:
            raise PciError(f"BAR {index} has no handler") from None

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the function is reset (device state beyond the header)."""
        self._reset_hooks.append(hook)

    def set_intx(self, asserted: bool) -> None:
        """The device raises or lowers its INTx pin: Status' Interrupt Status follows; the
        line follows unless Command's Interrupt Disable is set (§6.2.2, §6.2.3)."""
        self._intx_asserted = asserted
        status = self.config.get(STATUS, 2) & ~Status.INTERRUPT
        self.config.set(STATUS, 2, status | (Status.INTERRUPT if asserted else 0))
        self._drive_intx()

    def _drive_intx(self) -> None:
        level = self._intx_asserted and not self.config.get(COMMAND, 2) & Command.INTX_DISABLE
        if level != self._line_level:
            self._line_level = level
            if self.intx_line is not None:
                self.intx_line.set_level(level)

    # --- saved state (state.py) -------------------------------------------------------

    @property
    def label(self) -> str:
        return f"pci {self.ids.vendor:04x}:{self.ids.device:04x}"

    def save(self) -> PciFunctionState:
        return PciFunctionState(self.config.snapshot(), self._intx_asserted)

    def restore(self, state: object) -> None:
        """Take a saved configuration space, checked first (`StateError`, nothing
        changed): every read-only bit must be this function's, and Status' Interrupt
        Status must say what `intx_asserted` says. The BARs then move on the buses the
        way a guest's writes move them (`bars.on_bar_change`), and the INTx line and
        MSI-X follow the restored Command and Message Control."""
        name = self.label
        checked = check_type(name, state, PciFunctionState)
        image = check_bytes(name, "config", checked.config, self.config.size, self.config.size)
        asserted = check_bool(name, "intx_asserted", checked.intx_asserted)
        problem = self.config.mismatch(image)
        if problem is not None:
            raise fail(name, problem)
        status = int.from_bytes(image[STATUS : STATUS + 2], "little")
        if bool(status & Status.INTERRUPT) != asserted:
            raise fail(name, f"Status {status:#06x} disagrees with intx_asserted {asserted}")
        self._intx_asserted = asserted
        self.config.restore(image)  # its watchers: BARs, INTx (_drive_intx), MSI-X

    def reset(self) -> None:
        """Function-level reset: guest-writable header bits to 0 (BARs unassigned, decode
        off: the platform hears it through `on_bar_change`), then device hooks."""
        self.config.clear_guest_bits()
        for hook in self._reset_hooks:
            hook()
