"""The device manager: owns the buses, the resource allocator and the devices, puts
each device's ranges on its bus, gathers the ACPI and the kernel command-line words
they contribute, and resets, saves and restores them all."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from pyvmm.arch.x86.acpi.aml import Aml
from pyvmm.boot.entry import encode_text
from pyvmm.bus import Bus, MmioBus, PortBus
from pyvmm.devices.device import AddressSpace, Device, DeviceState, PlacedDevice
from pyvmm.errors import LifecycleError, StateError
from pyvmm.platform.resources import ResourceAllocator

log = logging.getLogger(__name__)
_Model = TypeVar("_Model")


@runtime_checkable
class Pausable(Protocol):
    """A device with threads of its own (block workers, the RTC's timer): `pause`
    returns once none of them touches guest memory, a queue or an interrupt line (False
    if that took longer than `timeout` seconds), `resume` lets them go on."""

    def pause(self, timeout: float) -> bool: ...

    def resume(self) -> None: ...


class DeviceManager:
    """Every device of one machine, in the order they were added."""

    def __init__(self, resources: ResourceAllocator) -> None:
        self.ports = PortBus()
        self.mmio = MmioBus()
        self.resources = resources
        self.devices: list[Device] = []

    def bus(self, space: AddressSpace) -> Bus:
        return self.ports if space is AddressSpace.PORT else self.mmio

    def add(self, device: Device) -> Device:
        """Claim the device's ranges (from the allocator, then on the bus) and keep it."""
        for region in device.regions():
            window = self.resources.ports if region.space is AddressSpace.PORT else None
            if window is not None:
                window.reserve(region.base, region.length)
            self.bus(region.space).insert(region.base, region.length, region.handler, region.label)
        self.devices.append(device)
        log.debug("device %s: %s", device.name, [(r.space.value, r.base, r.length) for r in device.regions()])
        return device

    def add_all(self, devices: Iterable[Device]) -> None:
        for device in devices:
            self.add(device)

    def model(self, kind: type[_Model]) -> _Model | None:
        """The first device model of type `kind` (e.g. the UART), if there is one."""
        for device in self.devices:
            if isinstance(device, PlacedDevice) and isinstance(device.model, kind):
                return device.model
        return None

    def aml(self) -> Sequence[Aml]:
        """What the devices contribute to the DSDT's ``\\_SB_``, in device order."""
        return [term for device in self.devices for term in device.aml()]

    def kernel_parameters(self) -> list[str]:
        """The kernel command-line words the devices contribute (a `PlacedDevice`'s, or
        any device's that has `kernel_parameters`, as `NoPci`'s pci=off), in device order."""
        return [word for device in self.devices for word in getattr(device, "kernel_parameters", ())]

    def kernel_cmdline(self, cmdline: str | bytes) -> str | bytes:
        """The user's kernel command line with the devices' words added (as given when
        there are none). They go before a ``--``: Linux passes what follows it to init
        (Documentation/admin-guide/kernel-parameters.rst)."""
        words = self.kernel_parameters()
        if not words:
            return cmdline
        added = " ".join(words).encode("ascii")
        line = encode_text(cmdline, "kernel command line")
        tokens = line.split(b" ")
        if b"--" in tokens:
            cut = tokens.index(b"--")
            return b" ".join([*tokens[:cut], added, *tokens[cut:]]).lstrip(b" ")
        return b" ".join([line, added]) if line.strip() else added

    def reset(self) -> None:
        """Every device back to its power-on state. One that cannot be reset does not
        stop the others; all such are named in one `StateError` afterwards."""
        failed: list[str] = []
        for device in self.devices:
            try:
                device.reset()
            except StateError as exc:
                failed.append(str(exc))
        if failed:
            raise StateError("; ".join(failed))

    def save(self) -> dict[str, DeviceState]:
        """Every device's state, by device name (names must be unique to be restored).
        `StateError`, naming each device that cannot save its state, if one cannot."""
        self._unique_names()
        states: dict[str, DeviceState] = {}
        failed: list[str] = []
        for device in self.devices:
            try:
                states[device.name] = device.save()
            except StateError as exc:
                failed.append(str(exc))
        if failed:
            raise StateError("; ".join(failed))
        return states

    def restore(self, states: object) -> None:
        """Restore every device from a mapping like `save()`'s, whose names must be
        exactly this machine's devices; all or nothing: when one device refuses its
        state, those restored before it get back the state they had."""
        if not isinstance(states, Mapping):
            raise StateError(f"device states are a {type(states).__name__}, not a mapping by device name")
        names = self._unique_names()
        given = set(states)
        missing, unknown = names - given, given - names
        if missing or unknown:
            raise StateError(
                "device states do not match the devices:"
                + (f" missing {sorted(missing)}" if missing else "")
                + (f" unknown {sorted(map(repr, unknown))}" if unknown else "")
            )
        before = self.save()
        done: list[Device] = []
        for device in self.devices:
            try:
                device.restore(states[device.name])
            except StateError as exc:
                for earlier in reversed(done):
                    earlier.restore(before[earlier.name])
                raise StateError(f"{device.name}: {exc}") from exc
            done.append(device)

    def _unique_names(self) -> set[str]:
        names = {device.name for device in self.devices}
        if len(names) != len(self.devices):
            raise StateError("two devices share a name; their states could not be told apart")
        return names

    def pause(self, timeout: float) -> None:
        """Quiesce every device that has threads of its own (`Pausable`), the pause
        order's last step: after it no device touches guest memory, a queue or an
        interrupt line until `resume()`. `LifecycleError` naming the devices that did
        not quiesce within `timeout` seconds (the others stay paused: `resume()`)."""
        deadline = time.monotonic() + timeout
        stuck = [
            device.name
            for device, model in self._pausable()
            if not model.pause(max(deadline - time.monotonic(), 0.0))
        ]
        if stuck:
            raise LifecycleError(f"devices did not quiesce within {timeout} s: {', '.join(stuck)}")

    def resume(self) -> None:
        """Let every paused device go on (idempotent: a device not paused ignores it)."""
        for _, model in reversed(self._pausable()):
            model.resume()

    def _pausable(self) -> list[tuple[Device, Pausable]]:
        """The placed devices whose model pauses (a virtio transport passes it on to
        its device)."""
        found: list[tuple[Device, Pausable]] = []
        for device in self.devices:
            model = device.model if isinstance(device, PlacedDevice) else device
            if isinstance(model, Pausable):
                found.append((device, model))
        return found

    def close(self) -> None:
        """Close every device, the last added first; one failing does not stop the rest."""
        for device in reversed(self.devices):
            try:
                device.close()
            except Exception:
                log.exception("closing device %s failed", device.name)
