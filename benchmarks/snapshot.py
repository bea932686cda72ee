"""Snapshot and restore of an idle Linux guest against a fresh boot, in the same run.

For the default guest booted from its root disk (a fresh copy of rootfs.ext4 as the
first virtio-blk disk, `root=/dev/vda rw`, as `benchmarks/boot.py` boots it), one
boot per RAM size (`--sizes`), in this process:

- boot from scratch: `Machine(config).start()` to the shell answering a command
  (`echo B$((6*7))`: its output line, `B42`, is not in the echoed input);
- snapshot: after `--idle` seconds of an idle shell, `Machine.snapshot()` (ms), the
  file's apparent and allocated size and the bytes written (header, parts, non-zero
  pages: the guest's touched memory);
- `Machine.restore()` (the embedding program's case, pyvmm already imported): the call
  alone and to the next console line (the command typed with `send_input`, timed to
  its output), median of `--rounds`, with pyvmm's CPU time (`time.process_time`);
- `pyvmm run --incoming file:PATH` as a whole process: launch to the command's output
  line on stdout (the command is written on its stdin pipe at launch), median of
  `--rounds`.

Then, for the smallest size: the ioctls of one `Machine.restore()` by name (counted
by wrapping `pyvmm.kvm.handle.checked_ioctl`), `strace -c -f` of one whole-process
restore when strace is installed, and the top entries of a cProfile of one
`Machine.restore()`: where the time goes.

Targets (issue 17): `Machine.restore()` of 256 MiB <= 10 ms, the whole process
<= 100 ms, neither growing with RAM (the largest size within 1.5x of the smallest),
file allocated size <= touched memory + 1 MiB.

    python benchmarks/snapshot.py [--sizes 256M,2G] [--rounds 5] [--idle 5] [--profile-top 15]

Exits 0 whatever the numbers are; 1 with one line on stderr when it cannot measure.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import io
import os
import pstats
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: find pyvmm beside us
    sys.path.insert(0, str(ROOT))

import pyvmm.kvm.handle as kvm_handle  # noqa: E402
from pyvmm.config import MachineConfig, check_memory  # noqa: E402
from pyvmm.device_config import DiskConfig  # noqa: E402
from pyvmm.errors import VmmError  # noqa: E402
from pyvmm.images.commands import build_with_progress  # noqa: E402
from pyvmm.images.rootfs import ROOT_CMDLINE  # noqa: E402
from pyvmm.kvm.ioctls import NAMES  # noqa: E402
from pyvmm.machine.machine import Machine  # noqa: E402
from pyvmm.snapshot.file import SnapshotInfo  # noqa: E402

MiB = 1 << 20
READY = b"pyvmm-init: ready"
CMDLINE = f"console=ttyS0 {ROOT_CMDLINE}"
BOOT_SECONDS = 900.0  # one boot; a minute or more on a software KVM
LINE_SECONDS = 60.0  # a restored guest answering one command
RESTORE_TARGET_MS = 10.0  # Machine.restore() of 256 MiB
PROCESS_TARGET_MS = 100.0  # pyvmm run --incoming to the next console line
GROWTH_TARGET = 1.5  # largest RAM within this factor of the smallest
PYVMM = [sys.executable, "-m", "pyvmm"]


class BenchmarkError(Exception):
    """Something kept the benchmark from measuring; one line for the user."""


def command(serial: int) -> tuple[bytes, bytes]:
    """A shell command and the output line it prints, which its echo does not hold."""
    return f"echo R$((100000+{serial}))\n".encode(), f"R{100000 + serial}".encode()


def wait_for(seen: Callable[[], bool], seconds: float, what: str, machine: Machine) -> float:
    """Poll until `seen()`; the time it was first seen (perf_counter)."""
    deadline = time.perf_counter() + seconds
    while not seen():
        if time.perf_counter() > deadline or machine.wait(0) is not None:
            tail = machine.console_output[-300:].decode("utf-8", "replace").strip().splitlines()
            raise BenchmarkError(f"no {what} after {seconds:.0f} s: {tail[-1] if tail else 'no output'}")
        time.sleep(0.0002)
    return time.perf_counter()


def answer_and_close(machine: Machine, serial: int) -> None:
    """Check a restored guest answers, then stop it."""
    line, answer = command(serial)
    try:
        machine.send_input(line)
        wait_for(lambda: answer in machine.console_output, LINE_SECONDS, "answer", machine)
    finally:
        close(machine)


def close(machine: Machine) -> None:
    if machine.wait(0) is None:
        machine.stop()
        machine.wait(30)


@dataclass(frozen=True)
class Row:
    label: str
    memory: int
    boot_s: float
    snapshot_ms: float
    size: int
    allocated: int
    written: int
    restore_ms: float  # Machine.restore() alone, median
    restore_line_ms: float  # Machine.restore() to the next console line, median
    restore_cpu_ms: float  # this process's CPU time for restore + line, median
    process_ms: float | None  # pyvmm run --incoming, launch to the line, median (None: failed)
    process_failure: str


def boot_and_save(config: MachineConfig, path: Path, idle: float) -> tuple[float, float, SnapshotInfo]:
    """Boot from scratch to the shell's answer (seconds from `Machine(config)`), leave
    the guest idle for `idle` seconds, save it: (boot s, snapshot ms, what was written)."""
    started = time.perf_counter()
    machine = Machine(config)
    try:
        machine.start()
        wait_for(lambda: READY in machine.console_output, BOOT_SECONDS, "init marker", machine)
        line, answer = command(0)
        machine.send_input(line)
        answered = wait_for(lambda: answer in machine.console_output, LINE_SECONDS, "shell", machine)
        time.sleep(idle)
        saving = time.perf_counter()
        info = machine.snapshot(path)
        saved = time.perf_counter()
    finally:
        close(machine)
    return answered - started, 1000 * (saved - saving), info


def restore_once(path: Path, config: MachineConfig, serial: int) -> tuple[float, float, float]:
    """(restore ms, to the line ms, CPU ms) of one in-process restore."""
    line, answer = command(serial)
    cpu = time.process_time()
    started = time.perf_counter()
    machine = Machine.restore(path, config)
    try:
        restored = time.perf_counter()
        machine.send_input(line)
        answered = wait_for(lambda: answer in machine.console_output, LINE_SECONDS, "answer", machine)
        used = time.process_time() - cpu
    finally:
        close(machine)
    return 1000 * (restored - started), 1000 * (answered - started), 1000 * used


def process_command(config: MachineConfig, path: Path) -> list[str]:
    assert config.disks
    return [*PYVMM, "run", "--kernel", str(config.kernel), "--disk", config.disks[0].path,
            "--memory", str(config.memory), "--cmdline", str(config.cmdline),
            "--incoming", f"file:{path}"]  # fmt: skip


def process_once(argv: list[str], serial: int) -> float:
    """ms from launching `argv` to the command's answer on its stdout."""
    line, answer = command(serial)
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=ROOT, start_new_session=True)  # fmt: skip
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    try:
        process.stdin.write(line)  # a pipe's input is held until the console exists
        process.stdin.flush()
        output = bytearray()
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while answer not in output:
                if time.perf_counter() - started > LINE_SECONDS:
                    raise BenchmarkError(f"pyvmm run --incoming: no answer in {LINE_SECONDS:.0f} s")
                if not selector.select(0.5):
                    continue
                data = os.read(process.stdout.fileno(), 65536)
                if not data:
                    error = process.stderr.read().decode(errors="replace").strip().splitlines()
                    raise BenchmarkError(f"pyvmm run --incoming ended: {error[-1] if error else 'no output'}")
                output += data
        return 1000 * (time.perf_counter() - started)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its whole group: a helper keeps the disk's lock
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()


