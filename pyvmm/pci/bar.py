"""Base Address Registers (PCI Local Bus Specification 3.0 §6.2.5.1): a function's
I/O and memory ranges, as the guest sizes and places them.

A BAR's low bits are read-only and say what it is (bit 0: I/O; bits 2:1: 32- or
64-bit memory; bit 3: prefetchable); its address bits below the size are hardwired
to 0. So sizing needs no special case: software writes all ones, reads back the
size mask with the type bits (§6.2.5.1, "Address Maps"), and a BAR can only ever
hold an address aligned to its size. A 64-bit BAR is a pair: the next register holds
the upper 32 bits. I/O BARs decode 16 bits (x86 has 64 KiB of ports): their bits
31:16 are hardwired to 0, which §6.2.5.1 allows.

A BAR *decodes* (has a range on a bus) when the Command register enables its space
(I/O Space or Memory Space, §6.2.2) and its address is not 0. Address 0 counts as
"not assigned", as in QEMU: firmware and OSes leave unassigned BARs at 0, and a
range at 0 would cover the guest's RAM or the PIC's ports.

The platform learns about decode changes through two callbacks:

    on_bar_change(index, old, new)    # old/new: BarRange | None
    on_bar_write()                    # after every BAR or Command write, changed or not

called whenever the guest moves a decoding BAR (a write of either half of a 64-bit
BAR moves it, so a 64-bit move is two reports), toggles the decode bit, or resets the
function. `old` is the range to take off the bus (None if it was not decoding),
`new` the range to put on (None if it no longer decodes). The callback runs on the
vCPU thread that wrote the register, before the write returns. Nothing here checks
a new range against RAM or other devices: a guest may program a BAR over anything,
as on real hardware; the platform decides what that means (e.g. leave it off the bus
and log), and must not raise for it (a guest cannot be allowed to stop the VM).

`on_bar_write` follows every guest write of a BAR or of Command, even one that
leaves every register as it was (a BAR rewritten with its own value), and a reset or
restore, after their `on_bar_change` reports: on real hardware a decoding BAR
answers at its address whatever else happened, so a platform that had to refuse a
range (another device was there) tries it again then.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyvmm.pci.config_space import ConfigSpace
from pyvmm.pci.errors import PciError
from pyvmm.pci.registers import (
    BAR0,
    BAR_COUNT,
    BAR_IO_ADDRESS_MASK,
    BAR_MEMORY_ADDRESS_MASK,
    COMMAND,
    BarFlags,
    Command,
)

log = logging.getLogger(__name__)

IO_BAR_MIN = 4  # §6.2.5.1: an I/O BAR claims at least 4 bytes ...
IO_BAR_MAX = 256  # ... and at most 256
MEMORY_BAR_MIN = 16  # bits 3:0 of a memory BAR are type bits
MEMORY32_BAR_MAX = 1 << 31
MEMORY64_BAR_MAX = 1 << 63


class BarKind(enum.Enum):
    """What a BAR maps: I/O ports, or memory with a 32- or 64-bit address."""

    IO = "io"
    MEMORY32 = "mem32"
    MEMORY64 = "mem64"


class Space(enum.Enum):
    """Which bus a decoded range goes on."""

    IO = "io"
    MEMORY = "memory"


@dataclass(frozen=True)
class BarSpec:
    """The BAR a device declares: kind, size (a power of two) and prefetchability."""

    kind: BarKind
    size: int
    prefetchable: bool = False

    def __post_init__(self) -> None:
        low, high = {
            BarKind.IO: (IO_BAR_MIN, IO_BAR_MAX),
            BarKind.MEMORY32: (MEMORY_BAR_MIN, MEMORY32_BAR_MAX),
            BarKind.MEMORY64: (MEMORY_BAR_MIN, MEMORY64_BAR_MAX),
        }[self.kind]
        if not low <= self.size <= high or self.size & (self.size - 1):
            raise PciError(f"a {self.kind.value} BAR is a power of two, {low} to {high:#x}, not {self.size}")
        if self.prefetchable and self.kind is BarKind.IO:
            raise PciError("an I/O BAR cannot be prefetchable")

    @property
    def space(self) -> Space:
        return Space.IO if self.kind is BarKind.IO else Space.MEMORY

    @property
    def type_bits(self) -> int:
        """The read-only low bits of the BAR register."""
        if self.kind is BarKind.IO:
            return BarFlags.IO_SPACE
        bits = BarFlags.MEMORY_TYPE_64 if self.kind is BarKind.MEMORY64 else 0
        return bits | (BarFlags.PREFETCHABLE if self.prefetchable else 0)


@dataclass(frozen=True)
class BarRange:
    """A decoded BAR: [base, base + size) on the I/O or memory bus."""

    space: Space
    base: int
    size: int
    prefetchable: bool = False

    @property
    def end(self) -> int:
        return self.base + self.size


BarChange = Callable[[int, BarRange | None, BarRange | None], None]


def _register(index: int) -> int:
    return BAR0 + 4 * index


class BarSet:
    """The six BAR registers of a type-0 header, and what each decodes."""

    def __init__(self, config: ConfigSpace, specs: Mapping[int, BarSpec]) -> None:
        self._config = config
        self._specs = dict(specs)
        self.on_bar_change: BarChange | None = None
        self.on_bar_write: Callable[[], None] | None = None
        taken: set[int] = set()
        for index, spec in sorted(self._specs.items()):
            registers = (index, index + 1) if spec.kind is BarKind.MEMORY64 else (index,)
            if not all(0 <= r < BAR_COUNT for r in registers) or taken & set(registers):
                raise PciError(f"BAR {index} ({spec.kind.value}) does not fit in BARs 0-5 beside the others")
            taken.update(registers)
            self._program(index, spec)
        self._decoded: dict[int, BarRange | None] = dict.fromkeys(self._specs)
        config.watch(BAR0, 4 * BAR_COUNT, self.refresh, always=True)
        config.watch(COMMAND, 2, self.refresh, always=True)

    def _program(self, index: int, spec: BarSpec) -> None:
        register = _register(index)
        self._config.set(register, 4, spec.type_bits)
        if spec.kind is BarKind.IO:
            self._config.set_writable(register, 4, BAR_IO_ADDRESS_MASK & ~(spec.size - 1))
            return
        size_mask = ~(spec.size - 1)
        self._config.set_writable(register, 4, BAR_MEMORY_ADDRESS_MASK & size_mask)
        if spec.kind is BarKind.MEMORY64:
            self._config.set_writable(register + 4, 4, (size_mask >> 32) & 0xFFFF_FFFF)

    @property
    def specs(self) -> Mapping[int, BarSpec]:
        return self._specs

    def address(self, index: int) -> int:
        """The address the guest programmed into BAR `index` (0 if it has none)."""
        spec = self._specs.get(index)
        if spec is None:
            return 0
        register = _register(index)
        low = self._config.get(register, 4)
        if spec.kind is BarKind.IO:
            return low & BAR_IO_ADDRESS_MASK
        high = self._config.get(register + 4, 4) if spec.kind is BarKind.MEMORY64 else 0
        return high << 32 | low & BAR_MEMORY_ADDRESS_MASK

    def decoded(self, index: int) -> BarRange | None:
        """Where BAR `index` decodes now, or None."""
        return self._decoded.get(index)

    def _decode(self, index: int, spec: BarSpec, command: int) -> BarRange | None:
        enable = Command.IO_SPACE if spec.kind is BarKind.IO else Command.MEMORY_SPACE
        base = self.address(index)
        if not command & enable or base == 0:
            return None
        return BarRange(spec.space, base, spec.size, spec.prefetchable)

    def refresh(self) -> None:
        """Recompute every BAR's range from the registers; report each one that changed,
        then the write itself (`on_bar_write`)."""
        command = self._config.get(COMMAND, 2)
        for index, spec in self._specs.items():
            new = self._decode(index, spec, command)
            old = self._decoded[index]
            if new == old:
                continue
            self._decoded[index] = new
            log.debug("BAR %d: %s -> %s", index, old, new)
            if self.on_bar_change is not None:
                self.on_bar_change(index, old, new)
        if self.on_bar_write is not None:
            self.on_bar_write()
