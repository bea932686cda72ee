"""The machine's virtio devices (pyvmm/platform/virtio.py): built from the config,
placed on virtio-mmio with a window, a GSI and one announcement (DSDT or kernel
command line), on a real VM and its I/O thread; the machine boots with them."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from net.netns import Namespace, namespace

from pyvmm import Machine, MachineConfig
from pyvmm.arch.x86.layout import MMIO_HOLE_START
from pyvmm.device_config import DiskConfig, NetConfig
from pyvmm.devices.device import PlacedDevice
from pyvmm.errors import ConfigError, ImageError
from pyvmm.io.thread import IoThread
from pyvmm.irq import NoIrqLine
from pyvmm.kvm import Kvm
from pyvmm.memory import GuestMemory
from pyvmm.net.tap import TapError
from pyvmm.outcome import ConsoleInput, InterruptLine
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.resources import ResourceAllocator, ResourceError
from pyvmm.platform.virtio import (
    ISA_GSIS,
    VirtioContext,
    acpi_disabled,
    mmio_gsis,
    place_on_mmio,
    virtio_devices,
)
from pyvmm.virtio import models
from pyvmm.virtio.console import ConsoleDevice
from pyvmm.virtio.device import Activation, DeviceType, VirtioDevice
from pyvmm.virtio.mmio import MAGIC, VirtioMmio
from pyvmm.virtio.net import NetDevice

__all__ = ["namespace"]  # the fixture, imported for pytest
GUESTS = Path(__file__).resolve().parents[2] / "build" / "guests"
RAM = 1 << 24


class Quiet(VirtioDevice):
    """A device with one queue that does nothing; remembers being closed."""

    device_type = DeviceType.ENTROPY
    kind = "test-device"

    def __init__(self, name: str = "quiet") -> None:
        self.name = name
        self.closed = False

    @property
    def queue_sizes(self) -> Sequence[int]:
        return (16,)

    def device_features(self) -> int:
        return 0

    def config(self) -> bytes:
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        pass

    def activate(self, activation: Activation) -> None:
        pass

    def notify(self, queue: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def no_line(gsi: int) -> InterruptLine:
    return NoIrqLine()


@pytest.fixture
def context() -> Iterator[VirtioContext]:
    with Kvm() as kvm, kvm.create_vm() as vm:
        memory = GuestMemory([(0, RAM)])
        io = IoThread(lambda source, error: None)
        yield VirtioContext(memory, vm, io, ResourceAllocator(RAM), no_line, lambda data: None)
        io.stop()
        memory.close()


# --- the announcement ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "off"),
    [
        ("", False),
        ("console=ttyS0", False),
        ("console=ttyS0 acpi=off", True),
        (b"acpi=off quiet", True),
        ("acpi=off acpi=force", False),  # the last one counts
        ("acpi=force acpi=off", True),
        ("acpi=offline", False),
        ("init=/bin/sh -- acpi=off", False),  # init's argument, not the kernel's
    ],
)
def test_acpi_off_on_the_command_line(cmdline: str | bytes, off: bool) -> None:
    assert acpi_disabled(cmdline) is off


def test_without_acpi_only_the_pics_irqs_are_used() -> None:
    assert mmio_gsis(acpi=False) == ISA_GSIS == (5, 6, 7, 10, 11)
    # With ACPI the IOAPIC-only pins too: all of 16-23, PCI INTx's, on a machine without PCI.
    assert mmio_gsis(acpi=True) == (*ISA_GSIS, *range(16, 24))
    assert not set(mmio_gsis(acpi=True)) & {0, 1, 2, 4, 8, 9, 12}  # the PC's ISA devices


def manager_with(*words: str) -> DeviceManager:
    manager = DeviceManager(ResourceAllocator(RAM))
    manager.add(PlacedDevice("announced", object(), (), kernel_parameters=words))
    return manager


def test_device_words_are_appended_to_the_users_command_line() -> None:
    manager = manager_with("virtio_mmio.device=512@0xc0000000:5", "virtio_mmio.device=512@0xc0001000:6")
    words = b"virtio_mmio.device=512@0xc0000000:5 virtio_mmio.device=512@0xc0001000:6"
    assert manager.kernel_cmdline("console=ttyS0 acpi=off") == b"console=ttyS0 acpi=off " + words
    assert manager.kernel_cmdline(b"") == words
    # Before `--`: what follows it is init's.
    assert manager.kernel_cmdline("quiet -- single") == b"quiet " + words + b" -- single"
    assert manager.kernel_cmdline("-- single") == words + b" -- single"


def test_without_device_words_the_command_line_is_as_given() -> None:
    manager = DeviceManager(ResourceAllocator(RAM))
    manager.add(PlacedDevice("silent", object(), ()))
    assert manager.kernel_cmdline("console=ttyS0 -- x") == "console=ttyS0 -- x"


# --- placement on virtio-mmio ---------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.parametrize("acpi", [True, False], ids=["dsdt", "cmdline"])
def test_each_device_gets_a_window_a_gsi_and_one_announcement(context: VirtioContext, acpi: bool) -> None:
    devices = [Quiet("a"), Quiet("b"), Quiet("c")]
    placed = place_on_mmio(devices, context, acpi=acpi)
    manager = DeviceManager(context.resources)
    manager.add_all(placed)
    try:
        bases = [device.regions()[0].base for device in placed]
        assert bases == [MMIO_HOLE_START, MMIO_HOLE_START + 0x1000, MMIO_HOLE_START + 0x2000]
        assert [device.regions()[0].length for device in placed] == [0x200] * 3
        for index, base in enumerate(bases):
            assert manager.mmio.read(base, 4) == MAGIC  # the window answers on the bus
            assert manager.mmio.read(base + 0x8, 4) == DeviceType.ENTROPY
            assert isinstance(placed[index].model, VirtioMmio)
        if acpi:
            assert manager.kernel_parameters() == []
            aml = b"".join(term.encode() for term in manager.aml())
            assert aml.count(b"LNRO0005") == 3
            assert b"VR00" in aml and b"VR02" in aml
        else:
            assert manager.aml() == []
            assert manager.kernel_parameters() == [
                "virtio_mmio.device=512@0xc0000000:5",
                "virtio_mmio.device=512@0xc0001000:6",
                "virtio_mmio.device=512@0xc0002000:7",
            ]
        # The next allocation goes around the windows.
        assert context.resources.mmio32.allocate(0x1000, 0x1000) == MMIO_HOLE_START + 0x3000
    finally:
        manager.close()
    assert all(device.closed for device in devices)


@pytest.mark.kvm
def test_more_devices_than_gsis_is_one_error_and_closes_them_all(context: VirtioContext) -> None:
    devices = [Quiet(str(i)) for i in range(len(ISA_GSIS) + 1)]
    with pytest.raises(ResourceError, match="6 virtio-mmio devices, but only 5 free GSIs with acpi=off"):
        place_on_mmio(devices, context, acpi=False)
    assert all(device.closed for device in devices)


@pytest.mark.kvm
def test_thirteen_devices_get_distinct_gsis_and_a_fourteenth_is_one_error(context: VirtioContext) -> None:
    placed = place_on_mmio([Quiet(str(i)) for i in range(13)], context, acpi=True)
    try:
        owners = [context.resources.gsis.owner(gsi) for gsi in mmio_gsis(acpi=True)]
        assert owners == [f"virtio-mmio {i} ({i})" for i in range(13)]
    finally:
        for device in placed:
            device.close()
    with Kvm() as kvm, kvm.create_vm() as vm:
        fresh = VirtioContext(context.memory, vm, context.io, ResourceAllocator(RAM), no_line, print)
        devices = [Quiet(str(i)) for i in range(14)]
        with pytest.raises(ResourceError, match=r"14 virtio-mmio devices, but only 13 free GSIs \(5, 6,"):
            place_on_mmio(devices, fresh, acpi=True)
        assert all(device.closed for device in devices)


@pytest.mark.kvm
def test_gsis_the_other_devices_hold_are_skipped(context: VirtioContext) -> None:
    """The platform's fixed lines (as the machine's line() claims them) and PCI's
    INTx GSIs are never given to a virtio-mmio device."""
    context.resources.gsis.claim(5, "a platform device")
    for gsi in (16, 17, 18, 19):
        context.resources.gsis.claim(gsi, "PCI INTx")
    placed = place_on_mmio([Quiet("a"), Quiet("b"), Quiet("c"), Quiet("d"), Quiet("e")], context, acpi=True)
    try:
        words = [context.resources.gsis.owner(gsi) for gsi in (5, 6, 7, 10, 11, 16, 20)]
        assert words == [
            "a platform device", "virtio-mmio 0 (a)", "virtio-mmio 1 (b)", "virtio-mmio 2 (c)",
            "virtio-mmio 3 (d)", "PCI INTx", "virtio-mmio 4 (e)",
        ]  # fmt: skip
        assert (20).to_bytes(4, "little") in placed[4].aml()[0].encode()  # its _CRS Interrupt
    finally:
        for device in placed:
            device.close()


@pytest.mark.kvm
def test_a_failed_placement_closes_the_devices_placed_before(context: VirtioContext) -> None:
    devices = [Quiet("a"), Quiet("b")]
    window = context.resources.mmio32
    window.reserve(window.start + 0x1000, window.end - window.start - 0x1000)  # room for one
    with pytest.raises(ResourceError, match="no room"):
        place_on_mmio(devices, context, acpi=True)
    assert all(device.closed for device in devices)


@pytest.mark.kvm
def test_a_device_that_cannot_be_placed_is_closed(
    context: VirtioContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = Quiet("rng")
    monkeypatch.setattr(models, "rng_device", lambda: built)
    config = MachineConfig(kernel=str(GUESTS / "hello.elf"), rng=True)  # over PCI, with no PCI bus here
    with pytest.raises(ConfigError, match="PCI"):
        virtio_devices(config, context)
    assert built.closed
    assert virtio_devices(MachineConfig(kernel=str(GUESTS / "hello.elf")), context) == []


# --- in the machine -----------------------------------------------------------------------------


@pytest.mark.kvm
def test_a_machine_boots_with_virtio_rng_on_mmio() -> None:
    machine = Machine(MachineConfig(kernel=str(GUESTS / "hello.elf"), rng=True, transport="mmio"))
    result = machine.run()
    assert "Hello from the pyvmm demo guest!" in result.console_text, result.exit.describe()
    placed = [device for device in machine.devices.devices if device.name.startswith("virtio-mmio")]
    assert [device.name for device in placed] == ["virtio-mmio 0 (virtio-rng)"]
    assert "virtio-mmio 0 (virtio-rng)" in {entry.name for entry in result.stats.ranges}


@pytest.mark.kvm
def test_a_machine_puts_disks_before_the_entropy_device(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 16))
    config = MachineConfig(
        kernel=str(GUESTS / "hello.elf"), disks=(DiskConfig(str(image)),), rng=True, transport="mmio"
    )
    machine = Machine(config)
    result = machine.run()
    assert "Hello from the pyvmm demo guest!" in result.console_text, result.exit.describe()
    windows = [
        (device.name, device.regions()[0].label, device.regions()[0].base)
        for device in machine.devices.devices
        if "virtio" in device.name
    ]
    # The name (which keys the saved state) has no host detail; the window's label does.
    assert windows == [
        ("virtio-mmio 0 (virtio-blk)", f"virtio-mmio 0 (virtio-blk {image})", MMIO_HOLE_START),  # /dev/vda
        ("virtio-mmio 1 (virtio-rng)", "virtio-mmio 1 (virtio-rng)", MMIO_HOLE_START + 0x1000),
    ]


@pytest.mark.kvm
def test_a_missing_disk_image_is_one_error(tmp_path: Path) -> None:
    config = MachineConfig(
        kernel=str(GUESTS / "hello.elf"), disks=(DiskConfig(str(tmp_path / "absent.img")),), transport="mmio"
    )
    with pytest.raises(ImageError, match=r"absent\.img"):
        Machine(config).run()


@pytest.mark.kvm
def test_a_virtio_console_comes_last_and_takes_the_console_input(context: VirtioContext) -> None:
    inputs: list[ConsoleInput] = []
    output: list[bytes] = []
    wired = VirtioContext(
        context.memory, context.vm, context.io, context.resources, no_line, output.append,
        console_input=inputs.append,
    )  # fmt: skip
    config = MachineConfig(
        kernel=str(GUESTS / "hello.elf"), rng=True, console_device="virtio", transport="mmio"
    )
    placed = virtio_devices(config, wired)
    try:
        assert [device.name for device in placed] == [
            "virtio-mmio 0 (virtio-rng)",
            "virtio-mmio 1 (virtio-console)",
        ]
        transport = placed[1].model
        assert isinstance(transport, VirtioMmio) and isinstance(transport.device, ConsoleDevice)
        assert inputs == [transport.device]
    finally:
        for device in placed:
            device.close()


@pytest.mark.kvm
def test_a_machine_sends_input_to_its_virtio_console() -> None:
    config = MachineConfig(kernel=str(GUESTS / "hello.elf"), console_device="virtio", transport="mmio")
    machine = Machine(config)
    machine.send_input(b"typed early")  # before the devices exist: kept for the console
    result = machine.run()
    assert "Hello from the pyvmm demo guest!" in result.console_text, result.exit.describe()
    console = next(d.model for d in machine.devices.devices if d.name == "virtio-mmio 0 (virtio-console)")
    assert isinstance(console, VirtioMmio) and isinstance(console.device, ConsoleDevice)
    assert console.device.rx_bytes == len(b"typed early")  # it went to hvc0, not to COM1


@pytest.mark.kvm
def test_network_cards_come_after_the_disks_and_before_the_entropy_device(
    context: VirtioContext, tmp_path: Path, namespace: Namespace
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 16))
    namespace.add_tap("ptap0")
    config = MachineConfig(
        kernel=str(GUESTS / "hello.elf"), disks=(DiskConfig(str(image)),),
        nets=(NetConfig(tap="ptap0", mac="52:54:00:ab:cd:ef"),), rng=True, transport="mmio",
    )  # fmt: skip
    with namespace.inside():  # the TAP is opened while placing, here
        placed = virtio_devices(config, context)
    try:
        assert [device.name for device in placed] == [
            "virtio-mmio 0 (virtio-blk)",  # /dev/vda
            "virtio-mmio 1 (virtio-net)",  # eth0
            "virtio-mmio 2 (virtio-rng)",
        ]
        assert [device.regions()[0].label for device in placed] == [
            f"virtio-mmio 0 (virtio-blk {image})",
            "virtio-mmio 1 (virtio-net (ptap0))",
            "virtio-mmio 2 (virtio-rng)",
        ]
        transport = placed[1].model
        assert isinstance(transport, VirtioMmio) and isinstance(transport.device, NetDevice)
        assert transport.device.mac == bytes.fromhex("525400abcdef")
    finally:
        for device in placed:
            device.close()
    assert "ptap0" in namespace.links()  # the user's TAP stays


@pytest.mark.kvm
def test_a_missing_tap_is_one_error_and_closes_the_disks_opened_before(
    context: VirtioContext, tmp_path: Path, namespace: Namespace
) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 16))
    config = MachineConfig(
        kernel=str(GUESTS / "hello.elf"), disks=(DiskConfig(str(image)),),
        nets=(NetConfig(tap="nosuchtap0"),), transport="mmio",
    )  # fmt: skip
    with namespace.inside(), pytest.raises(TapError, match="'nosuchtap0' does not exist"):
        virtio_devices(config, context)
    models.block_devices(config.disks)[0].close()  # the image was unlocked again


class Broken(Quiet):
    """A device whose queue work raises something that is not a ring fault: a bug."""

    def notify(self, queue: int) -> None:
        raise RuntimeError("a device bug")


@pytest.mark.kvm
def test_a_device_exception_behind_a_doorbell_needs_a_reset_and_the_vm_is_not_told() -> None:
    """The device-fault rule through a real doorbell on the MMIO bus and the I/O
    thread: DEVICE_NEEDS_RESET for that device, nothing in the VM's error report."""
    from virtio.driver import Driver
    from virtio.handshake import start

    from pyvmm.virtio.mmio import Reg
    from pyvmm.virtio.spec import DeviceStatus, Feature

    errors: list[tuple[str, BaseException]] = []
    with Kvm() as kvm, kvm.create_vm() as vm:
        memory = GuestMemory([(0, RAM)])
        io = IoThread(lambda source, error: errors.append((source, error)))
        context = VirtioContext(memory, vm, io, ResourceAllocator(RAM), no_line, lambda data: None)
        (placed,) = place_on_mmio([Broken()], context, acpi=True)
        manager = DeviceManager(context.resources)
        manager.add(placed)
        io.start()
        try:
            transport = placed.model
            assert isinstance(transport, VirtioMmio)
            start(transport.core, int(Feature.VERSION_1), [Driver(memory, 16, desc=0x1000, data=0x10000)])
            base = placed.regions()[0].base
            manager.mmio.write(base + Reg.QUEUE_NOTIFY, 4, 0)  # the guest rings queue 0
            deadline = time.monotonic() + 5
            while not transport.core.status & DeviceStatus.DEVICE_NEEDS_RESET:
                assert time.monotonic() < deadline, "no DEVICE_NEEDS_RESET"
                time.sleep(0.01)
            assert io.faults == 1 and transport.core.faults == 1
        finally:
            manager.close()
            io.stop()
            memory.close()
    assert errors == []
