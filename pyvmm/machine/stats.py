"""Exit statistics: per exit reason, per vCPU, and per bus range.

vCPU threads bump plain list cells on the exit path (no lock: each vCPU has its own
counters); readers sum them when asked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pyvmm.bus import Bus
from pyvmm.kvm import ExitReason

REASON_SLOTS = 64


def _reason_name(reason: int) -> str:
    try:
        return ExitReason(reason).name
    except ValueError:
        return f"REASON_{reason}"


@dataclass
class VcpuCounters:
    """One vCPU's counters; only its own thread writes them."""

    exits: list[int] = field(default_factory=lambda: [0] * REASON_SLOTS)
    emulated: Counter[str] = field(default_factory=Counter)
    # Time spent handling exits: the user-mode CPU time of the vCPU's thread less its
    # guest time, read when the thread ends (KVM's own work in KVM_RUN is system time).
    exit_seconds: float = 0.0


@dataclass(frozen=True)
class RangeStats:
    bus: str
    name: str
    base: int
    length: int
    reads: int
    writes: int


@dataclass(frozen=True)
class IoStats:
    """What device work cost on the I/O thread (pyvmm.io.thread.IoThread's counters)."""

    callbacks: int
    busy_seconds: float  # wall time spent in device callbacks
    cpu_seconds: float  # the I/O thread's CPU time
    faults: int = 0  # callbacks that raised: their device needs a reset (or its link is down)

    def busy_share(self, run_seconds: float) -> float:
        return self.busy_seconds / run_seconds if run_seconds else 0.0


@dataclass(frozen=True)
class ExitStats:
    """A snapshot of a VM's counters."""

    run_seconds: float
    exits: dict[str, int]
    per_vcpu: list[dict[str, int]]
    ranges: list[RangeStats]
    emulated: dict[str, int]
    exit_seconds: float = 0.0  # summed over the vCPUs (see VcpuCounters.exit_seconds)
    io: IoStats | None = None  # the I/O thread's device work

    @property
    def total_exits(self) -> int:
        return sum(self.exits.values())

    @property
    def exit_share(self) -> float:
        """Exit handling as a fraction of the vCPUs' wall time (run time x vCPUs)."""
        vcpu_seconds = self.run_seconds * max(len(self.per_vcpu), 1)
        return self.exit_seconds / vcpu_seconds if vcpu_seconds else 0.0

    def table(self) -> str:
        """The `--stats` report: exit reasons, then device ranges."""
        lines = [f"exits: {self.total_exits} in {self.run_seconds:.3f} s"]
        if self.exit_seconds:
            lines.append(
                f"exit handling: {self.exit_seconds:.3f} s of vCPU-thread user time,"
                f" {100 * self.exit_share:.1f}% of the vCPUs' wall time"
            )
        width = max((len(name) for name in self.exits), default=8)
        for name, count in sorted(self.exits.items(), key=lambda item: -item[1]):
            per_cpu = " ".join(f"{cpu.get(name, 0)}" for cpu in self.per_vcpu)
            lines.append(f"  {name:<{width}}  {count:>10}   per vCPU: {per_cpu}")
        if self.io is not None and self.io.callbacks:
            share = 100 * self.io.busy_share(self.run_seconds)
            lines.append(
                f"I/O thread: {self.io.callbacks} callbacks, busy {self.io.busy_seconds:.3f} s"
                f" ({share:.1f}% of the run), CPU {self.io.cpu_seconds:.3f} s"
                + (f", {self.io.faults} device faults" if self.io.faults else "")
            )
        lines.append("device ranges:")
        lines.append(f"  {'bus':<5} {'range':<23} {'device':<16} {'reads':>10} {'writes':>10}")
        for entry in self.ranges:
            if entry.reads or entry.writes:
                span = f"{entry.base:#x}-{entry.base + entry.length - 1:#x}"
                lines.append(
                    f"  {entry.bus:<5} {span:<23} {entry.name:<16} {entry.reads:>10} {entry.writes:>10}"
                )
        if self.emulated:
            lines.append("emulated instructions:")
            for mnemonic, count in sorted(self.emulated.items(), key=lambda item: -item[1]):
                lines.append(f"  {mnemonic:<16} {count:>10}")
        return "\n".join(lines)


def collect(
    run_seconds: float, vcpus: list[VcpuCounters], buses: list[Bus], io: IoStats | None = None
) -> ExitStats:
    per_vcpu = [{_reason_name(reason): count for reason, count in enumerate(c.exits) if count} for c in vcpus]
    totals: Counter[str] = Counter()
    emulated: Counter[str] = Counter()
    for counts, counters in zip(per_vcpu, vcpus, strict=True):
        totals.update(counts)
        emulated.update(counters.emulated)
    ranges = [
        RangeStats(bus.name, entry.name, entry.base, entry.length, entry.reads, entry.writes)
        for bus in buses
        for entry in [*bus.stats().ranges, bus.stats().unclaimed]
    ]
    exit_seconds = sum(counters.exit_seconds for counters in vcpus)
    return ExitStats(run_seconds, dict(totals), per_vcpu, ranges, dict(emulated), exit_seconds, io)
