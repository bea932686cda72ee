"""virtio-blk in a Linux guest: pyvmm beside the host's own limit and QEMU, in one run.

On a raw image of seeded random data (256 MiB by default, `--size`), the guest
(pyvmm's default kernel and busybox initramfs; the image as its first disk,
virtio-pci or `--transport mmio`) runs, one after the other:

- seqread: 1 MiB O_DIRECT reads over the whole disk (`dd if=/dev/vda bs=1M
  iflag=direct`);
- randread: `--random-reads` 4 KiB O_DIRECT reads at random offsets, one at a time;
- seqwrite: 1 MiB O_DIRECT writes over the whole disk (`dd of=/dev/vda bs=1M
  oflag=direct`), of a seeded random stream.

All three are `diskio` (benchmarks/guest_tools/diskio.c, static), handed to the
guest as a second, read-only disk that it copies to /tmp: Debian's busybox dd prints
no rate, and timing a dd from outside would count its exec, slow where guest kernel
code is. diskio times its transfers itself and checksums what it read: the random
reads' sum is recomputed here from the image, the sequential read's is the one the
same program gives on the host, and after the write the image must hold exactly the
stream (benchmarks/guest_tools/pattern.c prints it).

Beside them, in the same run:
- the host on the same file with the same program: O_DIRECT, the storage's own
  limit; and busybox dd's 1 MiB reads through the page cache (pyvmm opens the image
  buffered: what its device reads from once the file is cached);
- QEMU with the same kernel, initramfs, command line and images (`-device
  virtio-blk-pci`, raw files, cache=writeback as pyvmm): `-accel kvm`, whose failure
  line is printed where it cannot boot (on kvm_pvm: "KVM internal error"), and
  `-accel tcg` (the CPU emulated: its rates say what TCG costs, not virtio).

For pyvmm each phase also gives, from samples taken as the phase's marker lines
reach the console (benchmarks/guest_run.py): pyvmm's own CPU seconds per GiB moved
(its threads' user + system time, the vCPU threads' KVM_RUN time left out), the whole
process's CPU per GiB (for QEMU too), the I/O thread's CPU per GiB, and the share of
the transfer's time (diskio's own seconds) the I/O thread spent inside device
callbacks. Target: below 50% while the guest goes flat out, i.e. the VMM is not what
limits the guest.

    python benchmarks/virtio_blk.py [--size 256] [--random-reads 2000] [--transport pci|mmio]
                                    [--vmms pyvmm,qemu-kvm,qemu-tcg] [--quick] [--dir DIR] [-v]

`--quick`: 8 MiB and 200 random reads (a check that everything runs). Exits 0
whatever the numbers are; 1 with one line on stderr when it cannot measure.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, Path(__file__).resolve().parent):  # run as a script: pyvmm and guest_run beside us
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from guest_programs import TOOLS_OUT, ToolBuildError, build_tools, tool_disk, unpack_command  # noqa: E402
from guest_run import (  # noqa: E402
    BenchmarkError,
    GuestRun,
    Phase,
    per_gib,
    qemu_command,
    run_pyvmm,
    run_qemu,
    share,
    table,
)

from pyvmm.device_config import DiskConfig  # noqa: E402
from pyvmm.images.commands import build_with_progress  # noqa: E402
from pyvmm.images.initramfs import run_parameter  # noqa: E402

MiB = 1 << 20
BLOCK = 4096
SEED = 0x9E3779B97F4A7C15  # diskio's xorshift64 seed
BUSY_TARGET = 0.50
DISKIO = TOOLS_OUT / "diskio"
PATTERN = TOOLS_OUT / "pattern"
GUEST_TIMEOUT = 3600.0  # one guest run: a boot of minutes on a software KVM, then the I/O
FNV_OFFSET, FNV_PRIME, MASK64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
_DISKIO_LINE = re.compile(r"diskio: (\w+) (\d+) bytes in ([\d.]+) s, (\d+) requests, sum ([0-9a-f]{16})")
PHASES = ("seqread", "randread", "seqwrite")


def write_image(path: Path, size: int) -> None:
    """A raw image of seeded random data: the same bytes every run."""
    rng = random.Random(SEED)
    with path.open("wb") as image:
        for _ in range(size // MiB):
            image.write(rng.randbytes(MiB))


def expected_randread_sum(image: Path, count: int) -> str:
    """diskio.c's randread checksum, recomputed: the same xorshift64 offsets, FNV-1a over
    little-endian 64-bit words."""
    blocks = image.stat().st_size // BLOCK
    state, checksum = SEED, FNV_OFFSET
    with image.open("rb") as data:
        for _ in range(count):
            state ^= (state << 13) & MASK64
            state ^= state >> 7
            state ^= (state << 17) & MASK64
            data.seek((state % blocks) * BLOCK)
            for (word,) in struct.iter_unpack("<Q", data.read(BLOCK)):
                checksum = ((checksum ^ word) * FNV_PRIME) & MASK64
    return f"{checksum:016x}"


def guest_script(size: int, reads: int, tool_bytes: int) -> str:
    run = {
        "seqread": f"seqread /dev/vda {size}",
        "randread": f"randread /dev/vda {reads} {SEED}",
        "seqwrite": f"seqwrite /dev/vda {size} {SEED}",
    }
    steps = [unpack_command("/dev/vdb", "diskio", tool_bytes)]
    steps += [
        f"echo bench-begin {phase}; /tmp/diskio {run[phase]}; echo bench-end {phase}" for phase in PHASES
    ]
    return "; ".join(steps)


@dataclass
class Row:
    label: str
    phase: str
    moved: int = 0  # bytes
    rate: str = "failed"  # as the tool printed it, in MiB/s or IOPS
    tool_seconds: float = 0.0  # the tool's own timing of its transfer
    phase_data: Phase | None = None
    note: str = ""

    def busy(self) -> float | None:
        """The I/O thread's wall time in callbacks over the transfer's own duration: the
        phase also holds the guest's exec of the tool, when the device is idle."""
        busy = self.phase_data.delta("io_busy") if self.phase_data else None
        return None if busy is None or self.tool_seconds <= 0 else busy / self.tool_seconds

    def cells(self) -> list[str]:
        p = self.phase_data
        vmm = per_gib(p.delta("vmm_cpu"), self.moved) if p else "-"
        process = per_gib(p.delta("process_cpu"), self.moved) if p else "-"
        io_cpu = per_gib(p.delta("io_cpu"), self.moved) if p else "-"
        busy = self.busy()
        verdict = "-" if busy is None else ("met" if busy < BUSY_TARGET else "MISSED")
        seconds = f"{self.tool_seconds:.1f}" if self.moved else "-"
        busy_cells = [share(busy), verdict]
        return [self.label, self.phase, self.rate, seconds, vmm, process, io_cpu, *busy_cells, self.note]


