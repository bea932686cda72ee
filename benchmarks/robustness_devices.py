"""Hostile virtio drivers and host-side faults against the real `pyvmm run`.

robustness.py's device cases (`python benchmarks/robustness.py --devices`). Each case
boots tests/guests/hostile (a small C guest: tests/guests/README.md) with `case=NAME`
on its command line, in a VM with a virtio disk (a temporary raw image), a virtio-net
card (`--net tap`, created in a network namespace made for the run) and a virtio
console, 2 vCPUs, over `--transport pci` and `mmio`:

- idle: heartbeats only; the baseline each transport's RSS is measured against;
- driver-ok-early: virtio-net DRIVER_OK with receiveq never set up; the guest checks
  DEVICE_NEEDS_RESET, then that the card works after a reset (its verdict ends the VM);
- status-storm, ring-storm: every device, again and again, DRIVER_OK without
  FEATURES_OK / a queue whose rings are outside RAM (each a "needs reset");
- status-fuzz: random writes to every register of every device;
- net-reset-race, console-reset-race: a receive buffer outside RAM, a fault for the
  I/O thread (or, for the console, the host's keystrokes typed into a pty) while
  both vCPUs reset the device (the lock-order deadlocks);
- queue-select-race: one vCPU flips queue_select while the other uses queue fields;
- blk-flood: disk requests posted without waiting for completions, heads reused
  while in flight; blk-flood-sigterm: the same, stopped by SIGTERM instead of
  --timeout; blk-flood-reset: the flood, then a reset with requests in flight;
- bar-overlap (PCI): a BAR moved over another device's, the other moved away, the
  same value written again: it must decode (the guest's verdict ends the VM);
- tap-deleted: a working card while the host deletes its TAP (`ip -n NS link del`);
  the guest must see the link go down and keep running;
- stdout-stalled, serial-stalled: virtio-console or COM1 output into a stdout pipe
  nobody reads.

Targets, per run (a miss is named in the table's last columns):
- traceback: no Python traceback on stderr;
- vm: the VM keeps running (heartbeats with no gap over STALL_LIMIT s, status 72
  at the timeout) or ends with its documented verdict status (33: passed);
- late: exit within LATE_LIMIT s of --timeout (or of the SIGTERM); a run not over
  GRACE s after it is killed and counts as a hang;
- rss: peak RSS (VmHWM) within RSS_LIMIT_MIB of the idle VM's on the same transport;
- log: at most LOG_LIMIT stderr lines a second per device the case abuses.

It needs root (TAP devices in network namespaces) and /dev/kvm.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pty
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from robustness import ROOT, _table, _vm_hwm_kib
from robustness import RobustnessError as RobustnessError  # raised here, caught by robustness.main

GUEST = ROOT / "build" / "guests" / "hostile.elf"
BUILD = ["bash", str(ROOT / "tests" / "guests" / "build.sh"), str(GUEST.parent)]
TRANSPORTS = ("pci", "mmio")
MEMORY = "64M"  # the guest's scratch memory is 16-24 MiB (tests/guests/hostile/hostile.h)
DISK_BYTES = 16 << 20
HEARTBEAT_MS = 200
HOLD_MS = 1000
GRACE = 10.0  # seconds past the deadline before a run is killed as a hang
LATE_LIMIT = 2.0
STALL_LIMIT = 2.0
RSS_LIMIT_MIB = 64
LOG_LIMIT = 3.0  # stderr lines a second per abused device
TAP_DELETE_AFTER = 1.0  # seconds after the guest's link came up
TYPE_EVERY = 0.01  # seconds between keystroke bursts into the pty
PASS_STATUS, FAIL_STATUS, STOPPED = (0x10 << 1) | 1, (0x11 << 1) | 1, 72  # hostile.h, README


@dataclass(frozen=True)
class DeviceCase:
    """One row of the table: a guest case, and what the host does meanwhile."""

    name: str
    guest: str  # case= for the guest
    ends: bool = False  # the guest ends the VM with a verdict (PASS_STATUS)
    verdict: bool = False  # a running case that must print "verdict ok"
    transports: tuple[str, ...] = TRANSPORTS
    devices: int = 1  # devices it abuses: its share of the log budget
    host: str | None = None  # "tap-delete", "sigterm", "stall-stdout" or "type"
    hold_ms: int = HOLD_MS  # hold= for the guest

    @property
    def heartbeat(self) -> bool:
        return self.host != "stall-stdout"  # nobody reads the heartbeat of those


CASES = [
    DeviceCase("idle", "idle"),
    DeviceCase("driver-ok-early", "driver-ok-early", ends=True),
    DeviceCase("status-storm", "status-storm", devices=3),
    DeviceCase("ring-storm", "ring-storm", devices=3),
    DeviceCase("status-fuzz", "status-fuzz", devices=3),
    DeviceCase("net-reset-race", "net-reset-race"),
    DeviceCase("console-reset-race", "console-reset-race", host="type"),
    DeviceCase("queue-select-race", "queue-select-race"),
    DeviceCase("blk-flood", "blk-flood"),
    DeviceCase("blk-flood-sigterm", "blk-flood", transports=("pci",), host="sigterm"),
    DeviceCase("blk-flood-reset", "blk-flood-reset", hold_ms=4000),  # long enough for a backlog
    DeviceCase("bar-overlap", "bar-overlap", ends=True, transports=("pci",), devices=2),
    DeviceCase("tap-deleted", "net-link", verdict=True, host="tap-delete"),
    DeviceCase("stdout-stalled", "console-flood", host="stall-stdout"),
    DeviceCase("serial-stalled", "serial-flood", transports=("pci",), host="stall-stdout"),
]
BY_NAME = {case.name: case for case in CASES}
_numbers = itertools.count()


# --- one run -------------------------------------------------------------------------------------


@dataclass
class Console:
    """What the guest printed on stdout, as it came: heartbeat times, verdicts, a tail."""

    started: float
    heartbeats: list[float] = field(default_factory=list)  # seconds since start
    verdicts: list[str] = field(default_factory=list)
    first: float | None = None  # when the first line came
    link_up: float | None = None  # when the net-link case said its link is up
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=8))

    def read(self, fd: int) -> None:
        """Until EOF (a thread of its own)."""
        pending = b""
        while chunk := os.read(fd, 1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            now = time.monotonic() - self.started
            for raw in lines:
                line = raw.decode(errors="replace")
                self.first = now if self.first is None else self.first
                if line.startswith("hb "):
                    self.heartbeats.append(now)
                elif line.startswith("verdict "):
                    self.verdicts.append(line)
                elif line.startswith("net link up"):
                    self.link_up = now
                self.tail.append(line[:160])
            pending = pending[-4096:]


@dataclass(frozen=True)
class DeviceOutcome:
    """How one case ended on one transport."""

    case: DeviceCase
    transport: str
    timeout: float  # when the run should end: --timeout, or the SIGTERM
    status: int | None  # None: killed as a hang
    seconds: float
    peak_rss_kib: int
    stderr: str
    heartbeats: tuple[float, ...]
    first_output: float | None
    verdicts: tuple[str, ...]
    tail: tuple[str, ...]
    host_note: str = ""

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    @property
    def late(self) -> float:
        return max(0.0, self.seconds - self.timeout)

    @property
    def log_lines(self) -> int:
        """stderr lines but pyvmm's last one (how the guest ended)."""
        return sum(1 for line in self.stderr.splitlines() if not line.startswith("pyvmm: guest ended:"))

    @property
    def log_rate(self) -> float:
        return self.log_lines / max(self.seconds, 1.0)

    @property
    def stall(self) -> float | None:
        """The longest the guest went without a heartbeat while the VM should run:
        between two, and from the last to the end of the run (or the timeout, counted
        from the first line, when pyvmm took longer to go)."""
        if not self.case.heartbeat:
            return None
        beats = self.heartbeats
        if not beats:
            return self.seconds
        end = self.seconds
        if self.first_output is not None:
            end = min(end, self.first_output + self.timeout)
        gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
        return max([*gaps, end - beats[-1], 0.0])


