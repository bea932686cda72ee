"""What every device is to the machine: a name, the address ranges it claims, the ACPI
it contributes (and, for a few, kernel command-line words), and a way to close it.

The device models themselves (`Serial16550`, `CmosRtc`, ...) only answer reads and
writes; a `Device` pairs a model with where it sits, so the device manager can put it on
the buses and into the DSDT from one description (Firecracker's `device_manager`
does the same from `legacy.rs`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pyvmm.arch.x86.acpi.aml import Aml
from pyvmm.bus import BusDevice


class AddressSpace(enum.Enum):
    PORT = "port"
    MMIO = "mmio"


@dataclass(frozen=True)
class Region:
    """One range a device claims: `length` addresses from `base`, served by `handler`."""

    space: AddressSpace
    base: int
    length: int
    handler: BusDevice
    label: str  # shown in --stats, e.g. "serial (COM1)"


class Device(Protocol):
    """The interface the device manager needs of a device."""

    @property
    def name(self) -> str: ...

    def regions(self) -> Sequence[Region]: ...

    def aml(self) -> Sequence[Aml]: ...

    def close(self) -> None: ...


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class PlacedDevice:
    """A device model with its placement: the row a platform table builds."""

    name: str
    model: object
    placement: tuple[Region, ...]
    description: tuple[Aml, ...] = ()
    on_close: Callable[[], None] = field(default=_nothing)
    # Words for a Linux guest's kernel command line that announce the device where no
    # firmware table does (e.g. `virtio_mmio.device=512@0xd0000000:5`).
    kernel_parameters: tuple[str, ...] = ()

    def regions(self) -> Sequence[Region]:
        return self.placement

    def aml(self) -> Sequence[Aml]:
        return self.description

    def close(self) -> None:
        self.on_close()


def ports(base: int, length: int, handler: BusDevice, label: str) -> Region:
    return Region(AddressSpace.PORT, base, length, handler, label)


def mmio(base: int, length: int, handler: BusDevice, label: str) -> Region:
    return Region(AddressSpace.MMIO, base, length, handler, label)
