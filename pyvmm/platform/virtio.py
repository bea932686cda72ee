"""The machine's virtio devices, for both transports: built from the `MachineConfig`
through `pyvmm.virtio.models`, then placed on virtio-mmio (here) or on PCI (the
virtio-pci side's `place_on_pci`).

virtio-mmio placement (virtio 1.2 §4.2), one device per window:

- a 0x200-byte window (registers + 256 bytes of configuration space), 4 KiB aligned,
  from the resource allocator's 32-bit MMIO window;
- a GSI of its own from the resource allocator (`ResourceAllocator.gsis`, where the
  PC's devices hold their ISA IRQs and PCI its INTx GSIs): first the ISA IRQs the PC
  leaves free (5, 6, 7, 10, 11: the 8259 PIC reaches them too, so they work for a
  guest with ACPI off), then IOAPIC pins 16-23 (PCI INTx's range, free here: with
  virtio on MMIO the machine has no PCI), which only an ACPI guest learns about. So
  a machine takes up to 13 virtio-mmio devices (`--disk`, `--net`, `--rng`, the
  console together), 5 with `acpi=off`; one more is a `ResourceError` saying so;
- one announcement per boot. Linux probes every announcement it is given and the
  second probe of one window fails with EBUSY ("can't request region"), so pyvmm
  gives exactly one, as QEMU's microvm does (it adds `virtio_mmio.device=` only when
  ACPI is off; Firecracker gives both on x86 and leaves the failed probe in dmesg):
  the DSDT (`LNRO0005`, Memory32Fixed + Interrupt) when the guest reads ACPI, the
  kernel command line (`virtio_mmio.device=512@0xADDR:GSI`, Linux's
  CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) when the user's command line says
  `acpi=off`. Only Linux reads either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pyvmm.arch.x86.acpi.aml import Aml, Device, Name
from pyvmm.arch.x86.acpi.resources import Interrupt, Memory32Fixed, ResourceTemplate
from pyvmm.boot.entry import encode_text
from pyvmm.config import MachineConfig
from pyvmm.devices.device import PlacedDevice, mmio
from pyvmm.errors import ConfigError
from pyvmm.io.thread import IoThread
from pyvmm.irq import PCI_INTX_GSIS
from pyvmm.kvm import Vm
from pyvmm.memory import GuestMemory
from pyvmm.outcome import ConsoleInput, InterruptLine
from pyvmm.platform.pci import PciPlatform
from pyvmm.platform.resources import ResourceAllocator, ResourceError
from pyvmm.virtio import models
from pyvmm.virtio.console import ConsoleDevice
from pyvmm.virtio.device import VirtioDevice
from pyvmm.virtio.mmio import WINDOW_SIZE, MmioNotifiers, VirtioMmio

log = logging.getLogger(__name__)

WINDOW_ALIGN = 0x1000
ISA_GSIS = (5, 6, 7, 10, 11)  # free ISA IRQs: COM1 4, RTC 8, SCI 9, i8042 1 and 12, PIT 0/2
IOAPIC_GSIS = tuple(PCI_INTX_GSIS)  # 16-23: PCI INTx GSIs, unused without PCI
VIRTIO_MMIO_HID = "LNRO0005"  # Linux's ACPI ID for virtio-mmio (drivers/virtio/virtio_mmio.c)


@dataclass(frozen=True)
class VirtioContext:
    """What placing virtio devices needs from the machine."""

    memory: GuestMemory
    vm: Vm
    io: IoThread  # queue notifications and the TAPs' receive paths are served there
    resources: ResourceAllocator
    line: Callable[[int], InterruptLine]  # a GSI's interrupt line
    console: Callable[[bytes], None]  # the machine's console stream
    pci: PciPlatform | None = None  # where virtio-pci functions go (transport "pci")
    # Told where the guest's console input goes when its console is virtio's (hvc0).
    console_input: Callable[[ConsoleInput], None] | None = None


def virtio_devices(config: MachineConfig, context: VirtioContext) -> list[PlacedDevice]:
    """Every virtio device `config` asks for, placed on `config.transport`."""
    devices = build_devices(config, context)
    if not devices:
        return []
    if config.transport == "mmio":
        return place_on_mmio(devices, context, acpi=not acpi_disabled(config.cmdline))
    try:
        return place_on_pci(devices, context)
    except BaseException:
        for device in devices:
            _close_quietly(device)
        raise


def build_devices(config: MachineConfig, context: VirtioContext) -> list[VirtioDevice]:
    """The `VirtioDevice`s of `config`, in the order the guest should find them
    (disks first, so the first --disk is /dev/vda, as on Firecracker; then the
    network cards, eth0 first). A virtio console writes to the machine's console
    stream and takes its input."""
    devices: list[VirtioDevice] = []
    try:
        if config.disks:
            devices.extend(models.block_devices(config.disks))
        if config.nets:  # each TAP opened now: a bad one is a TapError before the guest runs
            devices.extend(models.net_devices(config.nets, context.io))
        if config.rng:
            devices.append(models.rng_device())
        if config.console_device == "virtio":
            console = models.console_device(context.console)
            devices.append(console)
            assert isinstance(console, ConsoleDevice)
            if context.console_input is not None:
                context.console_input(console)
    except BaseException:
        for device in devices:
            _close_quietly(device)
        raise
    return devices


def place_on_pci(devices: Sequence[VirtioDevice], context: VirtioContext) -> list[PlacedDevice]:
    """virtio-pci (§4.1): one `VirtioPciFunction` per device on the machine's PCI bus."""
    if context.pci is None:
        raise ConfigError("virtio over PCI needs the PCI bus, which this machine does not have")
    from pyvmm.platform.virtio_pci import place_on_pci as place

    return place(devices, context.memory, context.vm, context.io, context.pci)


