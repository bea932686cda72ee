"""Building a VM, apart from filling it (Firecracker's `builder.rs`): the KVM VM with its
irqchip, guest memory, the platform's devices and the vCPUs are made the same way for a
boot and for a restore; only then does a boot load a kernel into the memory and put
vCPU 0 at its entry point (`load_kernel`), while a restore puts saved state back.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyvmm import boot
from pyvmm.arch.x86 import cpu
from pyvmm.arch.x86.acpi import build_acpi_tables
from pyvmm.arch.x86.host_probe import hypercalls_return, syscall_reaches_cpl0
from pyvmm.arch.x86.layout import KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS
from pyvmm.boot import BootImages
from pyvmm.bus import MmioBus
from pyvmm.config import MachineConfig
from pyvmm.errors import ConfigError
from pyvmm.io.thread import IoThread
from pyvmm.irq import GsiAllocator, KvmIrqLine, NoIrqLine, msi_vector
from pyvmm.kvm import Cap, Kvm, Vcpu, Vm
from pyvmm.machine.vcpu import InstructionEmulator, VcpuRunner
from pyvmm.memory import GuestMemory
from pyvmm.outcome import ConsoleInput, InterruptLine, StopRequest
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pc import ACPI_POWER, PC_PLATFORM, PlatformContext
from pyvmm.platform.pci import NoPci, PciPlatform
from pyvmm.platform.test_devices import build_test_devices
from pyvmm.platform.virtio import VirtioContext, virtio_devices

log = logging.getLogger(__name__)

# Vector instructions the emulator runs on after one KVM could not (Emulator.run_ahead):
# bounds how long a pending interrupt waits for the guest to be re-entered.
_EMULATOR_RUN_AHEAD = 64


def _disassemble(code: bytes, rip: int, bitness: int) -> str:
    from pyvmm.arch.x86.disasm import disassemble  # iced-x86 loads only for a report

    return disassemble(code, rip, bitness)


def _emulator(
    vcpu: Vcpu, memory: GuestMemory, mmio: MmioBus, read_msrs: Callable[[list[int]], dict[int, int]] | None
) -> InstructionEmulator:
    from pyvmm.arch.x86.emulator import Emulator  # loads at a vCPU's first emulation failure

    return Emulator(vcpu, memory, mmio=mmio, read_msrs=read_msrs, run_ahead=_EMULATOR_RUN_AHEAD)


@dataclass
class KvmVm:
    """The KVM side of a VM: the system handle, the VM and whether it has an in-kernel
    irqchip (with PIT2 where KVM has one)."""

    kvm: Kvm
    vm: Vm
    has_irqchip: bool

    def close(self) -> None:
        self.vm.close()
        self.kvm.close()


def create_vm(config: MachineConfig) -> KvmVm:
    """Open KVM and create the VM with what this host's KVM offers (each optional
    feature checked with KVM_CHECK_EXTENSION)."""
    kvm = Kvm(config.kvm_device)
    try:
        if config.cpus > kvm.max_vcpus():
            raise ConfigError(
                f"{config.cpus} vCPUs requested, but this host's KVM allows at most {kvm.max_vcpus()}"
            )
        vm = kvm.create_vm()
    except BaseException:
        kvm.close()
        raise
    built = KvmVm(kvm, vm, bool(kvm.check_extension(Cap.IRQCHIP)))
    try:
        if kvm.check_extension(Cap.SET_TSS_ADDR):
            vm.set_tss_addr(KVM_TSS_ADDRESS)
        if kvm.check_extension(Cap.SET_IDENTITY_MAP_ADDR):
            vm.set_identity_map_addr(KVM_IDENTITY_MAP_ADDRESS)
        if built.has_irqchip:
            vm.create_irqchip()
            if kvm.check_extension(Cap.PIT2):
                vm.create_pit2()
        elif config.cpus > 1:
            raise ConfigError("more than one vCPU needs an in-kernel irqchip, which this host's KVM lacks")
        if kvm.check_extension(Cap.EXIT_ON_EMULATION_FAILURE):
            vm.enable_cap(Cap.EXIT_ON_EMULATION_FAILURE, 1)
    except BaseException:
        built.close()
        raise
    return built


@dataclass
class Platform:
    """What `attach_devices` placed that the machine talks to directly."""

    pci: PciPlatform | None
    console_input: ConsoleInput | None  # the virtio console, if there is one


def attach_devices(
    config: MachineConfig,
    devices: DeviceManager,
    kvm_vm: KvmVm,
    memory: GuestMemory,
    io: IoThread,
    stop: StopRequest,
    console_output: Callable[[bytes], None],
) -> Platform:
    """The PC platform's devices (pyvmm.platform.pc), PCI or not, QEMU's test devices
    and the virtio devices the configuration asks for, on the buses."""
    vm, has_irqchip = kvm_vm.vm, kvm_vm.has_irqchip

    def line(gsi: int) -> InterruptLine:
        devices.resources.gsis.claim(gsi, "a platform device")  # not for virtio-mmio
        return KvmIrqLine(vm, gsi) if has_irqchip else NoIrqLine()

    context = PlatformContext(memory, config.cpus, stop, line, console_output)
    devices.add_all(row(context) for row in PC_PLATFORM)
    # PCI (pyvmm.platform.pci) unless virtio goes over MMIO, as on QEMU's PC.
    pci: PciPlatform | None = None
    if config.transport == "pci":
        # MSI-X vectors: a GSI route + irqfd each (KVM_SIGNAL_MSI where KVM has none)
        msi = functools.partial(msi_vector, vm, GsiAllocator(vm)) if has_irqchip else None
        pci = PciPlatform(devices, memory.ram_ranges(), line, msi)
        devices.add(pci)
    else:
        devices.add(NoPci())  # no host bridge; pci=off tells Linux
    devices.add_all(build_test_devices(config.test_devices, pci, line))
    console_input: list[ConsoleInput] = []  # a virtio console, if there is one
    virtio = VirtioContext(
        memory, vm, io, devices.resources, line, console_output, pci, console_input=console_input.append,
    )  # fmt: skip
    devices.add_all(virtio_devices(config, virtio))  # pyvmm.platform.virtio
    return Platform(pci, console_input[0] if console_input else None)


def create_vcpus(
    config: MachineConfig,
    kvm_vm: KvmVm,
    memory: GuestMemory,
    devices: DeviceManager,
    stop: StopRequest,
    is_stopping: Callable[[], bool],
) -> list[VcpuRunner]:
    """Every vCPU, configured (CPUID, MSRs) as for a power-on, each with its runner."""
    kvm, vm = kvm_vm.kvm, kvm_vm.vm
    supported_cpuid = kvm.supported_cpuid()
    supported_msrs = set(kvm.msr_index_list())
    repair_syscalls = not syscall_reaches_cpl0()
    if repair_syscalls:
        log.info("this KVM leaves SYSCALL at CPL 3: pyvmm repairs guest syscalls (lost_syscall)")
    hypercalls = hypercalls_return()
    if not hypercalls:
        log.info("this KVM does not return from hypercalls: KVM PV features that use them are hidden")
    runners = []
    for vcpu_id in range(config.cpus):
        vcpu = vm.create_vcpu(vcpu_id)
        cpu.configure_vcpu(vcpu, supported_cpuid, supported_msrs, config.cpus, hypercalls=hypercalls)
        runners.append(
            VcpuRunner(
                vcpu, devices.ports, devices.mmio, stop, is_stopping,
                has_irqchip=kvm_vm.has_irqchip, disassemble=_disassemble,
                make_emulator=functools.partial(
                    _emulator, vcpu, memory, devices.mmio, vcpu.get_msrs if repair_syscalls else None
                ),
            )
        )  # fmt: skip
    return runners


def load_kernel(
    config: MachineConfig, memory: GuestMemory, devices: DeviceManager, pci: PciPlatform | None
) -> boot.EntryPoint:
    """Boot: the ACPI tables, then the kernel (and initrd, command line) into guest
    memory; where vCPU 0 starts."""
    images = BootImages(
        Path(config.kernel),
        Path(config.initrd) if config.initrd is not None else None,
        devices.kernel_cmdline(config.cmdline),  # + what devices announce there
        kernel_decompress=config.kernel_decompress,
        kernel_format=config.kernel_format,
        rsdp_address=build_acpi_tables(
            config.cpus,
            power=ACPI_POWER,
            devices=devices.aml(),
            tables=pci.acpi_tables() if pci else (),
        ).write(memory),
        reserved=pci.reserved() if pci else (),
    )
    entry = boot.load(memory, images)
    log.info("booting %s: %s", images.kernel, entry.description or entry.mode.value)
    return entry


def enter(runner: VcpuRunner, memory: GuestMemory, entry: boot.EntryPoint) -> None:
    """Put the boot vCPU at the kernel's entry point."""
    cpu.enter(runner.vcpu, memory, entry)