@contextmanager
def counted_ioctls() -> Iterator[Counter[str]]:
    """Every `checked_ioctl` while inside, by its name in linux/kvm.h."""
    counts: Counter[str] = Counter()
    original = kvm_handle.checked_ioctl

    def counting(fd: int, request: int, arg: int | ctypes._CData = 0, *, context: str = "") -> int:
        counts[NAMES.get(request, hex(request))] += 1
        return original(fd, request, arg, context=context)

    kvm_handle.checked_ioctl = counting
    try:
        yield counts
    finally:
        kvm_handle.checked_ioctl = original


def strace_counts(argv: list[str], serial: int, directory: Path) -> str:
    """`strace -c -f` of one whole-process restore: the syscall summary's top lines."""
    if shutil.which("strace") is None:
        return "strace is not installed"
    out = directory / "strace.txt"
    process_once(["strace", "-c", "-f", "-o", str(out), *argv], serial)
    time.sleep(0.5)  # strace writes its summary as the traced process dies
    lines = out.read_text().splitlines() if out.exists() else []
    return "\n".join(lines[:14]) if lines else "strace wrote no summary"


def measure(
    kernel: Path, rootfs: Path, size: str, rounds: int, idle: float, work: Path
) -> tuple[Row, MachineConfig, Path]:
    disk = work / f"rootfs-{size}.ext4"
    shutil.copyfile(rootfs, disk)  # a fresh copy: the cached image stays as built
    config = MachineConfig(kernel=kernel, cmdline=CMDLINE, memory=size, disks=(DiskConfig(str(disk)),))
    path = work / f"guest-{size}.snap"
    print(f"  {size}: booting ...", file=sys.stderr, flush=True)
    boot_s, snapshot_ms, info = boot_and_save(config, path, idle)
    print(f"  {size}: booted in {boot_s:.1f} s, saved; restoring ...", file=sys.stderr, flush=True)
    restores = [restore_once(path, config, 10 + i) for i in range(rounds)]
    argv = process_command(config, path)
    try:
        process_ms: float | None = statistics.median([process_once(argv, 100 + i) for i in range(rounds)])
        failure = ""
    except BenchmarkError as exc:  # shown in the table's notes; the other columns stand
        process_ms, failure = None, str(exc)
    row = Row(size, check_memory(size), boot_s, snapshot_ms, info.size, info.allocated, info.written,
              statistics.median(r[0] for r in restores), statistics.median(r[1] for r in restores),
              statistics.median(r[2] for r in restores), process_ms, failure)  # fmt: skip
    return row, config, path


