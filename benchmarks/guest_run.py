"""One Linux guest run for the virtio I/O benchmarks (virtio_blk.py, virtio_net.py):
the guest's init runs a script (`pyvmm.run=`, pyvmm/images/initramfs.py) that wraps
each measured phase in marker lines, and the host samples the VMM's CPU counters the
moment each marker reaches the console.

    bench-begin NAME
    ... the phase's own output (dd's rate line, randread's line, ...)
    bench-end NAME

pyvmm runs in this process (`Machine`, as benchmarks/exit_loop.py does), so that each
phase's share of pyvmm's own threads can be read exactly, however long the boot
before it was: the I/O thread's wall time inside device callbacks and its CPU time
(`IoThread.busy_seconds`, `cpu_seconds`, the counters behind `pyvmm run --stats`),
and per thread, from /proc/self/task/*/stat (proc(5)), user and system time with
the vCPU threads' guest time taken out. QEMU runs as a child process; for it only
its process CPU time (/proc/PID/stat) is known.

What counts as pyvmm's own CPU ("VMM CPU"): every thread's user + system time,
except that a vCPU thread counts only its user time less its guest time (its
system time is KVM_RUN: KVM's exit handling and, on a software KVM such as
kvm_pvm, the guest kernel's own code run by the host kernel; what the host costs,
not pyvmm). "Process CPU" is the whole process's user + system time, guest time
excluded, KVM's share included.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from pyvmm import Machine, MachineConfig  # noqa: E402
from pyvmm.device_config import DiskConfig, NetConfig  # noqa: E402

MEMORY = "256M"
_MARKER = re.compile(rb"bench-(begin|end) ([A-Za-z0-9_-]+)")
_TICK = os.sysconf("SC_CLK_TCK")
QEMU_STUCK_SECONDS = 30.0  # QEMU printed "KVM internal error" and went quiet: paused for good


class BenchmarkError(Exception):
    """Something kept the benchmark from measuring; one line for the user."""


@dataclass(frozen=True)
class Sample:
    """The VMM's counters at one marker; None where a VMM does not say."""

    at: float  # time.monotonic()
    process_cpu: float  # user + system of the whole process, guest time excluded
    vmm_cpu: float | None = None  # pyvmm's own threads (see the module docstring)
    io_cpu: float | None = None  # the I/O thread's CPU time
    io_busy: float | None = None  # the I/O thread's wall time inside callbacks


@dataclass
class Phase:
    """What one phase cost: the differences between its two samples."""

    name: str
    begin: Sample
    end: Sample
    output: str  # the guest's console between the markers

    @property
    def seconds(self) -> float:
        return self.end.at - self.begin.at

    def delta(self, name: str) -> float | None:
        start, stop = getattr(self.begin, name), getattr(self.end, name)
        return None if start is None or stop is None else stop - start

    def busy_share(self) -> float | None:
        busy = self.delta("io_busy")
        return None if busy is None or self.seconds <= 0 else busy / self.seconds


@dataclass
class GuestRun:
    label: str
    status: int | None  # None: killed
    output: str  # the whole console
    phases: dict[str, Phase] = field(default_factory=dict)
    failure: str = ""


class MarkerWatch:
    """Fed the console as it comes; calls `sample()` at each marker line."""

    def __init__(self, sample: Callable[[], Sample]) -> None:
        self._sample = sample
        self._lock = threading.Lock()
        self.output = bytearray()
        self._scanned = 0
        self._open: dict[str, tuple[Sample, int]] = {}
        self.phases: dict[str, Phase] = {}
        self.last_output = time.monotonic()

    def feed(self, data: bytes) -> None:
        # The sample is taken first: the marker is the newest thing the guest said.
        now_sample: Sample | None = None
        with self._lock:
            self.output += data
            self.last_output = time.monotonic()
            while True:
                newline = self.output.find(b"\n", self._scanned)
                if newline < 0:
                    return
                line = bytes(self.output[self._scanned : newline])
                self._scanned = newline + 1
                match = _MARKER.fullmatch(line.strip())
                if not match:
                    continue
                if now_sample is None:
                    now_sample = self._sample()
                kind, name = match[1].decode(), match[2].decode()
                if kind == "begin":
                    self._open[name] = (now_sample, newline + 1)
                elif name in self._open:
                    begin, start = self._open.pop(name)
                    text = self.output[start : self._scanned - len(line) - 1].decode(errors="replace")
                    self.phases[name] = Phase(name, begin, now_sample, text)


def _stat_fields(path: str) -> list[str]:
    with open(path) as stat:
        return stat.read().rsplit(")", 1)[1].split()


