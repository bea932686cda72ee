"""Boot times of pyvmm against QEMU, measured side by side in the same run.

For the default guest (the kernel built from Debian's linux-source) and Debian's
stock cloud kernel, with the busybox initramfs of `pyvmm images build`, each row
times one boot from launch to the init's marker line ("pyvmm-init: ready") and to
the end of the process (init runs `true` and powers off):

- pyvmm, bzImage decompressed on the host (the default);
- pyvmm, bzImage decompressed by the kernel (`--kernel-decompress guest`);
- pyvmm, the vmlinux;
- QEMU (`qemu-system-x86_64 -enable-kvm -M pc`, its default CPU model: `-cpu host`
  stops at once on kvm_pvm, "failed to set MSR 0x10a") with the same kernel, initrd
  and command line; where QEMU cannot boot, the row shows its failure line.

The default guest also boots from its root disk (rootfs.ext4, `root=/dev/vda rw`,
no initrd), as `pyvmm run` boots it without --kernel: pyvmm with the disk as its
first virtio-blk disk (`--disk`, virtio-pci) and QEMU with the same image as
virtio-blk-pci (`-drive if=virtio`), side by side.
Each boot gets a fresh copy of the image, so every boot starts from the same disk
and the cached one stays as built. This is the comparison the disk root exists for:
the kernel copies an initramfs whole with its own code (about 25 s of a 54 s boot
where that code is emulated), a disk root reads only what init touches.

pyvmm's rows also give the share of the vCPU's wall time pyvmm spent handling exits
(its `--stats`: user CPU time of the vCPU thread outside the guest) and how many
instructions its emulator ran. Last, the launch-to-exit time of a trivial Multiboot
guest (tests/guests/mbinfo, which ends through isa-debug-exit) under pyvmm and under
`qemu-system-x86_64 -M microvm` (same memory size), the median of several runs; pyvmm
runs as its installed `pyvmm` command, with compiled bytecode.

The stock kernel's rows boot it with `STOCK_SPEEDUPS` (pyvmm.images.stock: skip its
init-time self-checks, which take more than half an hour on a software KVM) in every
VMM alike; `--no-stock-speedups` boots it as it is.

    python benchmarks/boot.py [--flavours default,stock] [--roots initramfs,disk] [--cpus 1]
                              [--loaders host,guest,vmlinux] [--trivial-runs 10]
                              [--no-stock-speedups]

`--loaders` picks pyvmm's initramfs rows (host decompression, guest decompression,
the vmlinux); `--loaders host --roots initramfs,disk` is the comparison of the two
roots alone, four boots per flavour.

It exits 0 whatever the numbers are and non-zero with one line on stderr when it
cannot measure. Targets: exit handling <= 10% of a boot's wall time; the trivial
guest's launch-to-exit no slower than QEMU's.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: find pyvmm beside us
    sys.path.insert(0, str(ROOT))

from pyvmm.images import artifacts  # noqa: E402
from pyvmm.images.commands import build_with_progress  # noqa: E402
from pyvmm.images.rootfs import ROOT_CMDLINE  # noqa: E402
from pyvmm.images.stock import STOCK_SPEEDUPS  # noqa: E402

MARKER = b"pyvmm-init: ready"
CMDLINE = "console=ttyS0 pyvmm.run=true"
MEMORY = "256M"
BOOT_TIMEOUT = 1800.0  # one pyvmm boot; minutes on a software KVM
QEMU_TIMEOUT = 600.0
QEMU_STUCK_SECONDS = 30.0  # QEMU printed an error and went quiet: it is paused for good
EXIT_SHARE_TARGET = 0.10
TRIVIAL_GUEST = ROOT / "build" / "guests" / "mbinfo.elf"
TRIVIAL_CMDLINE = "exit=3"
TRIVIAL_STATUS = (3 << 1) | 1  # isa-debug-exit of 3, in both VMMs
PYVMM = [sys.executable, "-m", "pyvmm"]
PYVMM_SCRIPT = Path(sys.executable).with_name("pyvmm")  # what a user types, when installed


class BenchmarkError(Exception):
    """Something kept the benchmark from measuring; one line for the user."""


@dataclass
class Boot:
    label: str
    to_marker: float | None  # seconds from launch to the marker line
    to_exit: float | None  # seconds from launch to the end of the process
    status: int | None
    failure: str = ""  # the first error line when it did not boot
    exit_share: float | None = None
    emulated: int | None = None

    def cells(self) -> list[str]:
        def seconds(value: float | None) -> str:
            return f"{value:.1f}" if value is not None else "-"

        share = f"{100 * self.exit_share:.1f}%" if self.exit_share is not None else "-"
        emulated = f"{self.emulated:,}" if self.emulated is not None else "-"
        status = str(self.status) if self.status is not None else "-"
        return [self.label, seconds(self.to_marker), seconds(self.to_exit), status, share, emulated]


def watch(
    command: list[str], timeout: float, *, stuck_on: bytes | None = None
) -> tuple[bytes, float | None, float, int | None]:
    """Run `command` with stdout and stderr read as they come; returns the output, the
    time the marker appeared, the time it ended (or was killed) and its status (None
    if killed). With `stuck_on`, a process that printed that and then nothing for
    QEMU_STUCK_SECONDS is killed."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)  # fmt: skip
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    output = bytearray()
    marker_at: float | None = None
    last_output = started
    killed = False
    while True:
        now = time.monotonic()
        stuck = stuck_on is not None and stuck_on in output and now - last_output > QEMU_STUCK_SECONDS
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
        output += data
        last_output = time.monotonic()
        if marker_at is None and MARKER in output:
            marker_at = last_output - started
    status = process.wait()
    ended = time.monotonic() - started
    selector.close()
    process.stdout.close()
    return bytes(output), marker_at, ended, None if killed else status


