"""What a machine's snapshot holds and how it is checked against the machine that
takes it back (the file itself is `pyvmm.snapshot.file`'s).

A snapshot is the file's named parts, each encoded by `pyvmm.snapshot.codec`, and the
guest's memory:

- "machine": the `MachineShape`, what the configuration must match at restore (RAM
  size, vCPUs, transport, the devices in order and each disk's size): the disks and
  TAPs themselves are given again, as QEMU's `-incoming` wants its devices again;
- "devices": every placed device's state by name (`DeviceManager.save`), saved first:
  a device that quiesces may still raise an interrupt, which the irqchip state saved
  after it then holds (Firecracker's order);
- "vm": the in-kernel irqchip, PIT and clock (`arch/x86/vm_state.py`);
- "vcpus": each vCPU's state (`arch/x86/vcpu_state.py`), read on its own thread.

Restore puts them back in the same order: devices (their interrupt lines may move),
then the VM state over them, then the vCPUs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pyvmm.arch.x86.vcpu_state import restore_vcpu, save_vcpu, saved_msr_indices
from pyvmm.arch.x86.vm_state import restore_vm, save_vm
from pyvmm.config import MachineConfig
from pyvmm.errors import StateError
from pyvmm.kvm import Vcpu, Vm
from pyvmm.machine.vcpu import VcpuRunner
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.snapshot.checks import check_bool, check_int, check_tuple, check_type, fail
from pyvmm.snapshot.codec import decode, encode
from pyvmm.snapshot.file import SnapshotFile
from pyvmm.snapshot.registry import saved_state

PART_MACHINE = "machine"
PART_DEVICES = "devices"
PART_VM = "vm"
PART_VCPUS = "vcpus"
PARTS = (PART_MACHINE, PART_DEVICES, PART_VM, PART_VCPUS)

_NAME = "machine"
_MAX_DEVICES = 64


@saved_state("disk-shape")
@dataclass(frozen=True)
class DiskShape:
    size: int  # bytes, as the guest saw it
    readonly: bool


@saved_state("machine-shape")
@dataclass(frozen=True)
class MachineShape:
    """What a restoring machine's configuration must match."""

    memory: int
    cpus: int
    transport: str
    console_device: str
    disks: tuple[DiskShape, ...]
    nets: int
    rng: bool
    test_devices: tuple[str, ...]

    @classmethod
    def of(cls, config: MachineConfig) -> MachineShape:
        """The shape of `config`'s machine; a disk whose file is gone is a `StateError`."""
        return cls(
            memory=config.memory_bytes(),
            cpus=config.cpus,
            transport=config.transport,
            console_device=config.console_device,
            disks=tuple(DiskShape(_disk_size(disk.path), disk.readonly) for disk in config.disks),
            nets=len(config.nets),
            rng=config.rng,
            test_devices=tuple(config.test_devices),
        )

    def check_matches(self, config: MachineConfig) -> None:
        """`StateError` naming the first difference between this (saved) shape and
        `config`'s machine."""
        saved = check_shape(self)
        here = MachineShape.of(config)
        for field, said in (
            ("RAM size", "memory"),
            ("vCPU count", "cpus"),
            ("virtio transport", "transport"),
            ("console device", "console_device"),
            ("number of disks", None),
            ("number of network cards", "nets"),
            ("entropy device", "rng"),
            ("test devices", "test_devices"),
        ):
            if said is None:
                then, now = len(saved.disks), len(here.disks)
            else:
                then, now = getattr(saved, said), getattr(here, said)
            if then != now:
                raise StateError(f"the snapshot's machine had {field} {then!r}; this one has {now!r}")
        for index, (then_disk, now_disk) in enumerate(zip(saved.disks, here.disks, strict=True)):
            if then_disk.size != now_disk.size:
                raise StateError(
                    f"disk {index} was {then_disk.size} bytes when the snapshot was taken; "
                    f"{config.disks[index].path} is {now_disk.size} bytes"
                )
            if then_disk.readonly != now_disk.readonly:
                raise StateError(f"disk {index}: read-only was {then_disk.readonly}, now {now_disk.readonly}")