@contextlib.contextmanager
def _namespace() -> Iterator[str]:
    name = f"pyvmm-rb-{os.getpid()}-{next(_numbers)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _delete_tap(namespace: str) -> str:
    """Delete the namespace's TAP from the host side; what was done, for the table."""
    shown = subprocess.run(["ip", "-n", namespace, "-j", "link", "show"], capture_output=True, text=True)
    names = [link["ifname"] for link in json.loads(shown.stdout or "[]") if link.get("ifname") != "lo"]
    for name in names:
        subprocess.run(["ip", "-n", namespace, "link", "del", name], check=False)
    return f"deleted {','.join(names) or 'no TAP'}"


def _type_into(master: int, stop: threading.Event) -> None:
    """Keystrokes into the pty pyvmm reads as its terminal, until `stop` (never
    Ctrl-A: that is pyvmm's escape key)."""
    os.set_blocking(master, False)
    while not stop.wait(TYPE_EVERY):
        with contextlib.suppress(OSError):
            os.write(master, b"hostile keystrokes\r")


def run_case(case: DeviceCase, transport: str, directory: Path, timeout: float, *,
             pyvmm_root: Path = ROOT) -> DeviceOutcome:  # fmt: skip
    """One `pyvmm run` of the hostile guest, in a network namespace of its own."""
    number = next(_numbers)
    image = directory / f"{case.name}-{transport}-{number}.img"
    with open(image, "wb") as disk:
        disk.truncate(DISK_BYTES)
    # With SIGTERM as the stop, --timeout is only a backstop far behind it.
    vm_timeout = timeout * 3 if case.host == "sigterm" else timeout
    cmdline = f"case={case.guest} hb={HEARTBEAT_MS if case.heartbeat else 0} hold={case.hold_ms}"
    pyvmm = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(GUEST), "--cmdline", cmdline,
             "--cpus", "2", "--memory", MEMORY, "--timeout", str(vm_timeout), "--disk", str(image),
             "--net", "tap", "--console", "virtio", "--transport", transport]  # fmt: skip
    stop_typing = threading.Event()
    with _namespace() as namespace, tempfile.TemporaryFile() as stderr, contextlib.ExitStack() as fds:
        read_end, write_end = os.pipe()
        fds.callback(os.close, read_end)
        stdin: int = subprocess.DEVNULL
        if case.host == "type":
            master, slave = pty.openpty()
            fds.callback(os.close, master)
            stdin = slave
        started = time.monotonic()
        console = Console(started)
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *pyvmm], stdin=stdin, stdout=write_end,
                                   stderr=stderr, cwd=pyvmm_root, start_new_session=True)  # fmt: skip
        os.close(write_end)
        helpers = []
        if case.host != "stall-stdout":  # else the pipe is never read: a stalled stdout
            helpers.append(threading.Thread(target=console.read, args=(read_end,), daemon=True))
        if case.host == "type":
            os.close(stdin)
            helpers.append(threading.Thread(target=_type_into, args=(master, stop_typing), daemon=True))
        for helper in helpers:
            helper.start()
        status, peak, note = _wait(process, case, namespace, console, timeout)
        stop_typing.set()
        for helper in helpers:
            helper.join(timeout=5)
        seconds = time.monotonic() - started
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    image.unlink()
    return DeviceOutcome(case, transport, timeout, status, seconds, peak, errors, tuple(console.heartbeats),
                         console.first, tuple(console.verdicts), tuple(console.tail), note)  # fmt: skip