def measured(label: str, phase: str, text: str, expected: dict[str, str], data: Phase | None = None) -> Row:
    """A row from diskio's line; `expected`: the right checksum per phase."""
    match = _DISKIO_LINE.search(text)
    if not match or match[1] != phase:
        return Row(label, phase, note=text.strip()[-160:] or "diskio printed nothing")
    moved, seconds, requests, checksum = int(match[2]), float(match[3]), int(match[4]), match[5]
    wrong = phase in expected and checksum != expected[phase]
    note = f"WRONG DATA: sum {checksum}, expected {expected[phase]}" if wrong else ""
    if seconds <= 0:
        rate = "too fast to time"
    elif phase == "randread":
        rate = f"{requests / seconds:,.0f} IOPS"
    else:
        rate = f"{moved / MiB / seconds:.1f} MiB/s"
    return Row(label, phase, moved, rate, seconds, data, note)


def guest_rows(run: GuestRun, expected: dict[str, str]) -> list[Row]:
    return [measured(run.label, phase, run.phases[phase].output, expected, run.phases[phase])
            for phase in PHASES if phase in run.phases]  # fmt: skip


def host_rows(image: Path, size: int, reads: int, expected: dict[str, str]) -> list[Row]:
    """diskio on the host on the same file, then busybox dd through the page cache."""
    runs = [
        ("seqread", [str(DISKIO), "seqread", str(image), str(size)]),
        ("randread", [str(DISKIO), "randread", str(image), str(reads), str(SEED)]),
        ("seqwrite", [str(DISKIO), "seqwrite", str(image), str(size), str(SEED)]),
    ]
    rows = []
    for phase, command in runs:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        rows.append(measured("host, O_DIRECT", phase, result.stdout + result.stderr, expected))
    busybox = shutil.which("busybox") or "/bin/busybox"
    read = [busybox, "dd", f"if={image}", "of=/dev/null", "bs=1M", f"count={size // MiB}"]
    subprocess.run(read, capture_output=True, check=False)  # into the page cache
    started = time.perf_counter()
    result = subprocess.run(read, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        rows.append(Row("host, page cache (dd)", "seqread", note=result.stderr.strip()[-160:]))
    else:
        rate = f"{size / MiB / seconds:.1f} MiB/s"
        rows.append(Row("host, page cache (dd)", "seqread", size, rate, seconds))
    return rows


def sequential_sum(image: Path, size: int) -> str:
    """diskio's seqread checksum of the image, from the program itself on the host."""
    command = [str(DISKIO), "seqread", str(image), str(size)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    match = _DISKIO_LINE.search(result.stdout)
    if result.returncode != 0 or not match:
        raise BenchmarkError(f"diskio cannot read {image} on the host: {result.stderr.strip()[-200:]}")
    return match[5]


def check_written(image: Path, size: int) -> str:
    """'' when the image holds exactly the stream diskio seqwrite writes, else why not."""
    stream = subprocess.Popen([str(PATTERN), str(size), str(SEED)], stdout=subprocess.PIPE)
    assert stream.stdout is not None
    problem = ""
    with image.open("rb") as data:
        for mib in range(size // MiB):
            if data.read(MiB) != stream.stdout.read(MiB):
                problem = (
                    f"the image does not hold the stream the guest wrote (first difference in MiB {mib})"
                )
                break
    stream.kill()
    stream.wait()
    stream.stdout.close()
    return problem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image size in MiB (default 256)")
    parser.add_argument("--random-reads", type=int, default=2000, help="4 KiB random reads (default 2000)")
    parser.add_argument("--transport", choices=("pci", "mmio"), default="pci", help="pyvmm's transport")
    parser.add_argument("--vmms", default="pyvmm,qemu-kvm,qemu-tcg",
                        help="comma-separated: pyvmm, qemu-kvm, qemu-tcg")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="8 MiB and 200 random reads")
    parser.add_argument("--dir", type=Path, default=None, help="where the images go (default: a temp dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="the guests' consoles on stderr")
    args = parser.parse_args()
    if args.quick:
        args.size, args.random_reads = 8, 200
    if args.size < 1 or args.random_reads < 1:
        raise BenchmarkError("--size and --random-reads must be at least 1")
    vmms = [name for name in args.vmms.split(",") if name]
    if not set(vmms) <= {"pyvmm", "qemu-kvm", "qemu-tcg"}:
        raise BenchmarkError(f"--vmms takes pyvmm, qemu-kvm and qemu-tcg, not {args.vmms!r}")
    if any(name.startswith("qemu") for name in vmms) and shutil.which("qemu-system-x86_64") is None:
        raise BenchmarkError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    size = args.size * MiB
    build_tools()
    images = build_with_progress("default")
    kernel, initrd = images.path("bzImage"), images.path("initramfs")
    echo = sys.stderr.buffer.write if args.verbose else None

    with tempfile.TemporaryDirectory(prefix="pyvmm-blk-bench-", dir=args.dir) as work:
        pristine, image, tools = Path(work, "pristine.img"), Path(work, "disk.img"), Path(work, "tools.img")
        write_image(pristine, size)
        tool_bytes = tool_disk(tools, "diskio")
        expected = {"randread": expected_randread_sum(pristine, args.random_reads),
                    "seqread": sequential_sum(pristine, size)}  # fmt: skip
        cmdline = f"console=ttyS0 {run_parameter(guest_script(size, args.random_reads, tool_bytes))}"
        rows: list[Row] = []
        failures: list[str] = []

        def fresh() -> Path:
            shutil.copyfile(pristine, image)
            return image

        for vmm in vmms:
            print(f"  {vmm}: booting ...", file=sys.stderr, flush=True)
            if vmm == "pyvmm":
                label = f"pyvmm, virtio-{args.transport}"
                run = run_pyvmm(label, kernel, initrd, cmdline, transport=args.transport,
                                disks=(DiskConfig(str(fresh())), DiskConfig(str(tools), readonly=True)),
                                timeout=GUEST_TIMEOUT, echo=echo)  # fmt: skip
            else:
                accel = vmm.split("-")[1]
                label = f"QEMU -accel {accel}, virtio-blk-pci"
                devices = [
                    "-drive", f"file={fresh()},if=none,id=d0,format=raw,cache=writeback",
                    "-device", "virtio-blk-pci,drive=d0",
                    "-drive", f"file={tools},if=none,id=d1,format=raw,readonly=on",
                    "-device", "virtio-blk-pci,drive=d1",
                ]  # fmt: skip
                run = run_qemu(label, qemu_command(accel, kernel, initrd, cmdline, devices),
                               timeout=GUEST_TIMEOUT, echo=echo)  # fmt: skip
            found = guest_rows(run, expected) or [Row(label, "-", note=run.failure or "no phase ran")]
            rows += found
            if "seqwrite" in run.phases:
                problem = check_written(image, size)
                if problem:
                    failures.append(f"{label}: {problem}")
            if run.failure or len(found) < len(PHASES) or any(row.note for row in found):
                failures.append(f"{label}: {run.failure or 'the guest did not finish its phases'}")
            print(f"  {vmm}: {run.failure or 'done'}", file=sys.stderr, flush=True)
        rows += host_rows(fresh(), size, args.random_reads, expected)

    header = ["VMM / reference", "phase", "rate", "tool s", "VMM CPU s/GiB",
              "process CPU s/GiB", "I/O thread CPU s/GiB", "I/O thread busy", "< 50%", "note"]  # fmt: skip
    print(f"virtio-blk: {args.size} MiB raw image, 1 MiB sequential O_DIRECT reads and writes,"
          f" {args.random_reads} random 4 KiB O_DIRECT reads at queue depth 1"
          f" ({os.uname().release}, {os.cpu_count()} host CPUs)")  # fmt: skip
    print(table([row.cells() for row in rows], header))
    for line in failures:
        print(f"  {line}")
    busy = [b for row in rows if (b := row.busy()) is not None]
    if busy:
        verdict = "met" if max(busy) < BUSY_TARGET else "missed"
        print(f"I/O thread busy < {100 * BUSY_TARGET:.0f}% of the transfer's time: {verdict}"
              f" (worst {100 * max(busy):.1f}%)")  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchmarkError, ToolBuildError) as exc:
        print(f"virtio_blk.py: {exc}", file=sys.stderr)
        sys.exit(1)
