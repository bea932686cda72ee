"""`Machine.save_devices()` / `restore_devices()` on real VMs: a machine with every kind
of device pyvmm places (the PC rows, the PCI platform or NoPci, pc-testdev and
pci-testdev, virtio disk, entropy, console and network card, over PCI and over MMIO)
saves them all; a second machine built from the same configuration takes the states
and saves the same; a spoiled state for one device changes none; and the devices are
only read while nothing runs them. No guest runs: the machines are built, not
started (the kernel is a spinning Multiboot image)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
from guest_code import SPIN, multiboot_image, write
from net.netns import Namespace, namespace

from pyvmm import Machine, MachineConfig
from pyvmm.device_config import DiskConfig, NetConfig
from pyvmm.devices.device import DeviceState, PlacedDevice
from pyvmm.devices.rtc_state import RtcState
from pyvmm.devices.testdev_state import PcTestdevState
from pyvmm.errors import ConfigError, ImageError, StateError
from pyvmm.outcome import ExitKind
from pyvmm.virtio.mmio import Reg
from pyvmm.virtio.pci import COMMON_OFFSET, Common, VirtioPciFunction

pytestmark = pytest.mark.kvm
__all__ = ["namespace"]  # the fixture, imported for pytest (the network cases ask for it)

TAP = "mstate0"
LATCHED = 1 << 31 | 0x10  # CONFIG_ADDRESS left by the guest: 00:00.0, register 0x10
ACKNOWLEDGE = 1  # virtio 1.2 §2.1 device status


def machine_config(tmp_path: Path, transport: str, net: bool) -> MachineConfig:
    disk = tmp_path / "disk.img"
    if not disk.exists():
        disk.write_bytes(bytes(1 << 16))
    return MachineConfig(
        kernel=str(write(tmp_path, "spin.img", multiboot_image(SPIN))),
        disks=(DiskConfig(str(disk), serial="state-test"),),
        nets=(NetConfig(tap=TAP, mac="52:54:00:12:34:56"),) if net else (),
        rng=True,
        console_device="virtio",
        transport=transport,
        test_devices=("pci-testdev", "pc-testdev") if transport == "pci" else ("pc-testdev",),
    )


@contextmanager
def built(config: MachineConfig, namespace: Namespace | None) -> Iterator[Machine]:
    """A machine built, not started; torn down at the end (stop, then run() only tears
    down), so the next one can take the same disk and TAP, as a restoring VMM does."""
    machine = Machine(config)
    with namespace.inside() if namespace is not None else nullcontext():  # the TAP opens here
        machine.build()
    try:
        yield machine
    finally:
        machine.stop()
        assert machine.run().exit.kind is ExitKind.STOPPED


def placed(machine: Machine) -> list[PlacedDevice]:
    return [device for device in machine.devices.devices if isinstance(device, PlacedDevice)]


def use_devices(machine: Machine) -> None:
    """What a guest would leave behind in each kind of device: registers written on the
    buses as a vCPU's exits write them."""
    ports, mmio = machine.ports, machine.mmio
    ports.write(0x3FF, 1, 0x5A)  # COM1's scratch register
    ports.write(0xE0, 4, 0xDEAD_BEEF)  # pc-testdev's
    ports.write(0x2005, 1, 1)  # pc-testdev raises IRQ 5
    for device in placed(machine):
        model = device.model
        if isinstance(model, VirtioPciFunction):
            bar = model.function.bars.address(0)
            assert bar is not None
            mmio.write(bar + COMMON_OFFSET + Common.DEVICE_STATUS, 1, ACKNOWLEDGE)
        elif device.name.startswith("virtio-mmio"):
            mmio.write(device.regions()[0].base + Reg.STATUS, 4, ACKNOWLEDGE)
    if machine.pci is not None:
        (slot,) = [s for s, entry in machine.pci.slots.items() if entry.label.startswith("pci-testdev")]
        ports.write(0xCF8, 4, 1 << 31 | slot << 11 | 0x14)  # its I/O BAR
        io = ports.read(0xCFC, 4) & ~3
        ports.write(io, 1, 2)  # selects portio-datamatch-eventfd
        ports.write(0xCF8, 4, LATCHED)


CASES = [("pci", False), ("mmio", False), ("pci", True), ("mmio", True)]


@pytest.fixture(params=CASES, ids=[f"{t}{'-net' if n else ''}" for t, n in CASES])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[MachineConfig, Namespace | None]:
    transport, net = request.param
    namespace: Namespace | None = None
    if net:
        namespace = request.getfixturevalue("namespace")  # skips, with its reason, without root or TUN
        namespace.add_tap(TAP)
    return machine_config(tmp_path, transport, net), namespace