def _times(fields: list[str]) -> tuple[float, float, float]:
    """utime, stime, guest_time in seconds (proc(5) fields 14, 15 and 43)."""
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK, int(fields[40]) / _TICK


def process_cpu(pid: int | str = "self") -> float:
    """user + system time of a process (all its threads, ended ones included), guest
    time excluded: the kernel counts time in the guest as user time too."""
    utime, stime, guest = _times(_stat_fields(f"/proc/{pid}/stat"))
    return utime + stime - guest


def _machine_sampler(machine: Machine) -> Callable[[], Sample]:
    def sample() -> Sample:
        at = time.monotonic()
        vcpus = {runner.thread.native_id for runner in machine.runners}
        vmm = 0.0
        for tid in os.listdir("/proc/self/task"):
            try:
                utime, stime, guest = _times(_stat_fields(f"/proc/self/task/{tid}/stat"))
            except OSError:  # the thread ended meanwhile
                continue
            vmm += utime - guest if int(tid) in vcpus else utime + stime
        return Sample(at, process_cpu(), vmm, machine.io.cpu_seconds, machine.io.busy_seconds)

    return sample


def run_pyvmm(label: str, kernel: Path, initrd: Path, cmdline: str, *, disks: Sequence[DiskConfig] = (),
              nets: Sequence[NetConfig] = (), transport: str = "pci", timeout: float,
              echo: Callable[[bytes], object] | None = None) -> GuestRun:  # fmt: skip
    """Boot pyvmm's guest in this process; its script's phases, sampled at their markers."""
    holder: list[MarkerWatch] = []

    def console(data: bytes) -> None:
        holder[0].feed(data)
        if echo is not None:
            echo(data)

    config = MachineConfig(kernel=str(kernel), initrd=str(initrd), cmdline=cmdline, memory=MEMORY,
                           disks=tuple(disks), nets=tuple(nets), transport=transport, console=console,
                           timeout=timeout)  # fmt: skip
    machine = Machine(config)
    holder.append(MarkerWatch(_machine_sampler(machine)))
    result = machine.run()
    watch = holder[0]
    text = watch.output.decode(errors="replace")
    failure = "" if result.status == 0 else f"{result.exit.describe()} (status {result.status})"
    return GuestRun(label, result.status, text, watch.phases, failure)


def run_qemu(label: str, command: list[str], *, timeout: float,
             echo: Callable[[bytes], object] | None = None) -> GuestRun:  # fmt: skip
    """Run QEMU with the guest's console on stdout; phases sampled at their markers.
    A QEMU that reported a KVM internal error and then fell silent is killed."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)  # fmt: skip
    assert process.stdout is not None
    watch = MarkerWatch(lambda: Sample(time.monotonic(), process_cpu(process.pid)))
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    killed = False
    try:
        while True:
            now = time.monotonic()
            stuck = b"KVM internal error" in watch.output and now - watch.last_output > QEMU_STUCK_SECONDS
            if now - started > timeout or stuck:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            if not selector.select(0.2):
                if process.poll() is not None:
                    break
                continue
            data = os.read(process.stdout.fileno(), 65536)
            if not data:
                break
            watch.feed(data)
            if echo is not None:
                echo(data)
    finally:
        status = process.wait()
        selector.close()
        process.stdout.close()
    text = watch.output.decode(errors="replace")
    failure = ""
    if killed or status != 0:
        failure = first_error(text) or (f"killed after {timeout:.0f} s" if killed else f"status {status}")
    return GuestRun(label, None if killed else status, text, watch.phases, failure)


def qemu_command(accel: str, kernel: Path, initrd: Path, cmdline: str, devices: Sequence[str]) -> list[str]:
    """QEMU's PC with the same kernel, initrd, command line and memory as pyvmm's run."""
    return ["qemu-system-x86_64", "-accel", accel, "-M", "pc", "-m", MEMORY, "-nodefaults",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
            "-initrd", str(initrd), "-append", cmdline, *devices]  # fmt: skip


def first_error(text: str) -> str:
    """The line that says why a guest did not get through its script."""
    for pattern in (r"KVM internal error.*", r"qemu-system[^\n]*", r"Kernel panic.*", r"pyvmm: [^\n]*"):
        match = re.search(pattern, text)
        if match:
            return match[0].strip()[:160]
    return ""


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])  # fmt: skip


def per_gib(seconds: float | None, moved: int) -> str:
    return "-" if seconds is None or moved <= 0 else f"{seconds / (moved / (1 << 30)):.2f}"


def share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