def _wait(process: subprocess.Popen[bytes], case: DeviceCase, namespace: str, console: Console,
          timeout: float) -> tuple[int | None, int, str]:  # fmt: skip
    """Sample VmHWM, act as the host, reap: (status or None if killed, peak KiB, note).
    `ip netns exec` execs pyvmm, so the child's pid is pyvmm's."""
    peak, note = 0, ""
    while True:
        pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            status: int | None = os.waitstatus_to_exitcode(wait_status)
            break
        elapsed = time.monotonic() - console.started
        if elapsed > timeout + GRACE:
            os.killpg(process.pid, signal.SIGKILL)
            _, _, usage = os.wait4(process.pid, 0)
            status, note = None, (note + "; " if note else "") + f"killed {GRACE:g} s past the deadline"
            break
        peak = max(peak, _vm_hwm_kib(process.pid) or 0)
        if case.host == "sigterm" and not note and elapsed >= timeout:
            os.kill(process.pid, signal.SIGTERM)
            note = f"SIGTERM at {elapsed:.1f} s"
        up = console.link_up
        if case.host == "tap-delete" and not note and up is not None and elapsed >= up + TAP_DELETE_AFTER:
            note = f"{_delete_tap(namespace)} at {elapsed:.1f} s"
        time.sleep(0.05)
    process.returncode = status if status is not None else -signal.SIGKILL  # reaped here
    return status, peak or int(usage.ru_maxrss), note