@dataclass(frozen=True)
class Root:
    """What the guest's root file system comes from: an initrd, or a disk image
    (booted from a fresh copy each time)."""

    initrd: Path | None = None
    disk: Path | None = None

    @contextmanager
    def files(self) -> Iterator[tuple[Path | None, Path | None]]:
        """(initrd, disk) for one boot."""
        if self.disk is None:
            yield self.initrd, None
            return
        with tempfile.TemporaryDirectory(prefix="pyvmm-boot-bench-") as work:
            copy = Path(work) / self.disk.name
            shutil.copyfile(self.disk, copy)
            yield self.initrd, copy


def pyvmm_boot(label: str, kernel: Path, root: Root, cpus: int, cmdline: str, *extra: str) -> Boot:
    with root.files() as (initrd, disk):
        files = ["--initrd", str(initrd)] if initrd else []
        files += ["--disk", str(disk)] if disk else []
        command = [*PYVMM, "run", "--kernel", str(kernel), *files, "--cpus", str(cpus),
                   "--memory", MEMORY, "--cmdline", cmdline, "--timeout", str(BOOT_TIMEOUT), "--stats",
                   *extra]  # fmt: skip
        return _pyvmm_boot(label, command)


def _pyvmm_boot(label: str, command: list[str]) -> Boot:
    output, marker_at, ended, status = watch(command, BOOT_TIMEOUT + 60)
    text = output.decode(errors="replace")
    share = re.search(r"exit handling: [\d.]+ s of vCPU-thread user time, ([\d.]+)%", text)
    emulated_block = text.split("emulated instructions:", 1)[1] if "emulated instructions:" in text else ""
    emulated = sum(int(count) for count in re.findall(r"^\s+\S+\s+(\d+)$", emulated_block, re.MULTILINE))
    failure = "" if status == 0 else first_error(text)
    return Boot(label, marker_at, ended, status, failure, float(share[1]) / 100 if share else None, emulated)