def profile(path: Path, config: MachineConfig, top: int) -> str:
    """The top entries (by cumulative time) of a cProfile of one `Machine.restore()`."""
    profiler = cProfile.Profile()
    profiler.enable()
    machine = Machine.restore(path, config)
    profiler.disable()
    answer_and_close(machine, 902)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    text = out.getvalue()
    root = str(ROOT) + "/"
    return "\n".join(line.replace(root, "") for line in text.splitlines() if line.strip())


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in [header, *rows])  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256M,2G", help="comma-separated guest RAM sizes")
    parser.add_argument("--rounds", type=int, default=5, help="restores of each kind per size (median)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds the shell idles before the snapshot")
    parser.add_argument("--profile-top", type=int, default=15, help="cProfile entries to print")
    args = parser.parse_args()
    if args.rounds < 1:
        raise BenchmarkError("--rounds takes at least 1")
    sizes = [size for size in args.sizes.split(",") if size]
    try:
        for size in sizes:
            check_memory(size)
    except VmmError as exc:
        raise BenchmarkError(f"--sizes: {exc}") from None
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise BenchmarkError("no usable /dev/kvm")
    images = build_with_progress("default")
    kernel, rootfs = images.path("bzImage"), images.path("rootfs")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="pyvmm-snapshot-bench-") as work_dir:
        work = Path(work_dir)
        first: tuple[MachineConfig, Path] | None = None
        try:
            for size in sizes:
                row, config, path = measure(kernel, rootfs, size, args.rounds, args.idle, work)
                rows.append(row)
                first = first or (config, path)
            assert first is not None
            config, path = first
            with counted_ioctls() as restore_counts:
                machine = Machine.restore(path, config)
            answer_and_close(machine, 900)
            strace = strace_counts(process_command(config, path), 901, work)
            profiled = profile(path, config, args.profile_top)
        except VmmError as exc:
            raise BenchmarkError(f"{type(exc).__name__}: {exc}") from None

    smallest, largest = rows[0], rows[-1]
    header = ["RAM", "boot s", "snapshot ms", "file MiB (apparent/alloc)", "touched MiB",
              "restore() ms", "restore() to line ms", "restore() CPU ms", "run --incoming to line ms",
              "targets"]  # fmt: skip
    cells = []
    for row in rows:
        touched = row.written / MiB
        met = [row.allocated <= row.written + MiB]
        if row is smallest:
            met += [
                row.restore_ms <= RESTORE_TARGET_MS,
                row.process_ms is not None and row.process_ms <= PROCESS_TARGET_MS,
            ]
        else:
            met += [row.restore_ms <= GROWTH_TARGET * smallest.restore_ms,
                    None not in (row.process_ms, smallest.process_ms)
                    and row.process_ms <= GROWTH_TARGET * smallest.process_ms]  # type: ignore[operator]  # fmt: skip
        cells.append([row.label, f"{row.boot_s:.1f}", f"{row.snapshot_ms:.0f}",
                      f"{row.size / MiB:.0f} / {row.allocated / MiB:.1f}", f"{touched:.1f}",
                      f"{row.restore_ms:.1f}", f"{row.restore_line_ms:.1f}", f"{row.restore_cpu_ms:.1f}",
                      f"{row.process_ms:.0f}" if row.process_ms is not None else "failed",
                      "yes" if all(met) else "no"])  # fmt: skip
    print(f"Idle default guest (disk root, 1 vCPU), median of {args.rounds} restores of each kind"
          f" ({os.uname().release}, {os.cpu_count()} host CPUs)")  # fmt: skip
    print(table(cells, header))
    for row in rows:
        if row.process_failure:
            print(f"  {row.label}: {row.process_failure}")
    print(f"targets: allocated <= touched + 1 MiB; {smallest.label}: restore() <= {RESTORE_TARGET_MS:.0f} ms,"
          f" run --incoming <= {PROCESS_TARGET_MS:.0f} ms; larger sizes within {GROWTH_TARGET}x of"
          f" {smallest.label}")  # fmt: skip
    print(f"  {smallest.label}: restore() {'met' if smallest.restore_ms <= RESTORE_TARGET_MS else 'missed'}")
    if largest is not smallest:
        print(
            f"  {largest.label} / {smallest.label}: restore() x{largest.restore_ms / smallest.restore_ms:.2f}"
        )
    print()
    print(f"KVM ioctls of one Machine.restore() ({smallest.label}): {sum(restore_counts.values())}")
    for name, count in restore_counts.most_common():
        print(f"  {count:5d}  {name}")
    print()
    print(f"strace -c -f of one pyvmm run --incoming ({smallest.label}):")
    print(strace)
    print()
    print(f"cProfile of one Machine.restore() ({smallest.label}), top {args.profile_top} by cumulative time:")
    print(profiled)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"snapshot.py: {exc}", file=sys.stderr)
        sys.exit(1)