# --- what they tell ------------------------------------------------------------------------------


def _describe_status(case: DeviceCase, status: int | None) -> str:
    if status is None:
        return "killed"
    names = {STOPPED: "stopped", PASS_STATUS: "pass", FAIL_STATUS: "FAIL", 70: "VM error", 71: "triple fault"}
    return f"{status} {names.get(status, '')}".rstrip()


@dataclass
class DeviceSummary:
    """The outcomes of the device cases, judged against the targets."""

    outcomes: list[DeviceOutcome]

    def idle_rss_kib(self, transport: str) -> int | None:
        """The idle VM's peak RSS on `transport`, if it ran as it should."""
        for outcome in self.outcomes:
            if outcome.case.name == "idle" and outcome.transport == transport and outcome.status == STOPPED:
                return outcome.peak_rss_kib
        return None

    def rss_growth_kib(self, outcome: DeviceOutcome) -> int | None:
        idle = self.idle_rss_kib(outcome.transport)
        return None if idle is None else outcome.peak_rss_kib - idle

    def misses(self, outcome: DeviceOutcome) -> list[str]:
        """The targets this run missed (module docstring)."""
        case, missed = outcome.case, []
        if outcome.traceback:
            missed.append("traceback")
        stall = outcome.stall
        if (
            outcome.status != (PASS_STATUS if case.ends else STOPPED)
            or (stall is not None and stall > STALL_LIMIT)
            or (case.verdict and (not outcome.verdicts or any(" FAIL " in v for v in outcome.verdicts)))
        ):
            missed.append("vm")
        if outcome.status is None or outcome.late > LATE_LIMIT:
            missed.append("late")
        growth = self.rss_growth_kib(outcome)
        if growth is None or growth > RSS_LIMIT_MIB << 10:
            missed.append("rss")
        if outcome.log_rate > LOG_LIMIT * case.devices:
            missed.append("log")
        return missed

    def problems(self) -> list[str]:
        lines = []
        for outcome in self.outcomes:
            missed = self.misses(outcome)
            if missed:
                last = outcome.stderr.strip().splitlines()[-1:] or [""]
                lines.append(f"{outcome.case.name}/{outcome.transport}: missed {', '.join(missed)}: "
                             f"{self.note(outcome)} | {last[0][:200]}")  # fmt: skip
        return lines

    @staticmethod
    def note(outcome: DeviceOutcome) -> str:
        notes = [outcome.host_note] if outcome.host_note else []
        notes += [v.removeprefix("verdict ") for v in outcome.verdicts[-1:]]
        flood = [line for line in outcome.tail if "max_inflight=" in line]
        if flood:
            notes.append("in flight up to " + flood[-1].rsplit("max_inflight=", 1)[1].split()[0])
        return "; ".join(notes)

    def table(self) -> str:
        rows = []
        for outcome in self.outcomes:
            growth = self.rss_growth_kib(outcome)
            stall = outcome.stall
            rows.append([
                outcome.case.name,
                outcome.transport,
                _describe_status(outcome.case, outcome.status),
                "YES" if outcome.traceback else "no",
                f"{outcome.late:.1f}" if outcome.status is not None else f">{GRACE:g}",
                f"{outcome.peak_rss_kib >> 10} ({'?' if growth is None else f'{growth >> 10:+d}'})",
                f"{outcome.log_rate:.1f}/{LOG_LIMIT * outcome.case.devices:g}",
                "-" if stall is None else f"{stall:.1f}",
                ", ".join(self.misses(outcome)) or "ok",
                self.note(outcome)[:70],
            ])  # fmt: skip
        header = ["case", "transport", "status", "traceback", "late s", "RSS MiB (vs idle)", "log lines/s",
                  "stall s", "targets missed", "note"]  # fmt: skip
        missed = sum(1 for outcome in self.outcomes if self.misses(outcome))
        legend = (f"targets: no traceback; vm running (no heartbeat gap over {STALL_LIMIT:g} s, status 72) "
                  f"or its verdict status 33; exit within {LATE_LIMIT:g} s of --timeout/SIGTERM; RSS within "
                  f"{RSS_LIMIT_MIB} MiB of idle; at most {LOG_LIMIT:g} log lines/s per device")  # fmt: skip
        lines = [_table(rows, header), "", legend, f"runs {len(self.outcomes)}, missing a target {missed}"]
        problems = self.problems()
        if problems:
            lines += ["", "problems:", *(f"  {line}" for line in problems)]
        return "\n".join(lines)