def check_shape(state: object) -> MachineShape:
    """A `MachineShape` read from a snapshot: every field checked."""
    shape = check_type(_NAME, state, MachineShape)
    check_int(_NAME, "memory", shape.memory, 1, 1 << 52)
    check_int(_NAME, "cpus", shape.cpus, 1, 1024)
    for field in ("transport", "console_device"):
        if not isinstance(getattr(shape, field), str):
            raise fail(_NAME, f"{field} is not a string")
    for disk in check_tuple(_NAME, "disks", shape.disks, _MAX_DEVICES):
        checked = check_type(_NAME, disk, DiskShape)
        check_int(_NAME, "disk size", checked.size, 0, 1 << 62)
        check_bool(_NAME, "disk readonly", checked.readonly)
    check_int(_NAME, "nets", shape.nets, 0, _MAX_DEVICES)
    check_bool(_NAME, "rng", shape.rng)
    for device in check_tuple(_NAME, "test_devices", shape.test_devices, _MAX_DEVICES):
        if not isinstance(device, str):
            raise fail(_NAME, "a test device name is not a string")
    return shape


def _disk_size(path: str) -> int:
    """As virtio-blk measures it: lseek to the end gives a block device's size too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StateError(f"disk {path}: {exc.strerror}") from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


# --- taking and putting back ----------------------------------------------------------------


def save_state(
    config: MachineConfig, devices: DeviceManager, vm: Vm, runners: Sequence[VcpuRunner]
) -> dict[str, bytes]:
    """The snapshot's parts of a paused machine, in the module docstring's order."""
    msr_indices = saved_msr_indices(runners[0].vcpu) if runners else ()
    device_states = devices.save()  # first: see the module docstring
    vm_state = save_vm(vm)
    vcpu_states = tuple(
        runner.call(functools.partial(save_vcpu, msr_indices=msr_indices)) for runner in runners
    )
    return {
        PART_MACHINE: encode(MachineShape.of(config)),
        PART_DEVICES: encode(tuple(sorted(device_states.items()))),
        PART_VM: encode(vm_state),
        PART_VCPUS: encode(vcpu_states),
    }


def check_shape_of(saved: SnapshotFile, config: MachineConfig) -> None:
    """`StateError` unless the snapshot has every part and its machine is `config`'s."""
    missing = [name for name in PARTS if name not in saved.parts]
    if missing:
        raise StateError(f"{saved.path}: the snapshot has no {', '.join(missing)} state")
    shape = check_shape(decode(saved.parts[PART_MACHINE]))
    shape.check_matches(config)


def restore_state(saved: SnapshotFile, devices: DeviceManager, vm: Vm, vcpus: Sequence[Vcpu]) -> None:
    """Put a snapshot's state into a machine just built from a matching configuration
    (nothing runs yet), in the module docstring's order; `StateError` on the first
    thing that does not fit."""
    pairs = check_tuple(_NAME, "devices", decode(saved.parts[PART_DEVICES]), 4 * _MAX_DEVICES)
    states: dict[str, object] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise fail(_NAME, "a device state is not a (name, state) pair")
        states[pair[0]] = pair[1]
    devices.restore(states)
    restore_vm(vm, decode(saved.parts[PART_VM]))
    vcpu_states = check_tuple(_NAME, "vcpus", decode(saved.parts[PART_VCPUS]), len(vcpus))
    if len(vcpu_states) != len(vcpus):
        raise fail(_NAME, f"{len(vcpu_states)} vCPU states for {len(vcpus)} vCPUs")
    for vcpu, state in zip(vcpus, vcpu_states, strict=True):
        restore_vcpu(vcpu, state)
