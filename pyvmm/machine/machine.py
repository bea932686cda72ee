"""`Machine`: builds a VM from a `MachineConfig` (KVM, memory, platform devices, the
boot image, vCPUs), runs it until the guest ends, and tears everything down.

Threads: the caller's thread builds the VM and waits; one thread per vCPU runs its
KVM_RUN loop; an optional console thread feeds host input to the UART. Anything that
ends the VM (a device, a vCPU exit, a timeout, Ctrl-C, `Machine.stop`) calls `stop`
with a `GuestExit`: the first one wins, every vCPU is kicked out of KVM_RUN, and
`run()` returns.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyvmm import boot
from pyvmm.arch.x86 import cpu
from pyvmm.arch.x86.acpi import build_acpi_tables
from pyvmm.arch.x86.host_probe import hypercalls_return, syscall_reaches_cpl0
from pyvmm.arch.x86.layout import (
    KVM_IDENTITY_MAP_ADDRESS,
    KVM_TSS_ADDRESS,
    MMIO_HOLE_END,
    MMIO_HOLE_START,
)
from pyvmm.boot import BootImages
from pyvmm.bus import MmioBus
from pyvmm.config import MachineConfig
from pyvmm.devices import CmosRtc, Serial16550
from pyvmm.devices.device import DeviceState
from pyvmm.errors import ConfigError, StateError
from pyvmm.io.thread import IoThread
from pyvmm.irq import GsiAllocator, KvmIrqLine, NoIrqLine, msi_vector
from pyvmm.kvm import Cap, Kvm, Vcpu, Vm
from pyvmm.machine.console_stream import ConsoleStream
from pyvmm.machine.console_tail import CONSOLE_TAIL_BYTES, ConsoleTail
from pyvmm.machine.stats import ExitStats, IoStats, collect
from pyvmm.machine.vcpu import InstructionEmulator, VcpuRunner
from pyvmm.memory import GuestMemory, split_around_hole
from pyvmm.outcome import ConsoleInput, ExitKind, GuestExit, InterruptLine
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pc import ACPI_POWER, PC_PLATFORM, PlatformContext
from pyvmm.platform.pci import NoPci, PciPlatform
from pyvmm.platform.resources import ResourceAllocator
from pyvmm.platform.test_devices import build_test_devices
from pyvmm.platform.virtio import VirtioContext, virtio_devices

log = logging.getLogger(__name__)

_JOIN_SECONDS = 5.0
# Input typed before the console exists waits, up to what a console's host buffer holds.
PENDING_INPUT_BYTES = 64 * 1024
INPUT_ROOM_AFTER_END = 1 << 20
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


def _output_stream(
    console: Callable[[bytes], object] | None,
) -> tuple[ConsoleStream | None, Callable[[bytes], object] | None]:
    """Where the guest's console output goes: the caller's sink behind a
    `ConsoleStream` of the machine's own, so that a sink that blocks (a pipe nobody
    reads) never holds a vCPU or the I/O thread; a stream's own `write` (the CLI's,
    shared across reboots) already never blocks and is used as it is."""
    if console is None:
        return None, None
    if isinstance(getattr(console, "__self__", None), ConsoleStream):
        return None, console
    stream = ConsoleStream(console, name="pyvmm-console")
    return stream, stream.write


@dataclass(frozen=True)
class RunResult:
    """How a run ended: the outcome, the console output and the exit statistics."""

    exit: GuestExit
    console: bytes  # the last `CONSOLE_TAIL_BYTES` (1 MiB) the guest printed on COM1
    stats: ExitStats
    console_dropped: int = 0  # bytes printed before that tail (streamed, not kept)

    @property
    def status(self) -> int:
        """The exit status `pyvmm run` uses for this outcome."""
        return self.exit.status

    @property
    def console_text(self) -> str:
        return self.console.decode("utf-8", "replace")


class Machine:
    """One VM, built and run from a `MachineConfig`. Runs once."""

    def __init__(self, config: MachineConfig) -> None:
        config.validate()
        self.config = config
        self.devices = DeviceManager(ResourceAllocator(config.memory_bytes()))
        self.io = IoThread(self._device_failed, name="pyvmm-io")  # device work, off the vCPUs
        self.ports = self.devices.ports
        self.mmio = self.devices.mmio
        self.runners: list[VcpuRunner] = []
        self.serial: Serial16550 | None = None
        self._input: ConsoleInput | None = None  # the interactive console's input
        self.rtc: CmosRtc | None = None
        self.memory: GuestMemory | None = None
        self.entry: boot.EntryPoint | None = None
        self._kvm: Kvm | None = None
        self._vm: Vm | None = None
        self._console = ConsoleTail(CONSOLE_TAIL_BYTES)
        # Made when run() starts (a machine that never runs has no writer thread).
        self._stream: ConsoleStream | None = None
        self._output: Callable[[bytes], object] | None = None
        self._pending_input = bytearray()
        self._built = False
        self._torn_down = False
        self._outcome: GuestExit | None = None
        self._stopping = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._started_at = 0.0
        self._ended_at = 0.0

    # --- stopping -----------------------------------------------------------------------

    def stop(self, outcome: GuestExit | None = None) -> None:
        """End the VM (thread-safe). The first outcome recorded is the one `run()` returns."""
        with self._lock:
            if self._outcome is None:
                self._outcome = outcome or GuestExit(ExitKind.STOPPED, "stopped by the host")
            self._stopping = True
        self._done.set()
        for runner in self.runners:
            runner.kick()

    def _device_failed(self, source: str, error: BaseException) -> None:
        """An I/O callback registered without a fault handler raised, or a fault
        handler did (docs/architecture.md "Device faults"): what failed is not one
        device but the VM's own machinery (an interrupt line's resampling, the loop).
        The VM stops with the report."""
        log.error("device I/O %s failed: %r", source, error)
        self.stop(GuestExit(ExitKind.ERROR, f"device I/O {source} failed: {error!r}"))

    def is_stopping(self) -> bool:
        return self._stopping

    # --- console ------------------------------------------------------------------------

    def _console_output(self, data: bytes) -> None:
        """From a vCPU thread (COM1) or the I/O thread (virtio-console), with the
        device's lock held: never waits for the caller's sink (`_output_stream`)."""
        self._console.append(data)
        if self._output is not None:
            self._output(data)

    def send_input(self, data: bytes) -> None:
        """Type `data` on the guest's interactive console (COM1, or hvc0 with
        `console_device="virtio"`).

        Input sent before `run()` has built the UART waits for it; input sent after the
        VM has ended is dropped, and so is what the console's host buffer (64 KiB) has
        no room for: a sender that must lose nothing asks `input_room()` first.
        """
        with self._lock:
            if self._torn_down:
                return
            if self._input is None:
                self._pending_input += data[: max(PENDING_INPUT_BYTES - len(self._pending_input), 0)]
                return
            self._input.feed(data)

    def input_room(self) -> int:
        """How many bytes `send_input` takes now without dropping any (QEMU's
        `can_read`): the console's free host buffer; before the console exists, what
        is left of as much; after the end, unbounded (it drops everything anyway)."""
        with self._lock:
            if self._torn_down:
                return INPUT_ROOM_AFTER_END
            if self._input is None:
                return max(PENDING_INPUT_BYTES - len(self._pending_input), 0)
            return self._input.input_room()

    @property
    def console_output(self) -> bytes:
        """What the guest has printed on its serial console so far: the last
        `CONSOLE_TAIL_BYTES` of it (`MachineConfig.console` streams all of it)."""
        return self._console.bytes()

    # --- building -----------------------------------------------------------------------

    def build(self) -> None:
        """Build the VM without starting it: KVM, guest memory, the devices, the boot
        image and the vCPUs. `run()` then starts what was built (it builds the VM itself
        when this was not called; after `stop()` it only tears it down). Between the
        two nothing runs in the guest or on the I/O thread, so the devices can be saved
        and restored: a VMM restoring a snapshot builds the machine from the same
        configuration, then puts the state back. A failure tears down what was built."""
        if self._built or self._started_at:
            raise ConfigError("a Machine is built once; create a new one to boot again")
        try:
            self._build()
        except BaseException:
            self._started_at = self._ended_at = time.monotonic()  # it will not run
            self.stop(GuestExit(ExitKind.ERROR, "the machine could not be built"))
            self._teardown()
            raise

    def _build(self) -> None:
        self._built = True
        config = self.config
        kvm = self._kvm = Kvm(config.kvm_device)
        if config.cpus > kvm.max_vcpus():
            raise ConfigError(
                f"{config.cpus} vCPUs requested, but this host's KVM allows at most {kvm.max_vcpus()}"
            )
        vm = self._vm = kvm.create_vm()
        if kvm.check_extension(Cap.SET_TSS_ADDR):
            vm.set_tss_addr(KVM_TSS_ADDRESS)
        if kvm.check_extension(Cap.SET_IDENTITY_MAP_ADDR):
            vm.set_identity_map_addr(KVM_IDENTITY_MAP_ADDRESS)
        has_irqchip = bool(kvm.check_extension(Cap.IRQCHIP))
        if has_irqchip:
            vm.create_irqchip()
            if kvm.check_extension(Cap.PIT2):
                vm.create_pit2()
        elif config.cpus > 1:
            raise ConfigError("more than one vCPU needs an in-kernel irqchip, which this host's KVM lacks")
        if kvm.check_extension(Cap.EXIT_ON_EMULATION_FAILURE):
            vm.enable_cap(Cap.EXIT_ON_EMULATION_FAILURE, 1)

        memory = self.memory = GuestMemory(
            split_around_hole(config.memory_bytes(), MMIO_HOLE_START, MMIO_HOLE_END)
        )
        memory.register(vm)
        self._attach_devices(vm, memory, has_irqchip)
        images = BootImages(
            Path(config.kernel),
            Path(config.initrd) if config.initrd is not None else None,
            self.devices.kernel_cmdline(config.cmdline),  # + what devices announce there
            kernel_decompress=config.kernel_decompress,
            kernel_format=config.kernel_format,
            rsdp_address=build_acpi_tables(
                config.cpus,
                power=ACPI_POWER,
                devices=self.devices.aml(),
                tables=self.pci.acpi_tables() if self.pci else (),
            ).write(memory),
            reserved=self.pci.reserved() if self.pci else (),
        )
        self.entry = boot.load(memory, images)
        log.info("booting %s: %s", images.kernel, self.entry.description or self.entry.mode.value)

        supported_cpuid = kvm.supported_cpuid()
        supported_msrs = set(kvm.msr_index_list())
        repair_syscalls = not syscall_reaches_cpl0()
        if repair_syscalls:
            log.info("this KVM leaves SYSCALL at CPL 3: pyvmm repairs guest syscalls (lost_syscall)")
        hypercalls = hypercalls_return()
        if not hypercalls:
            log.info("this KVM does not return from hypercalls: KVM PV features that use them are hidden")
        for vcpu_id in range(config.cpus):
            vcpu = vm.create_vcpu(vcpu_id)
            cpu.configure_vcpu(vcpu, supported_cpuid, supported_msrs, config.cpus, hypercalls=hypercalls)
            if vcpu_id == 0:
                cpu.enter(vcpu, memory, self.entry)
            self.runners.append(
                VcpuRunner(
                    vcpu, self.ports, self.mmio, self.stop, self.is_stopping,
                    has_irqchip=has_irqchip, disassemble=_disassemble,
                    make_emulator=functools.partial(
                        _emulator, vcpu, memory, self.mmio, vcpu.get_msrs if repair_syscalls else None
                    ),
                )
            )  # fmt: skip

    def _attach_devices(self, vm: Vm, memory: GuestMemory, has_irqchip: bool) -> None:
        """The PC platform's devices (pyvmm.platform.pc), on the buses."""

        def line(gsi: int) -> InterruptLine:
            self.devices.resources.gsis.claim(gsi, "a platform device")  # not for virtio-mmio
            return KvmIrqLine(vm, gsi) if has_irqchip else NoIrqLine()

        context = PlatformContext(memory, self.config.cpus, self.stop, line, self._console_output)
        self.devices.add_all(row(context) for row in PC_PLATFORM)
        # PCI (pyvmm.platform.pci) unless virtio goes over MMIO, as on QEMU's PC.
        self.pci: PciPlatform | None = None
        if self.config.transport == "pci":
            # MSI-X vectors: a GSI route + irqfd each (KVM_SIGNAL_MSI where KVM has none)
            msi = functools.partial(msi_vector, vm, GsiAllocator(vm)) if has_irqchip else None
            self.pci = PciPlatform(self.devices, memory.ram_ranges(), line, msi)
            self.devices.add(self.pci)
        else:
            self.devices.add(NoPci())  # no host bridge; pci=off tells Linux
        self.devices.add_all(build_test_devices(self.config.test_devices, self.pci, line))
        console_input: list[ConsoleInput] = []  # a virtio console, if there is one
        virtio = VirtioContext(
            memory, vm, self.io, self.devices.resources, line, self._console_output, self.pci,
            console_input=console_input.append,
        )  # fmt: skip
        self.devices.add_all(virtio_devices(self.config, virtio))  # pyvmm.platform.virtio
        self.serial = self.devices.model(Serial16550)
        self.rtc = self.devices.model(CmosRtc)
        with self._lock:
            self._input = console_input[0] if console_input else self.serial
            if self._pending_input and self._input is not None:
                self._input.feed(bytes(self._pending_input))
                self._pending_input.clear()

    # --- device state -------------------------------------------------------------------

    def save_devices(self) -> dict[str, DeviceState]:
        """Every placed device's state by device name (`DeviceManager.save`): plain,
        checked data; no vCPU state, no guest memory, no file (docs/architecture.md,
        "Saved device state").

        The caller has the vCPUs and the I/O thread paused or not started, so no
        device changes while it is read: today that is between `build()` and `run()`
        (`Machine` cannot pause its vCPUs yet; `IoThread.pause` parks the I/O thread).
        `StateError` otherwise, or naming each device that cannot save its state."""
        self._check_devices_still("saved")
        return self.devices.save()

    def restore_devices(self, states: object) -> None:
        """Put back the states `save_devices()` returned (here or on a machine built
        from the same configuration); untrusted input, checked by every device. All
        or nothing: when a device refuses its state (`StateError`), the devices
        restored before it get back the state they had. The same conditions as
        `save_devices()`."""
        self._check_devices_still("restored")
        self.devices.restore(states)

    def _check_devices_still(self, done: str) -> None:
        """`StateError` unless the devices exist, are open, and nothing runs them."""
        if not self._built:
            raise StateError(f"the devices cannot be {done}: the machine is not built yet")
        if self._torn_down:
            raise StateError(f"the devices cannot be {done}: the machine has ended and closed them")
        if any(runner.thread.is_alive() for runner in self.runners):
            raise StateError(f"the devices cannot be {done} while the vCPUs run")
        if self.io.running and not self.io.parked:
            raise StateError(f"the devices cannot be {done} while the I/O thread runs (pause it first)")

    # --- running ------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Build the VM, run it until the guest ends, tear it down; how it ended."""
        if self._started_at:
            raise ConfigError("a Machine runs once; create a new one to boot again")
        self._started_at = time.monotonic()
        self._stream, self._output = _output_stream(self.config.console)
        try:
            if not self._stopping:  # stop() before run(): nothing to build (or start)
                if not self._built:
                    self._build()
                self.io.start()
                for runner in self.runners:
                    runner.start()
                self._wait()
        except KeyboardInterrupt:
            self.stop(GuestExit(ExitKind.STOPPED, "interrupted"))
        finally:
            self.stop(self._outcome)
            self._ended_at = time.monotonic()
            self._teardown()
            if self._stream is not None:
                self._stream.close()  # flushes while the sink takes it, at most FLUSH_SECONDS
        assert self._outcome is not None
        console, dropped = self._console.snapshot()
        return RunResult(self._outcome, console, self.stats(), dropped)

    def _wait(self) -> None:
        """Wait for the guest to end; the timeout counts from `run()`, loading included."""
        timeout = self.config.timeout
        remaining = None if timeout is None else timeout - (time.monotonic() - self._started_at)
        if not self._done.wait(None if remaining is None else max(0.0, remaining)):
            self.stop(GuestExit(ExitKind.STOPPED, f"timed out after {timeout} s"))

    def stats(self) -> ExitStats:
        """Exit counters so far (per reason, per vCPU, per device range)."""
        end = self._ended_at or time.monotonic()
        seconds = end - self._started_at if self._started_at else 0.0
        io = IoStats(self.io.callbacks, self.io.busy_seconds, self.io.cpu_seconds, self.io.faults)
        return collect(seconds, [r.counters for r in self.runners], [self.ports, self.mmio], io)

    def _teardown(self) -> None:
        with self._lock:
            self._torn_down = True  # no more input: the UART's interrupt line goes away
        deadline = time.monotonic() + _JOIN_SECONDS
        for runner in self.runners:
            while runner.thread.is_alive() and time.monotonic() < deadline:
                runner.kick()
                runner.join(0.05)
            if runner.thread.is_alive():
                log.error("vCPU %d did not stop; leaving its resources to the process exit", runner.vcpu.id)
                return
        if not self.io.stop():  # no device callback runs past this point, or one is stuck
            log.error("the I/O thread did not stop; leaving the devices and guest memory to the process exit")
            return
        self.devices.close()  # before the VM: device threads (the RTC's timer) must not outlive it
        for runner in self.runners:
            runner.vcpu.close()
        if self._vm is not None:
            self._vm.close()
        if self.memory is not None:
            self.memory.close()
        if self._kvm is not None:
            self._kvm.close()