def qemu_boot(label: str, kernel: Path, root: Root, cpus: int, cmdline: str) -> Boot:
    with root.files() as (initrd, disk):
        files = ["-initrd", str(initrd)] if initrd else []
        files += ["-drive", f"file={disk},if=virtio,format=raw"] if disk else []
        command = ["qemu-system-x86_64", "-enable-kvm", "-M", "pc", "-smp", str(cpus),
                   "-m", MEMORY, "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
                   "-kernel", str(kernel), *files, "-append", cmdline]  # fmt: skip
        output, marker_at, ended, status = watch(command, QEMU_TIMEOUT, stuck_on=b"KVM internal error")
    text = output.decode(errors="replace")
    failure = "" if status == 0 else first_error(text) or f"no marker in {QEMU_TIMEOUT:.0f} s"
    return Boot(label, marker_at, ended, status, failure)


def first_error(text: str) -> str:
    for pattern in (r"KVM internal error.*", r"pyvmm: (?:error|guest ended): .*", r"Kernel panic.*",
                    r"qemu-system.*"):  # fmt: skip
        match = re.search(pattern, text)
        if match:
            return match[0].strip()[:160]
    return ""


def trivial_launch_to_exit(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, cwd=ROOT)
        times.append(time.monotonic() - started)
        if result.returncode != TRIVIAL_STATUS:
            raise BenchmarkError(f"{command[0]} ended the trivial guest with {result.returncode}: "
                                 f"{result.stderr.decode(errors='replace').strip()[-200:]}")  # fmt: skip
    return statistics.median(times)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in [header, *rows])  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavours", default="default,stock",
                        help="comma-separated: default, stock; empty for the trivial guest only")  # fmt: skip
    parser.add_argument("--roots", default="initramfs,disk",
                        help="comma-separated: initramfs, disk (default guest only)")  # fmt: skip
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--loaders", default="host,guest,vmlinux",
                        help="comma-separated, pyvmm's initramfs rows: host, guest (decompression),"
                        " vmlinux")  # fmt: skip
    parser.add_argument("--vmms", default="pyvmm,qemu", help="comma-separated: pyvmm, qemu")
    parser.add_argument("--trivial-runs", type=int, default=10)
    parser.add_argument("--stock-speedups", action=argparse.BooleanOptionalAction, default=True,
                        help="boot the stock kernel with STOCK_SPEEDUPS (pyvmm.images.stock) on its command"
                        " line, in every VMM (default: yes)")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("qemu-system-x86_64") is None:
        raise BenchmarkError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    if not TRIVIAL_GUEST.exists():
        subprocess.run(["bash", str(ROOT / "tests" / "guests" / "build.sh")], check=True)

    runners = {"pyvmm": pyvmm_boot, "qemu": qemu_boot}
    if not set(args.vmms.split(",")) <= set(runners):
        raise BenchmarkError(f"--vmms takes pyvmm and/or qemu, not {args.vmms!r}")
    selected = {runners[name] for name in args.vmms.split(",")}
    roots = set(filter(None, args.roots.split(",")))
    if not roots <= {"initramfs", "disk"}:
        raise BenchmarkError(f"--roots takes initramfs and/or disk, not {args.roots!r}")
    loaders = set(filter(None, args.loaders.split(",")))
    if not loaders <= {"host", "guest", "vmlinux"}:
        raise BenchmarkError(f"--loaders takes host, guest and/or vmlinux, not {args.loaders!r}")
    boots: list[Boot] = []
    for flavour in filter(None, args.flavours.split(",")):
        images = build_with_progress(flavour)
        kernel, vmlinux = images.path("bzImage"), images.path("vmlinux")
        initrd = Root(initrd=images.path("initramfs"))
        cmdline = f"{CMDLINE} {STOCK_SPEEDUPS}" if flavour == "stock" and args.stock_speedups else CMDLINE
        runs = []
        if "initramfs" in roots:
            by_loader = {
                "host": partial(pyvmm_boot, f"{flavour}: pyvmm, bzImage, host decompression", kernel,
                                initrd, args.cpus, cmdline),
                "guest": partial(pyvmm_boot, f"{flavour}: pyvmm, bzImage, guest decompression", kernel,
                                 initrd, args.cpus, cmdline, "--kernel-decompress", "guest"),
                "vmlinux": partial(pyvmm_boot, f"{flavour}: pyvmm, vmlinux", vmlinux, initrd, args.cpus,
                                   cmdline),
            }  # fmt: skip
            runs += [run for name, run in by_loader.items() if name in loaders]
            runs.append(partial(qemu_boot, f"{flavour}: QEMU -M pc, bzImage", kernel, initrd, args.cpus,
                                cmdline))  # fmt: skip
        if "disk" in roots and "rootfs" in artifacts(flavour):  # the stock kernel has no disk root
            disk = Root(disk=images.path("rootfs"))
            disk_cmdline = f"{cmdline} {ROOT_CMDLINE}"
            runs += [
                partial(pyvmm_boot, f"{flavour}: pyvmm, bzImage, disk root", kernel, disk, args.cpus,
                        disk_cmdline),
                partial(qemu_boot, f"{flavour}: QEMU -M pc, bzImage, disk root", kernel, disk, args.cpus,
                        disk_cmdline),
            ]
        for run in runs:
            if run.func not in selected:
                continue
            result = run()
            print(f"  {result.label}: {result.cells()[1:]} {result.failure}", file=sys.stderr, flush=True)
            boots.append(result)

    # An installed pyvmm has its bytecode compiled (pip does it); an environment with
    # PYTHONDONTWRITEBYTECODE would otherwise compile every module on every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "pyvmm")], check=True)
    pyvmm = [str(PYVMM_SCRIPT)] if PYVMM_SCRIPT.exists() else PYVMM
    pyvmm_trivial = trivial_launch_to_exit([*pyvmm, "run", "--kernel", str(TRIVIAL_GUEST), "--memory", MEMORY,
                                            "--cmdline", TRIVIAL_CMDLINE], args.trivial_runs)  # fmt: skip
    qemu_trivial = trivial_launch_to_exit(
        ["qemu-system-x86_64", "-enable-kvm", "-M", "microvm", "-m", MEMORY, "-nodefaults",
         "-display", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
         "-serial", "stdio", "-kernel", str(TRIVIAL_GUEST), "-append", TRIVIAL_CMDLINE],
        args.trivial_runs)  # fmt: skip

    header = ["guest / VMM", "marker s", "exit s", "status", "exit handling", "emulated"]
    if boots:
        print(f"Boot to the init marker and to power-off, {args.cpus} vCPU(s), {MEMORY}, one boot per row"
              f" ({os.uname().release}, {os.cpu_count()} host CPUs)")  # fmt: skip
        print(table([boot.cells() for boot in boots], header))
    for boot in boots:
        if boot.failure:
            print(f"  {boot.label}: {boot.failure}")
    shares = [boot.exit_share for boot in boots if boot.exit_share is not None]
    if shares:
        worst = max(shares)
        verdict = "met" if worst <= EXIT_SHARE_TARGET else "missed"
        target = f"{100 * EXIT_SHARE_TARGET:.0f}%"
        print(f"exit handling target <= {target} of wall time: {verdict} (worst {100 * worst:.1f}%)")
    print()
    print(f"Trivial Multiboot guest (mbinfo, isa-debug-exit), launch to exit, median of {args.trivial_runs}:")
    trivial_rows = [["pyvmm run", f"{pyvmm_trivial * 1000:.0f} ms"],
                    ["qemu-system-x86_64 -M microvm", f"{qemu_trivial * 1000:.0f} ms"]]  # fmt: skip
    print(table(trivial_rows, ["VMM", "time"]))
    verdict = "met" if pyvmm_trivial <= qemu_trivial else "missed"
    print(f"target pyvmm <= QEMU: {verdict} (ratio {pyvmm_trivial / qemu_trivial:.2f})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as exc:
        print(f"boot.py: {exc}", file=sys.stderr)
        sys.exit(1)
