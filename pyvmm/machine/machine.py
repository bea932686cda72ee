"""`Machine`: one VM and its lifecycle (`lifecycle.py`: created → running ⇄ paused →
stopped, and the debugger's stop), built from a `MachineConfig` by `builder.py`.

`start()` builds what was not built and starts the I/O thread and the vCPU threads;
`pause()` / `resume()` park and unpark them in the one pause order (below); `stop()`
ends the VM from any thread (the first `GuestExit` recorded wins, every vCPU is kicked
out of KVM_RUN); `wait()` waits for the end, tears the VM down in the caller's thread
and returns the `RunResult`. `run()` is start and wait in one call.

The pause order (docs/architecture.md, "Lifecycle"), enforced in `pause()` alone:
the vCPUs (each parks after completing its pending port or MMIO access), then the I/O
thread (no doorbell or backend callback runs), then the devices' own threads (the
block workers finish the requests in flight, the RTC's interrupt timer stops), and
console input is held; the guest's clock is captured last. `resume()` goes back in
the reverse order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pyvmm import boot
from pyvmm.arch.x86.layout import MMIO_HOLE_END, MMIO_HOLE_START
from pyvmm.arch.x86.vcpu_state import pause_clock
from pyvmm.config import MachineConfig
from pyvmm.devices import CmosRtc, Serial16550
from pyvmm.devices.device import DeviceState
from pyvmm.devices.ged import Ged
from pyvmm.devices.vmgenid import VmGenId
from pyvmm.errors import ConfigError, LifecycleError, StateError
from pyvmm.io.thread import IoThread
from pyvmm.kvm import Vcpu, Vm
from pyvmm.kvm.uapi import kvm_clock_data
from pyvmm.machine import builder
from pyvmm.machine.console import MachineConsole
from pyvmm.machine.events import Listener, Listeners
from pyvmm.machine.lifecycle import MachineState, check_transition
from pyvmm.machine.snapshot import check_shape_of, restore_state, save_state
from pyvmm.machine.stats import ExitStats, IoStats, collect
from pyvmm.machine.vcpu import VcpuRunner
from pyvmm.memory import GuestMemory, split_around_hole
from pyvmm.outcome import ExitKind, GuestExit
from pyvmm.platform.device_manager import DeviceManager
from pyvmm.platform.pci import PciPlatform
from pyvmm.platform.resources import ResourceAllocator
from pyvmm.snapshot.file import ProgressCallback, SnapshotFile, SnapshotInfo, read_snapshot, write_snapshot

log = logging.getLogger(__name__)

_JOIN_SECONDS = 5.0
# How long pause() waits for each step (a vCPU to park, the I/O thread, a device's
# threads) before it gives up and puts the machine back as it was.
PAUSE_SECONDS = 5.0


# QMP's SHUTDOWN event says whether the guest asked and why (QEMU's ShutdownCause).
_SHUTDOWN_CAUSES: dict[ExitKind, tuple[bool, str]] = {
    ExitKind.POWEROFF: (True, "guest-shutdown"),
    ExitKind.DEBUG_EXIT: (True, "guest-shutdown"),
    ExitKind.REBOOT: (True, "guest-reset"),
    ExitKind.TRIPLE_FAULT: (True, "guest-reset"),
    ExitKind.ERROR: (False, "host-error"),
    ExitKind.STOPPED: (False, "host-signal"),
    ExitKind.QUIT: (False, "host-qmp-quit"),
}
T = TypeVar("T")


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


def _tell_paused(vcpu: Vcpu) -> None:
    pause_clock([vcpu])


class Machine:
    """One VM, built from a `MachineConfig`, with a lifecycle (module docstring). It
    runs once: a reboot is a new `Machine`."""

    def __init__(self, config: MachineConfig) -> None:
        config.validate()
        self.config = config
        self.devices = DeviceManager(ResourceAllocator(config.memory_bytes()))
        self.io = IoThread(self._device_failed, name="pyvmm-io")  # device work, off the vCPUs
        self.ports = self.devices.ports
        self.mmio = self.devices.mmio
        self.runners: list[VcpuRunner] = []
        self.serial: Serial16550 | None = None
        self.rtc: CmosRtc | None = None
        self.pci: PciPlatform | None = None
        self.memory: GuestMemory | None = None
        self.entry: boot.EntryPoint | None = None
        self._kvm_vm: builder.KvmVm | None = None
        self.console = MachineConsole(config.console)
        self._built = False
        self._torn_down = False
        self._state = MachineState.CREATED
        self._outcome: GuestExit | None = None
        self._result: RunResult | None = None
        self._stopping = False
        self._done = threading.Event()
        self._lock = threading.Lock()  # state, outcome, input; never held while waiting
        self._control = threading.RLock()  # one lifecycle change at a time (pause, resume, wait)
        self._listeners = Listeners()
        self._paused_clock: kvm_clock_data | None = None  # KVM_GET_CLOCK at pause, put back at resume
        self._started_at = 0.0
        self._ended_at = 0.0

    # --- state and events ---------------------------------------------------------------

    @property
    def vm(self) -> Vm | None:
        """The KVM VM, once built (its statistics, its in-kernel state)."""
        return self._kvm_vm.vm if self._kvm_vm is not None else None

    def press_power_button(self) -> None:
        """The ACPI power button (QMP's system_powerdown): the guest's OS decides what
        follows; a Linux guest powers off cleanly. `LifecycleError` before the machine
        is built."""
        ged = self.devices.model(Ged)
        if ged is None:
            raise LifecycleError("the machine has no power button until it is built")
        ged.press_power_button()

    @property
    def state(self) -> MachineState:
        return self._state

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event, data)` on every lifecycle event (`events.py`)."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def _emit(self, event: str, data: dict[str, object] | None = None) -> None:
        self._listeners.emit(event, data)

    def _enter(self, target: MachineState) -> None:
        """With `_lock`: the checked transition (`lifecycle.check_transition`)."""
        check_transition(self._state, target)
        self._state = target

    # --- stopping -----------------------------------------------------------------------

    def stop(self, outcome: GuestExit | None = None, *, cause: str | None = None) -> None:
        """End the VM (thread-safe, any state). The first outcome recorded is the one
        `wait()` returns. Listeners hear RESET for a reboot (the VMM may boot again),
        else SHUTDOWN, with QEMU's shutdown cause (`cause` overrides the outcome's)."""
        with self._lock:
            if self._outcome is None:
                self._outcome = outcome or GuestExit(ExitKind.STOPPED, "stopped by the host")
            self._stopping = True
            first = self._state is not MachineState.STOPPED
            self._state = MachineState.STOPPED
        self._done.set()
        for runner in self.runners:
            runner.kick()  # a parked vCPU sees the machine stopping too
        if first:
            assert self._outcome is not None
            guest, default_cause = _SHUTDOWN_CAUSES[self._outcome.kind]
            if cause is not None:
                guest = cause.startswith("guest-")
            event = "RESET" if self._outcome.kind is ExitKind.REBOOT else "SHUTDOWN"
            self._emit(event, {"guest": guest, "reason": cause or default_cause})

    def _device_failed(self, source: str, error: BaseException) -> None:
        """An I/O callback registered without a fault handler raised, or a fault
        handler did (docs/architecture.md "Device faults"): what failed is not one
        device but the VM's own machinery (an interrupt line's resampling, the loop).
        The VM stops with the report."""
        log.error("device I/O %s failed: %r", source, error)
        self.stop(GuestExit(ExitKind.ERROR, f"device I/O {source} failed: {error!r}"))

    def is_stopping(self) -> bool:
        return self._stopping

    # --- console (console.py) -------------------------------------------------------------

    def send_input(self, data: bytes) -> None:
        """Type `data` on the guest's interactive console (COM1, or hvc0 with
        `console_device="virtio"`).

        Input sent before the console exists, or while the machine is paused, waits
        (up to 64 KiB); input sent after the VM has ended is dropped, and so is what
        the console's host buffer (64 KiB) has no room for: a sender that must lose
        nothing asks `input_room()` first.
        """
        self.console.send(data)

    def input_room(self) -> int:
        """How many bytes `send_input` takes now without dropping any (QEMU's
        `can_read`): the console's free host buffer; before the console exists or while
        paused, what is left of as much; after the end, unbounded (it drops everything)."""
        return self.console.room()

    @property
    def console_output(self) -> bytes:
        """What the guest has printed on its serial console so far: the last
        `CONSOLE_TAIL_BYTES` of it (`MachineConfig.console` streams all of it)."""
        return self.console.printed()

    # --- building -----------------------------------------------------------------------

    def build(self, *, incoming: str | os.PathLike[str] | None = None) -> None:
        """Build the VM without starting it (`builder.py`): KVM, guest memory, the
        devices and the vCPUs; then the boot image, or, with `incoming`, the snapshot
        at that path (QEMU's `-incoming`: memory mapped from the file, the saved state
        put back; the configuration must match it, see `restore`). `start()` then starts
        what was built (it builds the VM itself when this was not called). Between the
        two nothing runs in the guest or on the I/O thread, so the devices can be saved
        and restored. A failure tears down what was built."""
        if self._built or self._started_at:
            raise ConfigError("a Machine is built once; create a new one to boot again")
        try:
            if incoming is None:
                self._build()
            else:
                with read_snapshot(incoming) as saved:
                    check_shape_of(saved, self.config)
                    self._build(saved)
        except BaseException:
            self._started_at = self._ended_at = time.monotonic()  # it will not run
            self.stop(GuestExit(ExitKind.ERROR, "the machine could not be built"))
            self._teardown()
            raise

    def _build(self, saved: SnapshotFile | None = None) -> None:
        """Build the VM; then boot it (load the kernel), or, with `saved`, take the
        snapshot's memory (mapped, not read) and put its state back."""
        self._built = True
        config = self.config
        kvm_vm = self._kvm_vm = builder.create_vm(config)
        layout = split_around_hole(config.memory_bytes(), MMIO_HOLE_START, MMIO_HOLE_END)
        # A snapshot's regions must be exactly this layout (never RAM in the MMIO hole).
        memory = GuestMemory(layout) if saved is None else saved.guest_memory(layout)
        self.memory = memory
        memory.register(kvm_vm.vm)
        platform = builder.attach_devices(
            config, self.devices, kvm_vm, memory, self.io, self.stop, self.console.write
        )
        self.pci = platform.pci
        self.serial = self.devices.model(Serial16550)
        self.rtc = self.devices.model(CmosRtc)
        self.console.attach(platform.console_input or self.serial)
        if saved is None:
            self.entry = builder.load_kernel(config, memory, self.devices, self.pci)
        self.runners = builder.create_vcpus(config, kvm_vm, memory, self.devices, self.stop, self.is_stopping)
        if saved is None:
            assert self.entry is not None
            builder.enter(self.runners[0], memory, self.entry)
        else:
            restore_state(saved, self.devices, kvm_vm.vm, [runner.vcpu for runner in self.runners])
            # Every restore is a new generation of the VM: clones of one snapshot must
            # not go on with the same random numbers (Linux reseeds on the change).
            generation = self.devices.model(VmGenId)
            if generation is not None:
                generation.set_generation_id(os.urandom(16))

    # --- snapshots ----------------------------------------------------------------------

    def snapshot(
        self, path: str | os.PathLike[str], progress: ProgressCallback | None = None
    ) -> SnapshotInfo:
        """Write the whole VM to `path` (`machine/snapshot.py`: devices, then the VM's
        and each vCPU's KVM state, then memory), atomically. A running machine is
        paused for it and resumed after; a paused one stays paused. `LifecycleError`
        unless running or paused; `StateError` when a device cannot be saved."""
        with self._control:
            with self._lock:
                state = self._state
            if state not in (MachineState.RUNNING, MachineState.PAUSED, MachineState.DEBUG):
                raise LifecycleError(f"the machine is {state.value}: only a started machine is saved")
            if state is MachineState.RUNNING:
                self.pause()
            try:
                assert self._kvm_vm is not None and self.memory is not None
                parts = save_state(self.config, self.devices, self._kvm_vm.vm, self.runners)
                return write_snapshot(path, parts, self.memory, progress)
            finally:
                if state is MachineState.RUNNING:
                    self.resume()

    @classmethod
    def restore(cls, path: str | os.PathLike[str], config: MachineConfig, *, paused: bool = False) -> Machine:
        """A machine built from `config` and filled from the snapshot at `path`, started
        (or, with `paused`, left paused): the guest goes on exactly where it was saved.
        `config` gives the disks and TAPs again and must match the snapshot's machine
        (RAM size, vCPUs, devices, each disk's size); the snapshot is untrusted input:
        anything that does not fit is one `StateError`, and nothing runs."""
        machine = cls(config)
        machine.build(incoming=path)
        machine.start(paused=paused)
        return machine

    # --- device state -------------------------------------------------------------------

    def save_devices(self) -> dict[str, DeviceState]:
        """Every placed device's state by device name (`DeviceManager.save`): plain,
        checked data; no vCPU state, no guest memory, no file (docs/architecture.md,
        "Saved device state").

        The machine is built and not started, or paused (the vCPUs and the I/O thread
        parked, so no device changes while it is read). `StateError` otherwise, or
        naming each device that cannot save its state."""
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
        if any(runner.thread.is_alive() and not runner.parked for runner in self.runners):
            raise StateError(f"the devices cannot be {done} while the vCPUs run")
        if self.io.running and not self.io.parked:
            raise StateError(f"the devices cannot be {done} while the I/O thread runs (pause it first)")

    # --- the lifecycle ------------------------------------------------------------------

    def start(self, *, paused: bool = False) -> None:
        """Build the VM if `build()` was not called, start the I/O thread and the vCPU
        threads, and return: the machine is running (or, with `paused`, paused before
        its first instruction, QEMU's `-S`). `LifecycleError` unless created."""
        with self._control:
            with self._lock:
                check_transition(self._state, MachineState.PAUSED if paused else MachineState.RUNNING)
            self._started_at = time.monotonic()
            self.console.start_output()
            if not self._built:
                try:
                    self._build()
                except BaseException:
                    self.stop(GuestExit(ExitKind.ERROR, "the machine could not be built"))
                    self._finish()
                    raise
            if paused:
                self.io.pause()  # the loop starts parked
            self.io.start()
            for runner in self.runners:
                runner.start(parked=paused)
            with self._lock:
                if self._state is MachineState.STOPPED:
                    return  # stopped while starting: wait() tears it down
                self._enter(MachineState.PAUSED if paused else MachineState.RUNNING)
            if paused:
                self._capture_clock()

    def pause(self, timeout: float = PAUSE_SECONDS) -> None:
        """Stop the guest where it is and quiesce every device (the module docstring's
        pause order); returns once nothing touches guest memory or a queue. A paused
        guest's clock does not advance. `LifecycleError` unless running, or when a step
        does not finish within `timeout` seconds (the machine then runs on)."""
        with self._control:
            self.stop_the_world(MachineState.PAUSED, timeout)
            self._emit("STOP")

    def resume(self) -> None:
        """Let a paused guest run on, in the reverse of the pause order."""
        with self._control:
            self.restart_the_world(MachineState.PAUSED)
            self._emit("RESUME")

    def stop_the_world(self, into: MachineState, timeout: float = PAUSE_SECONDS) -> None:
        """Running → `into` (paused, or the debugger's stop) in the pause order: the one
        place that parks a running machine (`pause` and the debugger use it)."""
        with self._control:
            with self._lock:
                if self._state is not MachineState.RUNNING:
                    raise LifecycleError(f"the machine is {self._state.value}: only a running machine pauses")
                check_transition(self._state, into)
            self.console.hold()  # first: no keystroke reaches a device being quiesced
            try:
                self._park_all(timeout)
            except BaseException:
                self.console.release()
                raise
            with self._lock:
                self._enter(into)

    def restart_the_world(self, source: MachineState, only: int | None = None) -> None:
        """`source` (paused, or the debugger's stop) → running, the reverse of the pause
        order; `only`: just that vCPU runs (a debugger's single step), the others stay
        parked until the world stops and restarts again."""
        with self._control:
            with self._lock:
                if self._state is not source:
                    verb = "resumes" if source is MachineState.PAUSED else "continues"
                    now = self._state.value
                    raise LifecycleError(f"the machine is {now}: only a {source.value} machine {verb}")
                self._enter(MachineState.RUNNING)
            self.console.release()
            self._restore_clock()
            self.devices.resume()
            self.io.resume()
            for index, runner in enumerate(self.runners):
                if only is None or index == only:
                    runner.unpark()

    def debug_hold(self) -> None:
        """Paused → the debugger's stop (a machine started paused for a debugger)."""
        with self._control, self._lock:
            self._enter(MachineState.DEBUG)

    @property
    def outcome(self) -> GuestExit | None:
        """How the machine ended, once it has (the first outcome recorded)."""
        return self._outcome

    def _park_all(self, timeout: float) -> None:
        """The pause order, up to the clock; on a step that does not finish in time,
        what was parked is let go again (`LifecycleError`)."""
        for runner in self.runners:
            runner.park()
        deadline = time.monotonic() + timeout
        try:
            for runner in self.runners:
                if not runner.wait_parked(max(deadline - time.monotonic(), 0.0)):
                    raise LifecycleError(f"vCPU {runner.vcpu.id} did not stop within {timeout} s")
            if not self.io.pause(timeout):
                raise LifecycleError(
                    f"the I/O thread did not stop within {timeout} s (a device callback is stuck)"
                )
            self.devices.pause(timeout)
        except BaseException:
            self.devices.resume()
            self.io.resume()
            for runner in self.runners:
                runner.unpark()
            raise
        self._capture_clock()

    def _capture_clock(self) -> None:
        """The guest's kvmclock as it stopped (QEMU does the same around a stop), so
        that a resumed guest sees no time pass while it was paused; and each vCPU's
        kvmclock told it was paused (KVM_KVMCLOCK_CTRL), so that the guest's watchdogs
        do not take the pause for a lockup."""
        kvm_vm = self._kvm_vm
        if kvm_vm is None:
            return
        if kvm_vm.has_irqchip:
            self._paused_clock = kvm_vm.vm.get_clock()
        for runner in self.runners:  # on its own thread: the vCPU is parked
            runner.call(_tell_paused)

    def _restore_clock(self) -> None:
        clock, self._paused_clock = self._paused_clock, None
        if clock is not None and self._kvm_vm is not None:
            self._kvm_vm.vm.set_clock(kvm_clock_data(clock=clock.clock))

    def on_vcpu(self, index: int, fn: Callable[[Vcpu], T], timeout: float = PAUSE_SECONDS) -> T:
        """Run `fn(vcpu)` on vCPU `index`'s own thread and return its result: how front
        ends read and write vCPU state. A paused machine's vCPU runs it at once; a
        running machine's parks for it alone and runs on (QEMU's `run_on_cpu`); on a
        machine not started it runs in the caller's thread."""
        if not 0 <= index < len(self.runners):
            raise LifecycleError(f"there is no vCPU {index}")
        runner = self.runners[index]
        with self._control:
            if self._state is not MachineState.RUNNING:
                return runner.call(fn, timeout)
            runner.park()
            try:
                if not runner.wait_parked(timeout):
                    raise LifecycleError(f"vCPU {index} did not stop within {timeout} s")
                return runner.call(fn, timeout)
            finally:
                runner.unpark()

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Wait for the VM to end (at most `timeout` seconds: None if it has not), tear
        it down in this thread, and return how it ended."""
        if not self._done.wait(timeout):
            return None
        return self._finish()

    def run(self, *, paused: bool = False) -> RunResult:
        """Start the VM (`paused`: before its first instruction, until `resume()`), run
        it until the guest ends (or `config.timeout`, counted from here, loading
        included), tear it down; how it ended."""
        if self._started_at:
            raise ConfigError("a Machine runs once; create a new one to boot again")
        self._started_at = time.monotonic()
        try:
            if not self._stopping:  # stop() before run(): nothing to build (or start)
                self.start(paused=paused)
                self._wait()
        except KeyboardInterrupt:
            self.stop(GuestExit(ExitKind.STOPPED, "interrupted"))
        finally:
            self.stop(self._outcome)
            result = self._finish()
        return result

    def _wait(self) -> None:
        """Wait for the guest to end; the timeout counts from `run()`, loading included."""
        timeout = self.config.timeout
        remaining = None if timeout is None else timeout - (time.monotonic() - self._started_at)
        if not self._done.wait(None if remaining is None else max(0.0, remaining)):
            self.stop(GuestExit(ExitKind.STOPPED, f"timed out after {timeout} s"))

    def _finish(self) -> RunResult:
        """Once ended: tear down (once) and make the result."""
        with self._control:
            if self._result is None:
                self._ended_at = time.monotonic()
                self._teardown()
                assert self._outcome is not None
                console, dropped = self.console.finish_output()
                self._result = RunResult(self._outcome, console, self.stats(), dropped)
            return self._result

    def stats(self) -> ExitStats:
        """Exit counters so far (per reason, per vCPU, per device range)."""
        end = self._ended_at or time.monotonic()
        seconds = end - self._started_at if self._started_at else 0.0
        io = IoStats(self.io.callbacks, self.io.busy_seconds, self.io.cpu_seconds, self.io.faults)
        return collect(seconds, [r.counters for r in self.runners], [self.ports, self.mmio], io)

    def _teardown(self) -> None:
        with self._lock:
            self._torn_down = True
        self.console.end()  # no more input: the UART's interrupt line goes away
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
        self.devices.resume()  # device threads a pause held go on to see the close
        self.devices.close()  # before the VM: device threads (the RTC's timer) must not outlive it
        for runner in self.runners:
            runner.vcpu.close()
        if self._kvm_vm is not None:
            self._kvm_vm.vm.close()
        if self.memory is not None:
            self.memory.close()
        if self._kvm_vm is not None:
            self._kvm_vm.kvm.close()