# --- virtio-mmio ---------------------------------------------------------------------------


def acpi_disabled(cmdline: str | bytes) -> bool:
    """Does this kernel command line turn ACPI off? Linux takes the last `acpi=` word
    before `--` (what follows goes to init)."""
    value = None
    for word in encode_text(cmdline, "kernel command line").split():
        if word == b"--":
            break
        if word.startswith(b"acpi="):
            value = word[len(b"acpi=") :]
    return value == b"off"


def mmio_gsis(acpi: bool) -> tuple[int, ...]:
    """The GSIs virtio-mmio devices may take: IOAPIC-only pins need ACPI to be found."""
    return ISA_GSIS + IOAPIC_GSIS if acpi else ISA_GSIS


def place_on_mmio(
    devices: Sequence[VirtioDevice], context: VirtioContext, *, acpi: bool
) -> list[PlacedDevice]:
    """Each device on its own virtio-mmio window and GSI, announced in the DSDT
    (`acpi`) or on the kernel command line (see the module docstring). On failure
    every device is closed, placed or not."""
    candidates = mmio_gsis(acpi)
    placed: list[PlacedDevice] = []
    with _closing_on_error(placed, devices):
        free = context.resources.gsis.free(candidates)
        if len(devices) > len(free):
            without = "" if acpi else " with acpi=off"
            raise ResourceError(
                f"{len(devices)} virtio-mmio devices, but only {len(free)} free GSIs{without}"
                f" ({', '.join(map(str, free))}); --transport pci takes more"
            )
        for index, device in enumerate(devices):
            placed.append(_place_one(index, device, candidates, context, acpi))
    return placed


def _place_one(
    index: int, device: VirtioDevice, candidates: Sequence[int], context: VirtioContext, acpi: bool
) -> PlacedDevice:
    label = f"virtio-mmio {index} ({device.name})"  # for people: the stats, the logs
    name = f"virtio-mmio {index} ({device.kind})"  # keys the saved state: no host detail
    gsi = context.resources.gsis.allocate(candidates, label)
    base = context.resources.mmio32.allocate(WINDOW_SIZE, WINDOW_ALIGN)
    transport = VirtioMmio(device, context.memory, context.line(gsi))
    notifiers = MmioNotifiers(context.vm, context.io, transport, base)
    log.info(
        "%s at %#x, GSI %d, announced %s", label, base, gsi, "in the DSDT" if acpi else "on the command line"
    )

    def close() -> None:
        notifiers.close()  # no notification reaches the device past this point
        device.close()

    return PlacedDevice(
        name,
        transport,
        (mmio(base, WINDOW_SIZE, transport, label),),
        (virtio_mmio_aml(index, base, gsi),) if acpi else (),
        on_close=close,
        kernel_parameters=() if acpi else (mmio_kernel_parameter(base, gsi),),
    )


def mmio_kernel_parameter(base: int, gsi: int) -> str:
    """Linux's `virtio_mmio.device=<size>@<base>:<irq>` (kernel-parameters.rst)."""
    return f"virtio_mmio.device={WINDOW_SIZE}@{base:#x}:{gsi}"


def virtio_mmio_aml(index: int, base: int, gsi: int) -> Aml:
    """The DSDT device of one window: LNRO0005 with its memory and its interrupt
    (edge-triggered, active high, as an ISA IRQ; the line rises with each event)."""
    return Device(
        f"VR{index:02X}",
        [
            Name("_HID", VIRTIO_MMIO_HID),
            Name("_UID", index),
            Name(
                "_CRS",
                ResourceTemplate(
                    [Memory32Fixed(base, WINDOW_SIZE), Interrupt([gsi], edge=True, active_low=False)]
                ),
            ),
        ],
    )


@contextmanager
def _closing_on_error(placed: list[PlacedDevice], devices: Sequence[VirtioDevice]) -> Iterator[None]:
    """On an error: close the placed devices (eventfds and device) and the others."""
    try:
        yield
    except BaseException:
        for device in reversed(placed):
            try:
                device.close()
            except Exception:
                log.exception("closing %s failed", device.name)
        for unplaced in devices[len(placed) :]:
            _close_quietly(unplaced)
        raise


def _close_quietly(device: VirtioDevice) -> None:
    try:
        device.close()
    except Exception:
        log.exception("closing %s failed", device.name)
