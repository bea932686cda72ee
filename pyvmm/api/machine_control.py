"""`MachineControl`: the `MachineController` the QMP server drives, over whichever
`Machine` runs now. A guest that reboots with `--on-reboot restart` gets a new
`Machine`; the control front ends stay (docs/architecture.md, "Lifecycle"): the CLI
calls `attach` with each new machine, and listeners follow it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from pyvmm.api.controller import (
    BlockDeviceInfo,
    EventListener,
    KvmStatsSet,
    Progress,
    StatsTarget,
    VcpuInfo,
)
from pyvmm.arch.x86.register_dump import format_registers
from pyvmm.kvm import KvmError, Vcpu
from pyvmm.kvm.stats import Stats, open_stats
from pyvmm.kvm.x86 import kvm_regs, kvm_sregs
from pyvmm.machine import Machine
from pyvmm.machine.events import Listeners
from pyvmm.machine.lifecycle import MachineState
from pyvmm.machine.stats import ExitStats
from pyvmm.outcome import ExitKind, GuestExit
from pyvmm.snapshot.progress import SnapshotProgress


def _registers(vcpu: Vcpu) -> tuple[kvm_regs, kvm_sregs]:
    return vcpu.get_regs(), vcpu.get_sregs()


class MachineControl:
    """The lifecycle and queries QMP asks for, on the machine attached last."""

    def __init__(
        self,
        machine: Machine,
        name: str | None = None,
        shown_progress: Callable[[], SnapshotProgress] | None = None,
    ) -> None:
        self._name = name
        # A snapshot's progress on the terminal as well (the CLI's, when stderr is one).
        self._shown_progress = shown_progress
        self._lock = threading.Lock()
        self._listeners = Listeners()
        self._machine = machine
        self._stats: dict[int | None, Stats | None] = {}  # KVM statistics fds, opened once
        machine.add_listener(self._forward)

    @property
    def machine(self) -> Machine:
        return self._machine

    def attach(self, machine: Machine) -> None:
        """Control `machine` from now on (the one before has ended)."""
        with self._lock:
            old, self._machine = self._machine, machine
            stats, self._stats = self._stats, {}
        old.remove_listener(self._forward)
        for opened in stats.values():
            if opened is not None:
                opened.close()
        machine.add_listener(self._forward)

    def close(self) -> None:
        self.attach(self._machine)  # closes the statistics fds
        self._machine.remove_listener(self._forward)

    # --- events ---------------------------------------------------------------------------

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: EventListener) -> None:
        self._listeners.remove(listener)

    def _forward(self, event: str, data: dict[str, object]) -> None:
        self._listeners.emit(event, data)

    def emit(self, event: str, data: dict[str, object] | None = None) -> None:
        """An event of the control plane's own (the CLI's SHUTDOWN after a reboot it
        does not restart)."""
        self._listeners.emit(event, data)

    # --- MachineController ----------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def state(self) -> MachineState:
        return self._machine.state

    def pause(self) -> None:
        self._machine.pause()

    def resume(self) -> None:
        self._machine.resume()

    def reset(self) -> None:
        """QMP's system_reset: the machine ends as when its guest resets; the CLI boots
        it again (or exits, with `--on-reboot exit`, as QEMU's `-no-reboot`)."""
        self._machine.stop(GuestExit(ExitKind.REBOOT, "system_reset from QMP"), cause="host-qmp-system-reset")

    def powerdown(self) -> None:
        """QMP's system_powerdown: the ACPI power button, pressed."""
        self._machine.press_power_button()
        self.emit("POWERDOWN")

    def quit(self) -> None:
        self._machine.stop(GuestExit(ExitKind.QUIT, "quit from QMP"))

    def snapshot(self, path: str, progress: Progress) -> None:
        shown = self._shown_progress() if self._shown_progress is not None else None

        def report(done: int, total: int) -> None:
            progress(done, total)
            if shown is not None:
                shown(done, total)

        try:
            self._machine.snapshot(path, report)
        except BaseException:
            if shown is not None:
                shown.close()
            raise

    def vcpus(self) -> Sequence[VcpuInfo]:
        return [
            VcpuInfo(index, runner.thread.native_id or 0)
            for index, runner in enumerate(self._machine.runners)
        ]

    def block_devices(self) -> Sequence[BlockDeviceInfo]:
        found = []
        for index, disk in enumerate(self._machine.config.disks):
            try:
                size = os.stat(disk.path).st_size
            except OSError:
                size = 0
            found.append(BlockDeviceInfo(f"virtio{index}", disk.path, disk.readonly, size))
        return found

    def kvm_stats(self, target: StatsTarget) -> Sequence[KvmStatsSet]:
        """KVM's binary statistics (KVM_GET_STATS_FD), none where KVM has none."""
        machine = self._machine
        if target is StatsTarget.VM:
            handles: list[tuple[int | None, object]] = [(None, machine.vm)] if machine.vm is not None else []
        else:
            handles = [(index, runner.vcpu) for index, runner in enumerate(machine.runners)]
        found = []
        for key, handle in handles:
            stats = self._open(key, handle)
            if stats is not None:
                try:
                    found.append(KvmStatsSet(key, stats.descriptors, stats.read()))
                except (KvmError, OSError):
                    continue
        return found

    def _open(self, key: int | None, handle: object) -> Stats | None:
        with self._lock:
            if key not in self._stats:
                try:
                    self._stats[key] = open_stats(handle)  # type: ignore[arg-type]
                except (KvmError, OSError):
                    self._stats[key] = None  # this KVM has no binary statistics
            return self._stats[key]

    def exit_stats(self) -> ExitStats:
        return self._machine.stats()

    def registers_text(self, vcpu: int) -> str:
        if not 0 <= vcpu < len(self._machine.runners):
            raise IndexError(vcpu)
        regs, sregs = self._machine.on_vcpu(vcpu, _registers)
        return format_registers(regs, sregs)
