"""VM-exit throughput of pyvmm against a minimal C VMM, measured in the same run.

Two guests that do nothing but exit (tests/guests/pioloop: `out` to an unclaimed
port; tests/guests/mmioloop: a store to an address with no RAM) run under pyvmm,
in this process through its Python API, and under benchmarks/exit_loop.c, which
sets up the same VM and does nothing per exit but KVM_RUN and a switch. The two
runners alternate for a few rounds, because a shared host is noisy, and the table
gives the median of each row:

    python benchmarks/exit_loop.py [--seconds 2] [--rounds 3]

It also reports the resident memory of `pyvmm run` and of the C program with a
256 MiB guest. It exits 0 whatever the numbers are (it is a benchmark, not a
test) and non-zero with one line on stderr when it cannot measure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: find pyvmm beside us
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from pyvmm.machine import RunResult

C_SOURCE = ROOT / "benchmarks" / "exit_loop.c"
C_PROGRAM = ROOT / "build" / "benchmarks" / "exit_loop_c"
GUEST_DIR = ROOT / "build" / "guests"
GUEST_BUILD_SCRIPT = ROOT / "tests" / "guests" / "build.sh"

PIO_TARGET_RATIO = 1.25
RSS_MEMORY = "256M"
WARMUP_SECONDS = 0.2  # as WARMUP_SECONDS in exit_loop.c
RSS_SETTLE_SECONDS = 1.0  # how long `pyvmm run` runs the guest before its RSS is read
START_TIMEOUT_SECONDS = 30.0  # from Machine.run() (or the process start) to the first exit


class BenchmarkError(Exception):
    """Something kept the benchmark from measuring; one line for the user."""


@dataclass(frozen=True)
class Guest:
    name: str  # the table's label
    image: str  # file name in build/guests
    exit_reason: str  # the pyvmm exit reason it produces (`ExitStats.exits` key)

    @property
    def path(self) -> Path:
        return GUEST_DIR / self.image


GUESTS = (
    Guest("pioloop", "pioloop.bin", "IO"),
    Guest("mmioloop", "mmioloop.bin", "MMIO"),
)
RUNNERS = ("C", "pyvmm")


@dataclass(frozen=True)
class Sample:
    exits: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.exits / self.seconds


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)

    def add(self, guest: Guest, runner: str, sample: Sample) -> None:
        self.samples.setdefault((guest.name, runner), []).append(sample)

    def median_rate(self, guest: Guest, runner: str) -> float:
        return statistics.median(s.rate for s in self.samples[(guest.name, runner)])

    def ratio(self, guest: Guest) -> float:
        """pyvmm's time per exit ÷ the C program's (above 1: pyvmm is slower)."""
        return self.median_rate(guest, "C") / self.median_rate(guest, "pyvmm")


# --- preparing ----------------------------------------------------------------------------


def ensure_guests() -> None:
    """Build the guest images with the project's script if any is missing."""
    if all(guest.path.is_file() for guest in GUESTS):
        return
    if not GUEST_BUILD_SCRIPT.is_file():
        raise BenchmarkError(f"{GUESTS[0].path} is missing and {GUEST_BUILD_SCRIPT} does not exist")
    done = subprocess.run(
        ["bash", str(GUEST_BUILD_SCRIPT)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    missing = [str(guest.path) for guest in GUESTS if not guest.path.is_file()]
    if done.returncode != 0 or missing:
        raise BenchmarkError(
            f"building the guests failed (status {done.returncode}, "
            f"missing: {', '.join(missing) or 'none'}): {last_line(done.stderr or done.stdout)}"
        )


def ensure_c_program() -> Path:
    """Compile exit_loop.c with `cc -O2` unless the binary is newer than the source."""
    if C_PROGRAM.is_file() and C_PROGRAM.stat().st_mtime >= C_SOURCE.stat().st_mtime:
        return C_PROGRAM
    C_PROGRAM.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    command = [compiler, "-O2", "-Wall", "-Wextra", "-o", str(C_PROGRAM), str(C_SOURCE)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BenchmarkError(f"cannot run the C compiler {compiler!r}: {exc}") from None
    if done.returncode != 0:
        raise BenchmarkError(f"compiling {C_SOURCE.name} failed: {last_line(done.stderr)}")
    return C_PROGRAM


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"


def parse_fields(text: str) -> dict[str, str]:
    """`key=value` words of the C program's output."""
    return dict(word.split("=", 1) for word in text.split() if "=" in word)


# --- the C runner -------------------------------------------------------------------------


def run_c(program: Path, guest: Guest, memory: int, seconds: float) -> tuple[Sample, int]:
    """One measurement by exit_loop_c: the sample and the program's VmRSS in KiB."""
    command = [str(program), str(guest.path), str(memory), f"{seconds}"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=seconds + START_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{program.name} on {guest.name} did not finish in time") from None
    if done.returncode != 0:
        raise BenchmarkError(f"{program.name} on {guest.name} failed: {last_line(done.stderr)}")
    fields = parse_fields(done.stdout)
    try:
        return Sample(int(fields["exits"]), float(fields["seconds"])), int(fields["rss_kib"])
    except (KeyError, ValueError):
        raise BenchmarkError(f"{program.name} printed something unexpected: {done.stdout!r}") from None


# --- the pyvmm runner ---------------------------------------------------------------------


def run_pyvmm(guest: Guest, memory: int, seconds: float) -> Sample:
    """Boot `guest` with pyvmm's Machine in a thread; count its exits over `seconds`."""
    from pyvmm import Machine, MachineConfig, VmmError
    from pyvmm.kvm import KvmError
    from pyvmm.outcome import ExitKind

    machine = Machine(MachineConfig(kernel=guest.path, memory=memory, kernel_format="flat"))
    outcome: list[RunResult] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(machine.run())
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    def ended_early() -> BenchmarkError:
        if failure:
            return BenchmarkError(f"pyvmm on {guest.name}: {failure[0]}")
        how = outcome[0].exit.describe() if outcome else "the machine thread ended"
        return BenchmarkError(f"pyvmm on {guest.name} ended before the measurement did: {how}")

    thread = threading.Thread(target=run, name=f"pyvmm-{guest.name}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while machine.stats().total_exits == 0:
            if not thread.is_alive():
                raise ended_early()
            if time.monotonic() > deadline:
                raise BenchmarkError(f"pyvmm on {guest.name}: no VM exit in {START_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.01)
        time.sleep(WARMUP_SECONDS)
        first, start = machine.stats(), time.monotonic()
        time.sleep(seconds)
        last, end = machine.stats(), time.monotonic()
        if not thread.is_alive():
            raise ended_early()
    finally:
        machine.stop()
        thread.join(START_TIMEOUT_SECONDS)
    if failure and not isinstance(failure[0], (VmmError, KvmError)):
        raise failure[0]
    if failure or (outcome and outcome[0].exit.kind is not ExitKind.STOPPED):
        raise ended_early()
    unexpected = {name for name in last.exits if name not in (guest.exit_reason, "INTR")}
    if unexpected:
        raise BenchmarkError(f"pyvmm on {guest.name}: unexpected exits {sorted(unexpected)}")
    return Sample(last.total_exits - first.total_exits, end - start)


# --- resident memory ----------------------------------------------------------------------


def status_field(pid: int, name: str) -> int:
    """A number from /proc/<pid>/status (VmRSS in KiB, Threads, ...)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == name:
                return int(value.split()[0])
    raise BenchmarkError(f"/proc/{pid}/status has no {name}")


def pyvmm_rss_kib(guest: Guest, memory: str) -> int:
    """VmRSS of `pyvmm run` once it has run `guest` for RSS_SETTLE_SECONDS."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    command = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(guest.path), "--kernel-format", "flat"]
    command += ["--memory", memory]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # The vCPU thread is the process's second thread: from then on the guest runs.
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while process.poll() is None and status_field(process.pid, "Threads") < 2:
            if time.monotonic() > deadline:
                raise BenchmarkError("`pyvmm run` did not start its vCPU in time")
            time.sleep(0.01)
        time.sleep(RSS_SETTLE_SECONDS)
        if process.poll() is not None:
            assert process.stderr is not None
            raise BenchmarkError(
                f"`pyvmm run` on {guest.name} ended early (status {process.returncode}): "
                f"{last_line(process.stderr.read().decode(errors='replace'))}"
            )
        return status_field(process.pid, "VmRSS")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


# --- the run and its report ---------------------------------------------------------------


def measure(program: Path, memory: int, seconds: float, rounds: int, log: Callable[[str], None]) -> Results:
    """C, pyvmm, C, pyvmm ... for each guest, `rounds` times."""
    results = Results()
    for round_number in range(1, rounds + 1):
        for guest in GUESTS:
            for runner in RUNNERS:
                if runner == "C":
                    sample, _ = run_c(program, guest, memory, seconds)
                else:
                    sample = run_pyvmm(guest, memory, seconds)
                results.add(guest, runner, sample)
                log(
                    f"round {round_number}/{rounds}  {guest.name:<9} {runner:<6} "
                    f"{sample.exits:>9} exits in {sample.seconds:.3f} s  ({1e6 / sample.rate:.2f} µs/exit)"
                )
    return results


def table(results: Results) -> list[str]:
    rows = [("guest", "runner", "exits/s", "µs/exit", "ratio vs C")]
    for guest in GUESTS:
        for runner in RUNNERS:
            rate = results.median_rate(guest, runner)
            ratio = f"{results.ratio(guest):.2f}" if runner != "C" else "-"
            rows.append((guest.name, runner, f"{rate:,.0f}", f"{1e6 / rate:.2f}", ratio))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        left = [f"{row[0]:<{widths[0]}}", f"{row[1]:<{widths[1]}}"]
        right = [f"{cell:>{width}}" for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(left + right))
    lines.insert(1, "-" * len(lines[0]))
    return lines


def report(results: Results, rss: tuple[int, int] | None, seconds: float, rounds: int, memory: str) -> str:
    host = f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"
    lines = [
        f"VM exits: median of {rounds} alternating round(s) of {seconds:g} s each, {memory} guests ({host})",
        "",
        *table(results),
        "",
    ]
    pio = GUESTS[0]
    ratio = results.ratio(pio)
    verdict = "met" if ratio <= PIO_TARGET_RATIO else "NOT met"
    lines.append(f"PIO target ratio <= {PIO_TARGET_RATIO:.2f}: {verdict} ({ratio:.2f})")
    if rss is not None:
        pyvmm_kib, c_kib = rss
        width = len(f"{max(rss):,}")
        lines += [
            "",
            f"VMM resident memory (VmRSS), {RSS_MEMORY} guest running {pio.name}:",
            f"  pyvmm run  {pyvmm_kib:>{width},} KiB  ({pyvmm_kib / 1024:.1f} MiB)",
            f"  C          {c_kib:>{width},} KiB  ({c_kib / 1024:.1f} MiB)",
        ]
    return "\n".join(lines)


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=positive(float), default=2.0, help="length of one measurement (2)")
    parser.add_argument("--rounds", type=positive(int), default=3, help="alternating rounds per guest (3)")
    parser.add_argument("--memory", default="256M", help="guest RAM for the exit measurements (256M)")
    parser.add_argument("--no-rss", action="store_true", help="skip the resident-memory measurement")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every measurement as it is made")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        if args.verbose:
            print(line, file=sys.stderr, flush=True)

    try:
        from pyvmm.config import parse_size

        memory = parse_size(args.memory)
        ensure_guests()
        program = ensure_c_program()
        results = measure(program, memory, args.seconds, int(args.rounds), log)
        rss = None
        if not args.no_rss:
            _, c_kib = run_c(program, GUESTS[0], parse_size(RSS_MEMORY), RSS_SETTLE_SECONDS)
            rss = (pyvmm_rss_kib(GUESTS[0], RSS_MEMORY), c_kib)
    except KeyboardInterrupt:
        print("exit_loop: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure becomes one line
        text = str(exc) if isinstance(exc, BenchmarkError) else f"{type(exc).__name__}: {exc}"
        print(f"exit_loop: error: {text}", file=sys.stderr)
        return 1
    print(report(results, rss, args.seconds, int(args.rounds), args.memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
