"""What every device is to the machine: a name, the address ranges it claims, the ACPI
it contributes (and, for a few, kernel command-line words), a way to close it, and its
state: `reset()` to power-on, `save()` as plain data, `restore()` of a checked state.

The device models themselves (`Serial16550`, `CmosRtc`, ...) only answer reads and
writes; a `Device` pairs a model with where it sits, so the device manager can put it on
the buses and into the DSDT from one description (Firecracker's `device_manager`
does the same from `legacy.rs`).

Saved state follows Firecracker's `Persist` and vm-superio's `SerialState`: each model
that keeps state (`Stateful`) saves a frozen dataclass of plain fields and restores one
only after checking every field, since a saved state is untrusted input. Each state
class is registered beside its model under a stable tag (`pyvmm.snapshot.registry`),
which the snapshot codec writes instead of a Python name. A placed device's
`DeviceState` holds the states of all its models in placement order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pyvmm.arch.x86.acpi.aml import Aml
from pyvmm.bus import BusDevice
from pyvmm.errors import StateError
from pyvmm.snapshot.checks import check_tuple, check_type
from pyvmm.snapshot.registry import SavedState, saved_state


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


ModelState = SavedState
"""The saved state of one device model: a frozen dataclass registered with
`pyvmm.snapshot.registry` beside the model (`@saved_state`), which names no device
package here; each model's `restore()` checks it is of its own class."""


@runtime_checkable
class Stateful(Protocol):
    """A device model with a power-on state and a saved state."""

    def reset(self) -> None:
        """Back to power-on, keeping the host-side wiring; raised lines go low."""

    def save(self) -> ModelState: ...

    def restore(self, state: object) -> None:
        """Take a saved state, checked first: a bad one raises `StateError` and leaves
        the model as it was. Outputs (line levels) follow the restored registers."""


@saved_state("device")
@dataclass(frozen=True)
class DeviceState:
    """A placed device's saved state: one per model that keeps state, in placement order."""

    models: tuple[ModelState, ...]


class Device(Protocol):
    """The interface the device manager needs of a device."""

    @property
    def name(self) -> str: ...

    def regions(self) -> Sequence[Region]: ...

    def aml(self) -> Sequence[Aml]: ...

    def close(self) -> None: ...

    def reset(self) -> None: ...

    def save(self) -> DeviceState: ...

    def restore(self, state: object) -> None: ...


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

    def stateful_models(self) -> tuple[Stateful, ...]:
        """The model, then every other region handler that keeps state (the power
        row's sleep registers, the second port sink), each once. `StateError` when the
        model itself keeps no saved state (yet): its state would be lost."""
        if not isinstance(self.model, Stateful):
            raise StateError(f"{self.name}: this device cannot be reset or saved yet")
        found: list[Stateful] = [self.model]
        for region in self.placement:
            handler = region.handler
            if isinstance(handler, Stateful) and all(handler is not seen for seen in found):
                found.append(handler)
        return tuple(found)

    def reset(self) -> None:
        for model in self.stateful_models():
            model.reset()

    def save(self) -> DeviceState:
        return DeviceState(tuple(model.save() for model in self.stateful_models()))

    def restore(self, state: object) -> None:
        """Restore every model, or none: if one refuses its state, those restored
        before it get back the state they had."""
        models = self.stateful_models()
        checked = check_type(self.name, state, DeviceState)
        parts = check_tuple(self.name, "models", checked.models, len(models))
        if len(parts) != len(models):
            raise StateError(f"{self.name} state: {len(parts)} model states for {len(models)} models")
        before = [model.save() for model in models]
        for index, (model, part) in enumerate(zip(models, parts, strict=True)):
            try:
                model.restore(part)
            except StateError:
                for earlier, saved in zip(models[:index], before, strict=False):
                    earlier.restore(saved)
                raise


def ports(base: int, length: int, handler: BusDevice, label: str) -> Region:
    return Region(AddressSpace.PORT, base, length, handler, label)


def mmio(base: int, length: int, handler: BusDevice, label: str) -> Region:
    return Region(AddressSpace.MMIO, base, length, handler, label)
