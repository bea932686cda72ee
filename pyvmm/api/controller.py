"""What the QMP server needs from a machine: `MachineController`, in the machine's
vocabulary (`MachineState`, pause, resume, ...), and the plain records it returns.

The integrator implements the Protocol on `pyvmm.machine.Machine`; the QMP server
(`pyvmm.api.qmp`) is its only user here and turns it into QEMU's command results
(QEMU's qapi/run-state.json, machine.json, block-core.json, stats.json). Every method
may be called from a worker thread of the server, never from a vCPU thread; the
blocking ones (pause, snapshot, ...) may take as long as they need: the server runs
them off its event loop.

Events: the machine calls each listener added with `add_listener(listener)` as
`listener(event, data)` from whichever thread has the news, with QMP's event names
and data (QEMU's qapi/run-state.json): "STOP" and "RESUME" ({}), "POWERDOWN" ({}),
"RESET" ({"guest": bool, "reason": ShutdownCause}), "SHUTDOWN" ({"guest": bool,
"reason": ShutdownCause}). The server's listener never blocks and never raises.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pyvmm.kvm.stats import StatDescriptor
from pyvmm.machine.lifecycle import MachineState
from pyvmm.machine.stats import ExitStats

# listener(event, data): QMP's event name and its data member.
EventListener = Callable[[str, dict[str, object]], None]
# progress(done, total): bytes of the snapshot written so far, and the expected total.
Progress = Callable[[int, int], None]


class ShutdownCause(enum.Enum):
    """Why the machine shut down or reset (QEMU's ShutdownCause, qapi/run-state.json):
    the `reason` of the SHUTDOWN and RESET events."""

    NONE = "none"
    HOST_ERROR = "host-error"
    HOST_QMP_QUIT = "host-qmp-quit"
    HOST_QMP_SYSTEM_RESET = "host-qmp-system-reset"
    HOST_SIGNAL = "host-signal"
    HOST_UI = "host-ui"
    GUEST_SHUTDOWN = "guest-shutdown"
    GUEST_RESET = "guest-reset"
    GUEST_PANIC = "guest-panic"
    SUBSYSTEM_RESET = "subsystem-reset"
    SNAPSHOT_LOAD = "snapshot-load"


class StatsTarget(enum.Enum):
    """What KVM statistics describe (QEMU's StatsTarget, qapi/stats.json)."""

    VM = "vm"
    VCPU = "vcpu"


@dataclass(frozen=True)
class KvmStatsSet:
    """The binary statistics of the VM (`vcpu` None) or of one vCPU (its index):
    `pyvmm.kvm.stats.Stats`' descriptors and what its `read()` returned."""

    vcpu: int | None
    descriptors: tuple[StatDescriptor, ...]
    values: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class VcpuInfo:
    """A vCPU: its index, the host thread that runs it, and its place in the topology."""

    index: int
    thread_id: int
    socket: int = 0
    core: int = 0
    thread: int = 0


@dataclass(frozen=True)
class BlockDeviceInfo:
    """A disk: its id, the host file behind it, read-only or not, size in bytes."""

    id: str
    file: str
    read_only: bool
    size: int
    format: str = "raw"
    qdev: str | None = None  # the guest device it is attached to, if named


class MachineController(Protocol):
    """What QMP asks of a machine. Errors are `VmmError`s: a `LifecycleError` for a
    request the state does not allow, which the client sees as a GenericError."""

    @property
    def name(self) -> str | None:
        """The VM's name (`--name`), None when it has none."""
        ...

    @property
    def state(self) -> MachineState: ...

    def pause(self) -> None:
        """Park the vCPUs (running → paused) and emit STOP."""
        ...

    def resume(self) -> None:
        """Start or unpark the vCPUs (created or paused → running) and emit RESUME."""
        ...

    def reset(self) -> None:
        """Reset the machine as its reset line does, and emit RESET (guest false,
        reason host-qmp-system-reset)."""
        ...

    def powerdown(self) -> None:
        """Press the ACPI power button (the guest decides what follows) and emit
        POWERDOWN."""
        ...

    def quit(self) -> None:
        """Stop the machine for good and emit SHUTDOWN (guest false, reason
        host-qmp-quit). The process that owns it then exits, as QEMU's does."""
        ...

    def snapshot(self, path: str, progress: Progress) -> None:
        """Save the whole machine to the file `path` (QMP's migrate to a file: URI),
        blocking until done, calling `progress(done, total)` (bytes) as it goes. The
        machine decides whether it pauses meanwhile; it leaves its state as it was."""
        ...

    def vcpus(self) -> Sequence[VcpuInfo]: ...

    def block_devices(self) -> Sequence[BlockDeviceInfo]: ...

    def kvm_stats(self, target: StatsTarget) -> Sequence[KvmStatsSet]:
        """KVM's binary statistics (KVM_GET_STATS_FD): one set for `VM`, one per vCPU
        for `VCPU`; none where KVM has no binary statistics."""
        ...

    def exit_stats(self) -> ExitStats:
        """pyvmm's own counters, live: per exit reason, vCPU, device range, emulated
        instruction."""
        ...

    def registers_text(self, vcpu: int) -> str:
        """vCPU `vcpu`'s registers as text (HMP's `info registers`); `IndexError`
        when there is no such vCPU."""
        ...

    def add_listener(self, listener: EventListener) -> None: ...

    def remove_listener(self, listener: EventListener) -> None: ...
