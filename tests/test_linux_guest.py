"""Real Linux guests, booted by `pyvmm run` as a user runs it: the kernels and the
busybox initramfs of `pyvmm images build` (the default kernel built from Debian's
linux-source, and Debian's stock cloud kernel with `--stock`).

Every scenario boots once and its assertions share that boot: on a software KVM a
boot takes minutes (docs/boot.md). The stock kernel boots with the self-test
speed-ups of docs/boot.md on its command line: on kvm_pvm its own self-tests would
otherwise take more than half an hour of its boot. The guest's init runs the command
given by `pyvmm.run=` on the kernel command line, prints `pyvmm-run: exit=N` and
powers off; the interactive tests drive the shell through a real pseudo-terminal
instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from guest_devices import (
    FULL_DISK_BYTES,
    FULL_FS_BYTES,
    FULL_WRITE_BYTES,
    GUEST_COMMANDS,
    PATTERN_BYTES,
    PATTERN_OFFSET,
    READONLY_MAGIC,
    DevicesResult,
    GuestDevices,
    GuestLink,
    readonly_image,
)
from guest_network import PINGS, link_commands
from net.netns import why_not_usable
from terminal import Terminal

from pyvmm.images.initramfs import run_parameter
from pyvmm.images.stock import STOCK_SPEEDUPS

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).resolve().parent.parent
PYVMM = [sys.executable, "-m", "pyvmm"]
BOOT_SECONDS = 1500  # pyvmm's --timeout for one boot; about 3 minutes here, see the note above
BUILD_SECONDS = 3600  # the first `pyvmm images build` compiles a kernel
MEMORY_MIB = 256
STATUS_STOPPED = 72  # pyvmm's exit status when the user stops the VM (docs/boot.md)
REPORT = (
    "echo nproc=$(nproc); grep MemTotal /proc/meminfo; echo cmdline=$(cat /proc/cmdline);"
    " echo date=$(date +%s); echo kernel=$(uname -r)"
)
# What Linux made of pyvmm's PCI: each function's IDs, class and first two resources
# (start end flags), and the kernel's PCI messages.
PCI_REPORT = (
    "; for d in /sys/bus/pci/devices/*; do echo pci=${d##*/} $(cat $d/vendor $d/device $d/class)"
    " $(head -2 $d/resource); done; dmesg | grep -iE 'pci|mmconf|e820' | sed 's/^/dmesg: /'"
)
# What Linux made of pyvmm's virtio devices: each one's vendor and device ID, the
# entropy it gives, the disk's first bytes; then a write to the disk's second sector,
# and the kernel's virtio messages.
DISK_MAGIC = b"pyvmm-virtio-disk"
GUEST_WRITE = b"written-by-the-guest\n"
VIRTIO_REPORT = (
    "; for d in /sys/bus/virtio/devices/*; do echo virtio=${d##*/} $(cat $d/vendor $d/device); done;"
    " echo hwrng=$(cat /sys/class/misc/hw_random/rng_current);"
    " echo consoles=$(cat /sys/class/tty/console/active);"
    " echo random=$(head -c 64 /dev/hwrng | od -An -tx1 | tr -d ' \\n');"
    f" echo disk=$(head -c {len(DISK_MAGIC)} /dev/vda);"
    " echo written-by-the-guest | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null;"
    " dmesg | grep -iE 'virtio|vd[a-z]' | sed 's/^/dmesg: /'"
)
# The default guest from its root disk: what / is mounted from, and a file written
# there, synced, for the host to read back from the disk after the power-off.
ROOT_FILE = "/root/written-in-the-guest"
ROOT_REPORT = (
    "; echo rootmount=$(grep ' / / ' /proc/self/mountinfo); echo vda=$(cat /sys/block/vda/dev);"
    f" echo pyvmm-disk-root > {ROOT_FILE}; sync"
)


@dataclass(frozen=True)
class Scenario:
    name: str
    flavour: str  # "default" or "stock"
    image: str  # "bzImage" or "vmlinux"
    cpus: int
    decompress: str = "host"
    cmdline: str = ""  # added to the kernel command line
    seconds: int = BOOT_SECONDS  # pyvmm's --timeout
    # Started as soon as the suite is collected (conftest.py), to run alongside the
    # other tests: for a boot that takes longer than all of them.
    background: bool = False
    devices: tuple[str, ...] = ()  # --device options
    report: str = REPORT  # what the guest runs
    options: tuple[str, ...] = ()  # more `pyvmm run` options
    disk: bytes | None = None  # the contents of a --disk image made for the boot
    # As `pyvmm run` boots pyvmm's guest without --kernel: from the writable copy of
    # its root disk, made for the boot in a data directory of its own.
    own_guest: bool = False
    # Made before the boot, with the options it adds and the namespace pyvmm runs in
    # (tests/guest_devices.py); given the seconds it must last.
    setup: Callable[[float], GuestDevices | GuestLink] | None = None


DISK_ROOT_SCENARIO = Scenario(
    "disk-root-1cpu", "default", "bzImage", 1, own_guest=True, report=REPORT + ROOT_REPORT
)
# issue 12's devices over virtio-pci (the default transport), all in one boot: three
# disks (random data, readonly=on, one on a full file system), eth0 on a TAP in a
# namespace of its own, the entropy device, and hvc0 as the console that the report
# comes through (tests/guest_devices.py).
VIRTIO_PCI_SCENARIO = Scenario(
    "virtio-pci-1cpu",
    "default",
    "bzImage",
    1,
    cmdline="console=hvc0",
    options=("--rng", "--console", "virtio"),
    report=REPORT + GUEST_COMMANDS,
    setup=GuestDevices,
)
# The stock kernel's virtio drivers are modules its initramfs loads (virtio_pci,
# virtio_blk, virtio_rng...): its boot reads and writes a disk and the entropy device.
STOCK_REPORT = REPORT + VIRTIO_REPORT + "; echo modules=$(cut -d' ' -f1 /proc/modules)"
STOCK_SCENARIO = Scenario(
    "stock-bzimage-1cpu", "stock", "bzImage", 1, cmdline=STOCK_SPEEDUPS, seconds=3600, background=True,
    options=("--rng",), disk=DISK_MAGIC.ljust(512, b".").ljust(1 << 20, b"\0"), report=STOCK_REPORT,
)  # fmt: skip
SCENARIOS = [
    Scenario("bzimage-host-1cpu", "default", "bzImage", 1),
    Scenario("bzimage-guest-1cpu", "default", "bzImage", 1, decompress="guest"),
    Scenario("vmlinux-pvh-2cpu", "default", "vmlinux", 2),
    DISK_ROOT_SCENARIO,
    VIRTIO_PCI_SCENARIO,
    # 20 to 35 minutes here (its virtio modules' signature checks are slow guest kernel
    # code; docs/boot.md), so it runs in the background, from the start of the suite.
    STOCK_SCENARIO,
    Scenario(
        "pci-testdev-1cpu", "default", "bzImage", 1, devices=("pci-testdev",), report=REPORT + PCI_REPORT
    ),
    Scenario(
        "virtio-mmio-1cpu",
        "default",
        "bzImage",
        1,
        cmdline="console=hvc0",  # the last console= is /dev/console: init's output goes through hvc0
        options=("--rng", "--console", "virtio", "--transport", "mmio"),
        disk=DISK_MAGIC.ljust(512, b".").ljust(1 << 20, b"\0"),
        report=REPORT + "; " + "; ".join(link_commands()) + VIRTIO_REPORT,
        setup=GuestLink,  # eth0 on a TAP in a namespace of its own
    ),
]
PCI_SCENARIO = SCENARIOS[-2]
VIRTIO_SCENARIO = SCENARIOS[-1]


@dataclass(frozen=True)
class RootDisk:
    """What the host finds on the own guest's root disk after the run, read with
    e2fsprogs (as a user could), not through pyvmm."""

    names: tuple[str, ...]  # the files in the disk directory
    root_file: str  # debugfs's `cat ROOT_FILE`
    fsck_status: int  # e2fsck -fn: 0 when the guest left the file system clean

    @classmethod
    def read(cls, directory: Path) -> RootDisk:
        names = tuple(sorted(path.name for path in directory.iterdir())) if directory.is_dir() else ()
        if len(names) != 1:
            return cls(names, "", -1)
        disk = directory / names[0]
        cat = subprocess.run(["debugfs", "-R", f"cat {ROOT_FILE}", str(disk)], capture_output=True, text=True)
        fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True)
        return cls(names, cat.stdout, fsck.returncode)


@dataclass
class Boot:
    scenario: Scenario
    status: int
    output: str
    started: float  # host time.time() around the run
    ended: float
    disk: bytes | None = None  # the --disk image after the run
    root_disk: RootDisk | None = None  # the own guest's root disk after the run
    devices: DevicesResult | None = None  # what the scenario's setup found after the run

    def value(self, key: str) -> str:
        match = re.search(rf"^{key}=(.*?)\r?$", self.output, re.MULTILINE)
        assert match, f"no {key}= line in the guest's output:\n{self.output[-3000:]}"
        return match[1]


_images: dict[str, dict[str, Path]] = {}


def images(flavour: str) -> dict[str, Path]:
    """Build (or find in the cache) the images of `flavour`: name -> path."""
    if flavour not in _images:
        command = [*PYVMM, "images", "build", *(["--stock"] if flavour == "stock" else [])]
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_SECONDS, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        _images[flavour] = {
            name: Path(path) for name, path in (line.split() for line in result.stdout.splitlines())
        }
    return _images[flavour]


def run_command(scenario: Scenario, *, cmdline: str, disk: Path | None = None) -> list[str]:
    found = images(scenario.flavour)
    guest = ["--kernel", str(found[scenario.image]), "--initrd", str(found["initramfs"])]
    return [
        *PYVMM, "-v", "run", *([] if scenario.own_guest else guest),
        "--cpus", str(scenario.cpus), "--memory", f"{MEMORY_MIB}M",
        "--kernel-decompress", scenario.decompress, "--timeout", str(scenario.seconds),
        "--cmdline", " ".join(filter(None, ["console=ttyS0", scenario.cmdline, cmdline])),
        *(word for device in scenario.devices for word in ("--device", device)),
        *scenario.options, *(["--disk", str(disk)] if disk is not None else []),
    ]  # fmt: skip


class RunningBoot:
    """One scenario's `pyvmm run`, started now; its stdout and stderr go to files."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.disk: Path | None = None
        self.disk_after: bytes | None = None
        if scenario.disk is not None:
            self.disk = Path(tempfile.mkdtemp(prefix="pyvmm-test-")) / "disk.img"
            self.disk.write_bytes(scenario.disk)
        command = run_command(
            scenario, cmdline=f"pyvmm.test={scenario.name} {run_parameter(scenario.report)}", disk=self.disk
        )
        self.setup = scenario.setup(scenario.seconds + 60) if scenario.setup is not None else None
        self.devices_after: DevicesResult | None = None
        if self.setup is not None:
            command = self.setup.wrap([*command, *self.setup.options()])
        # The own guest's root disk is made in a data directory of the boot's own,
        # not the user's (pyvmm.images.guest_disk).
        self.data_home = Path(tempfile.mkdtemp(prefix="pyvmm-test-data-")) if scenario.own_guest else None
        self.root_disk: RootDisk | None = None
        env = {**os.environ, "XDG_DATA_HOME": str(self.data_home)} if self.data_home else None
        # Files, not pipes: nobody reads a background boot's output until it ends.
        self.stdout = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the object)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.started = time.time()
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self.stdout, stderr=self.stderr, cwd=ROOT, env=env
            )
        except BaseException:
            self._close_setup()
            raise

    def wait(self) -> Boot:
        try:
            status = self.process.wait(self.scenario.seconds + 60)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self.stdout.seek(0)
        self.stderr.seek(0)
        output = (self.stdout.read() + self.stderr.read()).decode(errors="replace")
        if self.disk is not None and self.disk.exists():  # read once, then removed
            self.disk_after = self.disk.read_bytes()
            shutil.rmtree(self.disk.parent)
        if self.data_home is not None and self.data_home.exists():  # read once, then removed
            self.root_disk = RootDisk.read(self.data_home / "pyvmm" / "disks")
            shutil.rmtree(self.data_home)
        if self.setup is not None:  # read once, then removed
            try:
                self.devices_after = self.setup.finish()
            finally:
                self._close_setup()
        return Boot(
            self.scenario, status, output, self.started, time.time(), self.disk_after, self.root_disk,
            self.devices_after,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_setup()

    def _close_setup(self) -> None:
        if self.setup is not None:
            self.setup.close()
            self.setup = None


_running: dict[Scenario, RunningBoot] = {}


def start_boot(scenario: Scenario) -> RunningBoot:
    """The scenario's boot, started now unless it already was (conftest.py starts the
    background ones when the suite is collected)."""
    if scenario not in _running:
        _running[scenario] = RunningBoot(scenario)
    return _running[scenario]


def stop_boots() -> None:
    for running in _running.values():
        running.stop()


@pytest.fixture(scope="module", params=SCENARIOS, ids=lambda scenario: scenario.name)
def boot(request: pytest.FixtureRequest) -> Boot:
    return wait_for(request.param)


def wait_for(scenario: Scenario) -> Boot:
    """The scenario's boot, started if need be; skipped where its setup cannot be made."""
    if scenario.setup is not None and (reason := why_not_usable()) is not None:
        pytest.skip(reason)  # a TAP in a namespace of its own needs root and /dev/net/tun
    return start_boot(scenario).wait()


def test_the_kernel_boots_to_init(boot: Boot) -> None:
    assert "Linux version " in boot.output, boot.output[-3000:]
    assert "pyvmm-init: ready" in boot.output, boot.output[-3000:]
    # pyvmm's log (-v) says which entry it took.
    if boot.scenario.decompress == "guest":
        assert "unpacked by the guest" in boot.output  # the kernel's own decompressor ran
    else:
        assert "Xen PVH entry" in boot.output  # the vmlinux, or the one pyvmm unpacked
    release = boot.value("kernel")
    if boot.scenario.flavour == "stock":
        # Debian's LZ4 bzImage (boot protocol 2.15), unpacked by pyvmm.
        assert "(lz4 vmlinux)" in boot.output
        assert release.endswith("-cloud-amd64"), release
        assert re.search(rf"Linux version {re.escape(release)} \(debian-kernel@", boot.output)
    else:
        assert re.match(r"\d+\.\d+", release)


def test_the_kernel_takes_pyvmms_memory_map(boot: Boot) -> None:
    top = MEMORY_MIB * 1024 * 1024 - 1
    assert f"BIOS-e820: [mem 0x0000000000100000-0x{top:016x}] usable" in boot.output, boot.output[:3000]


def test_nproc_is_the_cpu_count(boot: Boot) -> None:
    assert int(boot.value("nproc")) == boot.scenario.cpus


def test_memtotal_is_the_memory_given(boot: Boot) -> None:
    match = re.search(r"^MemTotal:\s+(\d+) kB", boot.output, re.MULTILINE)
    assert match, boot.output[-3000:]
    mem_total_mib = int(match[1]) / 1024
    # MemTotal is RAM less what the kernel keeps (its image, reserved areas).
    assert MEMORY_MIB * 0.75 < mem_total_mib <= MEMORY_MIB


def test_the_command_line_reaches_the_guest(boot: Boot) -> None:
    words = boot.value("cmdline").split()
    assert f"pyvmm.test={boot.scenario.name}" in words
    assert set(boot.scenario.cmdline.split()) <= set(words)


def test_the_guest_clock_is_the_hosts(boot: Boot) -> None:
    guest_time = int(boot.value("date"))
    assert boot.started - 5 <= guest_time <= boot.ended + 5


def test_poweroff_ends_pyvmm_with_status_0(boot: Boot) -> None:
    assert "pyvmm-run: exit=0" in boot.output
    assert boot.status == 0, boot.output[-3000:]


def test_linux_probes_pyvmms_pci_without_complaint() -> None:
    """The guest's own view of PCI (sysfs, dmesg), one boot with --device pci-testdev."""
    boot = start_boot(PCI_SCENARIO).wait()
    functions = dict(re.findall(r"^pci=(\S+) (.*?)\r?$", boot.output, re.MULTILINE))
    assert set(functions) == {"0000:00:00.0", "0000:00:01.0"}, boot.output[-5000:]
    assert functions["0000:00:00.0"].startswith("0x1b36 0x0008 0x060000")  # the host bridge
    # pci-testdev: its BARs where pyvmm placed them, 4 KiB of MMIO (IORESOURCE_MEM
    # 0x200) and 256 ports (IORESOURCE_IO 0x100), both kept by Linux.
    testdev = functions["0000:00:01.0"].split()
    assert testdev[:3] == ["0x1b36", "0x0005", "0xff0000"]
    assert testdev[3:5] == ["0x00000000c0000000", "0x00000000c0000fff"] and int(testdev[5], 16) & 0x200
    assert testdev[6:8] == ["0x000000000000c000", "0x000000000000c0ff"] and int(testdev[8], 16) & 0x100
    dmesg = [line for line in boot.output.splitlines() if line.startswith("dmesg: ")]
    assert any("MMCONFIG at [mem 0xe0000000-0xe00fffff] reserved" in line for line in dmesg), dmesg
    assert any("root bus resource [mem 0xc0000000-0xdfffffff window]" in line for line in dmesg), dmesg
    # ("report a bug" is in Linux's standard "Using host bridge windows from ACPI" line.)
    complaints = re.compile(
        r"not reserved|can't claim|fail|conflict|no space|invalid|firmware bug|error|warn", re.I
    )
    assert not [line for line in dmesg if complaints.search(line)], dmesg
    assert boot.status == 0, boot.output[-3000:]


def test_linux_finds_and_uses_the_virtio_mmio_devices() -> None:
    """One boot with --rng --disk --net --console virtio --transport mmio: the devices
    announced in the DSDT (not on the command line), probed once and without
    complaint, working (eth0 pings the host on its TAP); this report itself came
    through hvc0."""
    boot = wait_for(VIRTIO_SCENARIO)
    devices = dict(re.findall(r"^virtio=(\S+) (.*?)\r?$", boot.output, re.MULTILINE))
    # pyvmm's vendor ID ("pyvm"): virtio-blk (2), -net (1), -rng (4), -console (3).
    expected = {
        "virtio0": "0x6d767970 0x0002",
        "virtio1": "0x6d767970 0x0001",
        "virtio2": "0x6d767970 0x0004",
        "virtio3": "0x6d767970 0x0003",
    }
    assert devices == expected, boot.output[-5000:]
    assert boot.value("eth0-up") == "0"
    assert boot.value("guest-ping") == f"{PINGS} packets received"
    assert "hvc0" in boot.value("consoles").split()
    assert boot.value("hwrng") == "virtio_rng.0"
    random = bytes.fromhex(boot.value("random"))
    assert len(random) == 64 and len(set(random)) > 16  # 64 bytes from the host's urandom
    assert boot.value("disk") == DISK_MAGIC.decode()
    assert boot.disk is not None and boot.disk[512 : 512 + len(GUEST_WRITE)] == GUEST_WRITE
    assert "virtio_mmio.device=" not in boot.value("cmdline")  # one announcement: the DSDT
    dmesg = [line for line in boot.output.splitlines() if line.startswith("dmesg: ")]
    assert any("[vda] 2048 512-byte logical blocks" in line for line in dmesg), dmesg
    complaints = re.compile(r"fail|error|can't|busy|invalid|warn|bug", re.I)
    kernel = [line for line in dmesg if "command line:" not in line.lower()]  # not our own words
    assert not [line for line in kernel if complaints.search(line)], dmesg
    assert boot.status == 0, boot.output[-3000:]


def test_the_default_guest_boots_from_its_root_disk() -> None:
    """`pyvmm run` without --kernel, as the README's first command: no initrd, / is
    the writable copy of rootfs.ext4 as /dev/vda, ext4 read-write; what the guest
    writes there is on the copy after the power-off, which left it clean; the cached
    image stays as built."""
    boot = start_boot(DISK_ROOT_SCENARIO).wait()
    assert "pyvmm-init: ready" in boot.output, boot.output[-3000:]
    assert "Unpacking initramfs" not in boot.output  # the kernel had no initrd to unpack
    words = boot.value("cmdline").split()
    assert "root=/dev/vda" in words and "rw" in words, words
    # mountinfo: ID PARENT MAJOR:MINOR ROOT MOUNT-POINT OPTIONS ... - TYPE SOURCE ...
    mount = boot.value("rootmount").split()
    assert mount[2] == boot.value("vda"), mount  # / is vda (the kernel names it /dev/root)
    assert mount[mount.index("-") + 1] == "ext4" and mount[5].split(",")[0] == "rw", mount
    cached = images("default")["rootfs"]
    assert boot.root_disk is not None
    assert boot.root_disk.names == (f"{cached.parent.name}.ext4",)  # default-<key>.ext4
    assert boot.root_disk.root_file == "pyvmm-disk-root\n"
    assert boot.root_disk.fsck_status == 0
    untouched = subprocess.run(
        ["debugfs", "-R", f"stat {ROOT_FILE}", str(cached)], capture_output=True, text=True
    )
    assert "File not found" in untouched.stderr, untouched
    assert boot.status == 0, boot.output[-3000:]


def dmesg_lines(boot: Boot) -> list[str]:
    return [line for line in boot.output.splitlines() if line.startswith("dmesg: ")]


def pci_devices_boot() -> tuple[Boot, DevicesResult]:
    """The virtio-pci scenario's one boot, and what its host side found."""
    boot = wait_for(VIRTIO_PCI_SCENARIO)
    assert boot.devices is not None
    return boot, boot.devices


def test_over_virtio_pci_linux_finds_each_device_once_without_complaint() -> None:
    """Three disks, eth0, the entropy device and hvc0, as PCI functions in that order
    (the first disk is /dev/vda), each bound to its virtio driver; the complaints in
    dmesg are only the full disk's I/O errors, which that scenario asks for."""
    boot, _ = pci_devices_boot()
    devices = dict(re.findall(r"^virtio=(\S+) (\S+)\r?$", boot.output, re.MULTILINE))
    # virtio device IDs (§5): block 2, network 1, entropy 4, console 3.
    expected = {"virtio0": "0x0002", "virtio1": "0x0002", "virtio2": "0x0002"}
    expected |= {"virtio3": "0x0001", "virtio4": "0x0004", "virtio5": "0x0003"}
    assert devices == expected, boot.output[-5000:]
    assert "hvc0" in boot.value("consoles").split()  # this report came through it
    dmesg = dmesg_lines(boot)
    assert any("[vda] 32768 512-byte logical blocks" in line for line in dmesg), dmesg
    assert any(f"[vdc] {FULL_DISK_BYTES // 512} 512-byte logical blocks" in line for line in dmesg), dmesg
    complaints = re.compile(r"fail|error|can't|busy|invalid|warn|bug", re.I)
    expected_errors = re.compile(r"I/O error, dev vdc|Buffer I/O error on dev vdc")
    kernel = [line for line in dmesg if "command line:" not in line.lower()]  # not our own words
    unexpected = [line for line in kernel if complaints.search(line) and not expected_errors.search(line)]
    assert not unexpected, dmesg
    assert boot.status == 0, boot.output[-3000:]


def test_a_host_prepared_disk_reads_back_and_the_guests_write_reaches_the_file() -> None:
    """/dev/vda: 16 MiB of random data, hashed in the guest; then the guest writes a
    MiB it got from the host at 4 MiB, fsyncs and powers off: the image holds exactly
    that, and nothing else changed."""
    boot, found = pci_devices_boot()
    assert boot.value("vda-sha256") == found.disk_sha256
    assert boot.value("pattern") == "0"
    end = PATTERN_OFFSET + PATTERN_BYTES
    assert len(found.disk_after) == len(found.disk)
    assert found.disk_after[PATTERN_OFFSET:end] == found.download[:PATTERN_BYTES]
    assert found.disk_after[:PATTERN_OFFSET] == found.disk[:PATTERN_OFFSET]
    assert found.disk_after[end:] == found.disk[end:]


def test_a_readonly_disk_refuses_the_guests_write_and_its_file_is_unchanged() -> None:
    """/dev/vdb, readonly=on: the guest sees a read-only disk (VIRTIO_BLK_F_RO) it can
    read; its write fails, and the image file is as the host made it."""
    boot, found = pci_devices_boot()
    assert boot.value("vdb-ro") == "1"
    assert boot.value("vdb-head") == f"# {READONLY_MAGIC.decode()}: run by the guest with sh /dev/vdb"
    assert boot.value("vdb-write") != "0", boot.output[-3000:]
    assert found.readonly_after == readonly_image()


def test_a_disk_on_a_full_file_system_gives_the_guest_io_errors_and_pyvmm_runs_on() -> None:
    """/dev/vdc: a sparse image on a tmpfs too small for it. The guest's O_DIRECT
    writes past the free space fail with EIO (the host's ENOSPC as VIRTIO_BLK_S_IOERR);
    the guest goes on and powers off, and pyvmm ends with status 0."""
    boot, _ = pci_devices_boot()
    assert FULL_WRITE_BYTES > FULL_FS_BYTES  # the premise: the write cannot fit
    assert boot.value("vdc-write") != "0", boot.output[-3000:]
    errors = re.findall(r"^vdc-dd: (.*?)\r?$", boot.output, re.MULTILINE)
    assert any(re.search(r"Input/output error|I/O error", line) for line in errors), errors  # EIO
    assert any("I/O error, dev vdc" in line for line in dmesg_lines(boot)), dmesg_lines(boot)
    assert "pyvmm-run: exit=0" in boot.output  # the rest of the report ran
    assert boot.status == 0, boot.output[-3000:]


def test_guest_and_host_ping_each_other_and_move_16_mib_each_way_over_tcp() -> None:
    """eth0 on a TAP in a namespace of the test's own (tests/guest_network.py): each
    side pings the other; the guest sends its /dev/vda (16 MiB) and the host 16 MiB of
    its own, each stream's SHA-256 the same at both ends."""
    boot, found = pci_devices_boot()
    network = found.network
    assert network.errors == [], network.errors
    assert boot.value("eth0-up") == "0"
    assert boot.value("eth0-mac") == "52:54:00:12:34:56"  # the first card's default
    assert boot.value("guest-ping") == f"{PINGS} packets received"
    assert network.replies == PINGS
    # guest -> host: what arrived is the disk the guest hashed.
    assert boot.value("upload") == "0"
    assert network.uploaded == len(found.disk)
    assert network.upload_sha256 == found.disk_sha256 == boot.value("vda-sha256")
    # host -> guest
    assert network.downloaded
    assert boot.value("download") == "0"
    assert boot.value("download-sha256") == found.download_sha256


def test_the_entropy_device_over_virtio_pci() -> None:
    boot, _ = pci_devices_boot()
    assert boot.value("hwrng") == "virtio_rng.0"
    random = bytes.fromhex(boot.value("random"))
    assert len(random) == 64 and len(set(random)) > 16  # 64 bytes from the host's urandom


def test_the_stock_kernel_loads_its_virtio_modules_and_uses_the_devices() -> None:
    """Debian's kernel, whose virtio drivers are modules its initramfs loads: the disk
    and the entropy device over virtio-pci work through them."""
    boot = wait_for(STOCK_SCENARIO)
    modules = set(boot.value("modules").split())
    assert {"virtio_pci", "virtio_blk", "virtio_rng"} <= modules, modules
    devices = dict(re.findall(r"^virtio=(\S+) \S+ (\S+)\r?$", boot.output, re.MULTILINE))
    assert devices == {"virtio0": "0x0002", "virtio1": "0x0004"}, boot.output[-5000:]
    assert boot.value("hwrng") == "virtio_rng.0"
    random = bytes.fromhex(boot.value("random"))
    assert len(random) == 64 and len(set(random)) > 16
    assert boot.value("disk") == DISK_MAGIC.decode()
    assert boot.disk is not None and boot.disk[512 : 512 + len(GUEST_WRITE)] == GUEST_WRITE
    assert boot.status == 0, boot.output[-3000:]


@pytest.fixture(params=["ttyS0"])
def shell(request: pytest.FixtureRequest) -> Iterator[Terminal]:
    """`pyvmm run` on a pty with the guest shell's prompt up: on COM1 (ttyS0), a clone
    of the session's booted default guest (`--incoming`, tests/linux_snapshot.py);
    on the virtio console over virtio-pci (hvc0), a boot of the default bzImage, as
    the test's `shell` parameter says."""
    console = request.param
    if console == "ttyS0":
        from linux_snapshot import CLI_OPTIONS  # (it imports this module)

        snapshot = request.getfixturevalue("default_guest")
        command = [*PYVMM, "run", *CLI_OPTIONS, "--incoming", f"file:{snapshot.path}"]
    else:  # the last console= is /dev/console, where init's shell runs
        command = [*run_command(SCENARIOS[0], cmdline=f"console={console}"), "--console", "virtio"]
    terminal = Terminal(command, ROOT)
    try:
        if console != "ttyS0":  # a clone's prompt was printed before it was saved
            assert terminal.expect(b"pyvmm-init: ready", BOOT_SECONDS), bytes(terminal.seen[-3000:])
            assert terminal.expect(b"/ # ", 120), bytes(terminal.seen[-3000:])
        yield terminal
    finally:
        terminal.close()


def test_a_person_at_the_shell_runs_a_command_and_powers_off(shell: Terminal) -> None:
    shell.type(b"echo $((6 * 7))\r")
    assert shell.expect(b"42", 120), bytes(shell.seen)
    shell.type(b"poweroff\r")
    assert shell.wait(300) == 0, bytes(shell.seen[-3000:])


@pytest.mark.parametrize("shell", ["hvc0"], indirect=True)
def test_a_person_at_the_hvc0_shell_leaves_with_the_escape_key(shell: Terminal) -> None:
    """The interactive shell on the virtio console (hvc0) through a real terminal:
    keystrokes reach it, its answers come back, and Ctrl-A x still quits."""
    shell.type(b"tty; uname -s\r")
    assert shell.expect(b"/dev/hvc0", 120), bytes(shell.seen)
    assert shell.expect(b"Linux", 120), bytes(shell.seen)
    shell.type(b"\x01x")
    assert shell.wait(60) == STATUS_STOPPED, bytes(shell.seen[-3000:])
