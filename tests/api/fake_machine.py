"""A small, real, in-memory `MachineController` for the QMP tests: a checked
lifecycle (pyvmm.machine.lifecycle), events to its listeners as the machine sends
them, a snapshot that writes a file with progress, and gates a test can close to make
a command slow."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from pyvmm.api.controller import BlockDeviceInfo, EventListener, KvmStatsSet, Progress, StatsTarget, VcpuInfo
from pyvmm.errors import VmmError
from pyvmm.kvm.stats import StatDescriptor
from pyvmm.kvm.uapi import StatsBase, StatsType, StatsUnit
from pyvmm.machine.lifecycle import MachineState, check_transition
from pyvmm.machine.stats import ExitStats, IoStats, RangeStats

SNAPSHOT_CHUNKS = 4
SNAPSHOT_CHUNK = b"\xaa" * 4096


def _stats(*stats: tuple[str, StatsType, StatsUnit, int, int, tuple[int, ...]]) -> KvmStatsSet:
    """(name, type, unit, exponent, bucket size, values) → descriptors laid out one after
    the other, as KVM's data block has them, and their values."""
    descriptors, offset = [], 0
    for name, kind, unit, exponent, bucket_size, values in stats:
        descriptors.append(
            StatDescriptor(name, kind, unit, StatsBase.POW10, exponent, len(values), offset, bucket_size)
        )
        offset += 8 * len(values)
    return KvmStatsSet(None, tuple(descriptors), {stat[0]: stat[-1] for stat in stats})


VM_STATS = _stats(
    ("remote_tlb_flush", StatsType.CUMULATIVE, StatsUnit.NONE, 0, 0, (7,)),
    ("pages_4k", StatsType.INSTANT, StatsUnit.NONE, 0, 0, (512,)),
    ("max_mmu_page_hash_collisions", StatsType.PEAK, StatsUnit.NONE, 0, 0, (3,)),
)


def vcpu_stats(index: int) -> KvmStatsSet:
    stats = _stats(
        ("exits", StatsType.CUMULATIVE, StatsUnit.NONE, 0, 0, (100 + index,)),
        ("halt_wait_ns", StatsType.CUMULATIVE, StatsUnit.SECONDS, -9, 0, (5000,)),
        ("guest_mode", StatsType.INSTANT, StatsUnit.BOOLEAN, 0, 0, (1,)),
        ("halt_poll_fail_hist", StatsType.LOG_HIST, StatsUnit.SECONDS, -9, 0, (0, 1, 2, 3)),
        ("halt_wait_hist", StatsType.LINEAR_HIST, StatsUnit.SECONDS, -9, 10, (4, 5)),
    )
    return KvmStatsSet(index, stats.descriptors, stats.values)


class FakeMachine:
    def __init__(self, name: str | None = "guest0", vcpu_count: int = 2) -> None:
        self._name = name
        self._state = MachineState.CREATED
        self._lock = threading.Lock()
        self._listeners: list[EventListener] = []
        self.vcpu_count = vcpu_count
        self.calls: list[str] = []
        # open: pause() and snapshot() go ahead; a test clears it to hold them
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a held call is waiting at the gate
        self.snapshot_error: Exception | None = None

    # --- lifecycle ---

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def state(self) -> MachineState:
        return self._state

    def _enter(self, target: MachineState) -> None:
        with self._lock:
            check_transition(self._state, target)
            self._state = target

    def _emit(self, event: str, data: dict[str, object] | None = None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event, data or {})

    def _wait_at_gate(self) -> None:
        self.entered.set()
        if not self.gate.wait(10):
            raise VmmError("the test never opened the gate")

    def pause(self) -> None:
        self.calls.append("pause")
        self._wait_at_gate()
        self._enter(MachineState.PAUSED)
        self._emit("STOP")

    def resume(self) -> None:
        self.calls.append("resume")
        self._enter(MachineState.RUNNING)
        self._emit("RESUME")

    def reset(self) -> None:
        self.calls.append("reset")
        self._emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})

    def powerdown(self) -> None:
        self.calls.append("powerdown")
        self._emit("POWERDOWN")

    def quit(self) -> None:
        self.calls.append("quit")
        self._enter(MachineState.STOPPED)
        self._emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})

    def snapshot(self, path: str, progress: Progress) -> None:
        self.calls.append("snapshot")
        self._wait_at_gate()
        if self.snapshot_error is not None:
            raise self.snapshot_error
        total = SNAPSHOT_CHUNKS * len(SNAPSHOT_CHUNK)
        with Path(path).open("wb") as file:
            for chunk in range(SNAPSHOT_CHUNKS):
                file.write(SNAPSHOT_CHUNK)
                progress((chunk + 1) * len(SNAPSHOT_CHUNK), total)

    # --- queries ---

    def vcpus(self) -> Sequence[VcpuInfo]:
        return [VcpuInfo(index, 4000 + index, core=index) for index in range(self.vcpu_count)]

    def block_devices(self) -> Sequence[BlockDeviceInfo]:
        return [
            BlockDeviceInfo("disk0", "/var/lib/disk0.img", False, 1 << 30),
            BlockDeviceInfo("cd0", "/srv/boot.iso", True, 700 << 20, qdev="virtio-blk1"),
        ]

    def kvm_stats(self, target: StatsTarget) -> Sequence[KvmStatsSet]:
        if target is StatsTarget.VM:
            return [VM_STATS]
        return [vcpu_stats(index) for index in range(self.vcpu_count)]

    def exit_stats(self) -> ExitStats:
        return ExitStats(
            run_seconds=2.5,
            exits={"IO": 30, "HLT": 4},
            per_vcpu=[{"IO": 20, "HLT": 3}, {"IO": 10, "HLT": 1}],
            ranges=[RangeStats("pio", "serial0", 0x3F8, 8, 12, 18)],
            emulated={"movdqa": 2},
            exit_seconds=0.125,
            io=IoStats(callbacks=9, busy_seconds=0.01, cpu_seconds=0.02, faults=1),
        )

    def registers_text(self, vcpu: int) -> str:
        if not 0 <= vcpu < self.vcpu_count:
            raise IndexError(vcpu)
        return f"RAX=000000000000000{vcpu} RBX=0000000000000000\nRIP=000000000010000{vcpu} RFL=00000002"

    # --- events ---

    def add_listener(self, listener: EventListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    @property
    def listeners(self) -> int:
        return len(self._listeners)