def settled(states: dict[str, DeviceState]) -> dict[str, DeviceState]:
    """`states` with the RTC's interrupt flags cleared: register C's PF and UF rise with
    host time, so a save a moment after a restore may hold more of them."""

    def model(state: object) -> object:
        return replace(state, flags=0) if isinstance(state, RtcState) else state

    return {name: DeviceState(tuple(model(part) for part in state.models)) for name, state in states.items()}


def test_every_device_saves_and_a_second_machine_takes_the_states(
    case: tuple[MachineConfig, Namespace | None],
) -> None:
    config, namespace = case
    with built(config, namespace) as first:
        kinds = {type(device.model).__name__ for device in placed(first)}
        assert {"Serial16550", "CmosRtc", "I8042", "FwCfg", "PcTestdev"} <= kinds
        virtio = [device for device in first.devices.devices if "virtio" in device.name]
        assert len(virtio) == 3 + len(config.nets)  # disk, entropy, console, the card
        use_devices(first)
        states = first.save_devices()
    assert set(states) == {device.name for device in first.devices.devices}

    with built(config, namespace) as second:
        fresh = second.save_devices()
        assert fresh != states and fresh.keys() == states.keys()
        second.restore_devices(states)
        assert settled(second.save_devices()) == settled(states)
        # The guest-visible registers, read back on the second machine's buses.
        assert second.ports.read(0x3FF, 1) == 0x5A and second.ports.read(0xE0, 4) == 0xDEAD_BEEF
        if second.pci is not None:
            assert second.ports.read(0xCF8, 4) == LATCHED


def test_a_spoiled_state_for_one_device_changes_no_device(tmp_path: Path) -> None:
    config = machine_config(tmp_path, "pci", net=False)
    with built(config, None) as first:
        use_devices(first)
        states = first.save_devices()
    with built(config, None) as second:
        before = second.save_devices()
        assert before != states  # so a device left with the new state would show
        # The last device refuses, after every other one has taken its state: they go back.
        last = second.devices.devices[-1].name
        with pytest.raises(StateError, match=re.escape(f"{last}: ")):
            second.restore_devices({**states, last: DeviceState(())})
        assert second.save_devices() == before
        # A value out of range in one model's state is refused the same way.
        (pc_testdev,) = states["pc-testdev"].models
        assert isinstance(pc_testdev, PcTestdevState)
        spoiled = DeviceState((replace(pc_testdev, data=1 << 32),))
        with pytest.raises(StateError, match="pc-testdev"):
            second.restore_devices({**states, "pc-testdev": spoiled})
        assert second.save_devices() == before
        with pytest.raises(StateError, match="missing"):
            second.restore_devices({name: state for name, state in states.items() if name != "pci"})
        assert second.save_devices() == before


def test_devices_are_saved_only_while_nothing_runs_them(tmp_path: Path) -> None:
    config = replace(machine_config(tmp_path, "mmio", net=False), timeout=60)
    machine = Machine(config)
    with pytest.raises(StateError, match="not built"):
        machine.save_devices()
    running = threading.Thread(target=machine.run)
    running.start()
    try:
        deadline = time.monotonic() + 30
        while not any(runner.thread.is_alive() for runner in machine.runners):
            assert time.monotonic() < deadline and running.is_alive(), "the vCPU never started"
            time.sleep(0.01)
        with pytest.raises(StateError, match="while the vCPUs run"):
            machine.save_devices()
        with pytest.raises(StateError, match="while the vCPUs run"):
            machine.restore_devices({})
    finally:
        machine.stop()
        running.join(30)
    with pytest.raises(StateError, match="ended"):
        machine.save_devices()


def test_the_io_thread_must_be_paused(tmp_path: Path) -> None:
    with built(machine_config(tmp_path, "mmio", net=False), None) as machine:
        machine.io.start()  # as run() starts it, without the vCPUs
        with pytest.raises(StateError, match="I/O thread"):
            machine.save_devices()
        assert machine.io.pause(5)
        states = machine.save_devices()
        machine.restore_devices(states)
        machine.io.resume()


def test_a_machine_that_cannot_be_built_is_torn_down_and_does_not_run(tmp_path: Path) -> None:
    config = machine_config(tmp_path, "mmio", net=False)
    config = replace(config, disks=(DiskConfig(str(tmp_path / "absent.img")),))
    machine = Machine(config)
    with pytest.raises(ImageError, match=r"absent\.img"):
        machine.build()
    with pytest.raises(StateError, match="ended"):
        machine.save_devices()
    with pytest.raises(ConfigError, match="once"):
        machine.run()
    with pytest.raises(ConfigError, match="once"):
        machine.build()