def select(names: Iterable[str], transports: Iterable[str] = TRANSPORTS) -> list[tuple[DeviceCase, str]]:
    """The (case, transport) runs for `names`: "all", case names (each on those of
    `transports` it has) or "case/transport"; the idle baseline of every transport
    used comes first."""
    allowed, runs = list(transports), []
    for name in names:
        case_name, _, only = name.partition("/")
        cases = CASES if case_name == "all" else [BY_NAME.get(case_name)]
        if cases[0] is None or (only and only not in TRANSPORTS):
            raise RobustnessError(f"unknown device case {name} (cases: {', '.join(BY_NAME)}; "
                                  f"CASE/TRANSPORT for one transport)")  # fmt: skip
        for case in cases:
            assert case is not None
            wanted = [only] if only else allowed
            runs += [(case, transport) for transport in case.transports if transport in wanted]
    runs = list(dict.fromkeys(runs))
    used = list(dict.fromkeys(transport for _, transport in runs))
    baselines = [(BY_NAME["idle"], transport) for transport in used]
    return baselines + [run for run in runs if run not in baselines]


def check_devices(names: Iterable[str], timeout: float, jobs: int, *, transports: Iterable[str] = TRANSPORTS,
                  pyvmm_root: Path = ROOT, build: bool = True,
                  progress: Callable[[DeviceOutcome], None] | None = None) -> DeviceSummary:  # fmt: skip
    """Run the cases `jobs` at a time; outcomes in the order of `select`."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise RobustnessError("/dev/kvm is missing or not accessible")
    if os.geteuid() != 0:
        raise RobustnessError("the device cases need root: each run's TAP lives in a network namespace")
    runs = select(names, transports)
    if build:
        subprocess.run(BUILD, check=True)
    if not GUEST.exists():
        raise RobustnessError(f"{GUEST} is missing (tests/guests/build.sh builds it)")
    with tempfile.TemporaryDirectory(prefix="pyvmm-robustness-devices-") as directory:

        def one(run: tuple[DeviceCase, str]) -> DeviceOutcome:
            outcome = run_case(*run, Path(directory), timeout, pyvmm_root=pyvmm_root)
            if progress is not None:
                progress(outcome)
            return outcome

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return DeviceSummary(list(pool.map(one, runs)))
