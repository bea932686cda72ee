"""QEMU's `pc-testdev` (hw/misc/pc-testdev.c): the ISA test device of kvm-unit-tests'
x86 suite, which QEMU's run script always adds (`-device pc-testdev`).

    ports 0xE0-0xE3    a 32-bit scratch register, any width at any offset: byte
                       lane (offset & 3) upward. x86/emulator.c (TESTDEV_IO_PORT:
                       in/out and rep ins/outs) and x86/amd_sev.c use it
    ports 0xE4-0xE7    "flush page": a 32-bit write of a guest physical address
                       makes QEMU mprotect that RAM page away and back, so KVM drops
                       its mapping of it; pyvmm calls the platform's `flush_page`
                       (if any) with the page address. Reads 0
    ports 0xE8-0xEB    the same scratch register as 0xE0, accessed one byte at a time
    ports 0x2000-0x2017  IRQ line n: a byte write sets the level of ISA IRQ n to
                       (value != 0), reads 0. x86/ioapic.c's set_irq_line /
                       toggle_irq_line drive its edge and level tests with these.
                       QEMU asserts n < 16; pyvmm hands 16-23 to the platform too
    MMIO 0xFF000000    64 KiB of plain memory ("iomem") that is not RAM, so every
    (64 KiB)           access exits to the VMM: x86/emulator.c (IORAM_BASE_PHYS)
                       and x86/lam.c run instructions on it to test KVM's emulator

Accesses QEMU refuses (a size its `valid` limits exclude: not 4 bytes on the flush
port, not 1 byte on the IRQ lines) are dropped, and read 0 as QEMU's do.

Saved state (`PcTestdevState`): the scratch register, the iomem bytes and the level
the guest last wrote to each IRQ line; a restore drives the lines to those levels.
The latest flush request is a record for tests, not a register, and is not saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyvmm.bus import BusDevice
from pyvmm.devices.testdev_state import PcTestdevState
from pyvmm.outcome import InterruptLine
from pyvmm.snapshot.checks import check_bool, check_bytes, check_int, check_tuple, check_type, fail

IOPORT_PORT = 0xE0
FLUSH_PORT = 0xE4
IOPORT_BYTE_PORT = 0xE8
PORT_REGION_LENGTH = 4
IRQ_LINES_PORT = 0x2000
IRQ_LINES = 24
IOMEM_ADDRESS = 0xFF00_0000
IOMEM_LENGTH = 0x10000
PAGE_MASK = ~0xFFF


@dataclass(frozen=True)
class Region:
    """One range the platform puts on a bus: `io` is the port bus, else the MMIO bus."""

    io: bool
    base: int
    length: int
    device: BusDevice
    name: str


class PcTestdev:
    """The device: its five regions, for the platform to put on its buses."""

    def __init__(
        self,
        irq_line: Callable[[int], InterruptLine],
        flush_page: Callable[[int], None] | None = None,
    ) -> None:
        self.data = 0  # the scratch register behind 0xE0 and 0xE8
        self.iomem = bytearray(IOMEM_LENGTH)
        self._irq_line = irq_line
        self._lines: dict[int, InterruptLine] = {}
        self._levels = [False] * IRQ_LINES  # what the guest last wrote to each line
        self._flush_page = flush_page
        self.last_flushed: int | None = None  # the page of the latest flush request
        self.ioport = _Scratch(self)
        self.ioport_byte = _Scratch(self)
        self.flush = _Flush(self)
        self.irq = _IrqLines(self)
        self.memory = _Iomem(self)

    def regions(self) -> list[Region]:
        return [
            Region(True, IOPORT_PORT, PORT_REGION_LENGTH, self.ioport, "pc-testdev-ioport"),
            Region(True, FLUSH_PORT, PORT_REGION_LENGTH, self.flush, "pc-testdev-flush-page"),
            Region(True, IOPORT_BYTE_PORT, PORT_REGION_LENGTH, self.ioport_byte, "pc-testdev-ioport-byte"),
            Region(True, IRQ_LINES_PORT, IRQ_LINES, self.irq, "pc-testdev-irq-line"),
            Region(False, IOMEM_ADDRESS, IOMEM_LENGTH, self.memory, "pc-testdev-iomem"),
        ]

    def set_irq(self, irq: int, high: bool) -> None:
        line = self._lines.get(irq)
        if line is None:
            line = self._lines[irq] = self._irq_line(irq)
        self._levels[irq] = high
        line.set_level(high)

    # --- state ----------------------------------------------------------------------

    def reset(self) -> None:
        """Power-on: scratch register and iomem zero, every raised line low."""
        self._apply(0, bytes(IOMEM_LENGTH), (False,) * IRQ_LINES)
        self.last_flushed = None

    def save(self) -> PcTestdevState:
        return PcTestdevState(self.data, bytes(self.iomem), tuple(self._levels))

    def restore(self, state: object) -> None:
        name = "pc-testdev"
        checked = check_type(name, state, PcTestdevState)
        data = check_int(name, "data", checked.data, 0, 0xFFFF_FFFF)
        iomem = check_bytes(name, "iomem", checked.iomem, IOMEM_LENGTH, IOMEM_LENGTH)
        lines = check_tuple(name, "lines", checked.lines, IRQ_LINES)
        if len(lines) != IRQ_LINES:
            raise fail(name, f"{len(lines)} IRQ line levels, not {IRQ_LINES}")
        levels = tuple(check_bool(name, f"line {irq}", level) for irq, level in enumerate(lines))
        self._apply(data, iomem, levels)

    def _apply(self, data: int, iomem: bytes, levels: tuple[bool, ...]) -> None:
        self.data = data
        self.iomem[:] = iomem
        for irq, high in enumerate(levels):
            if high != self._levels[irq]:  # a line never driven stays unclaimed while low
                self.set_irq(irq, high)

    def flush_page(self, page: int) -> None:
        self.last_flushed = page
        if self._flush_page is not None:
            self._flush_page(page)


def _lane_mask(offset: int, size: int) -> tuple[int, int]:
    """(mask, shift) of `size` bytes at byte lane `offset & 3` of a 32-bit register;
    bits past bit 31 fall off, as in QEMU's uint32_t arithmetic."""
    shift = (offset & 3) * 8
    return ((1 << (8 * size)) - 1) << shift & 0xFFFF_FFFF, shift


class _Scratch:
    def __init__(self, owner: PcTestdev) -> None:
        self._owner = owner

    def read(self, offset: int, size: int) -> int:
        mask, shift = _lane_mask(offset, size)
        return (self._owner.data & mask) >> shift

    def write(self, offset: int, size: int, value: int) -> None:
        mask, shift = _lane_mask(offset, size)
        data = value & ((1 << (8 * size)) - 1)
        self._owner.data = (self._owner.data & ~mask | data << shift) & 0xFFFF_FFFF


class _Flush:
    def __init__(self, owner: PcTestdev) -> None:
        self._owner = owner

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self._owner.flush_page(value & PAGE_MASK & 0xFFFF_FFFF)


class _IrqLines:
    def __init__(self, owner: PcTestdev) -> None:
        self._owner = owner

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 1 and 0 <= offset < IRQ_LINES:
            self._owner.set_irq(offset, (value & 0xFF) != 0)


class _Iomem:
    def __init__(self, owner: PcTestdev) -> None:
        self._owner = owner

    def read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > IOMEM_LENGTH:
            return 0
        return int.from_bytes(self._owner.iomem[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= 0 and offset + size <= IOMEM_LENGTH and size > 0:
            self._owner.iomem[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
                size, "little"
            )
