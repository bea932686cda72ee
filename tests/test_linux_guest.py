"""Real Linux guests, booted by `pyvmm run` as a user runs it: the kernels and the
busybox initramfs of `pyvmm images build` (the default kernel built from Debian's
linux-source, and Debian's stock cloud kernel with `--stock`).

Every scenario boots once and its assertions share that boot: on a software KVM a
boot takes minutes (docs/boot.md). The stock kernel is checked up to its memory map
only: on kvm_pvm it takes longer than CI can give it to reach init. The guest's init
runs the command given by `pyvmm.run=` on the kernel command line, prints `pyvmm-run: exit=N` and powers off;
the interactive tests drive the shell through a real pseudo-terminal instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from terminal import Terminal

from pyvmm.images.initramfs import run_parameter

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


@dataclass(frozen=True)
class Scenario:
    name: str
    flavour: str  # "default" or "stock"
    image: str  # "bzImage" or "vmlinux"
    cpus: int
    decompress: str = "host"


SCENARIOS = [
    Scenario("bzimage-host-1cpu", "default", "bzImage", 1),
    Scenario("bzimage-guest-1cpu", "default", "bzImage", 1, decompress="guest"),
    Scenario("vmlinux-pvh-2cpu", "default", "vmlinux", 2),
]
# Debian's stock kernel takes too long on kvm_pvm to reach init in CI (its kernel
# code runs emulated there); it is checked up to its memory map.
STOCK = Scenario("stock-bzimage-1cpu", "stock", "bzImage", 1)
STOCK_SECONDS = 120


@dataclass
class Boot:
    scenario: Scenario
    status: int
    output: str
    started: float  # host time.time() around the run
    ended: float

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


def run_command(scenario: Scenario, *, cmdline: str, timeout: int = BOOT_SECONDS) -> list[str]:
    found = images(scenario.flavour)
    return [
        *PYVMM, "-v", "run", "--kernel", str(found[scenario.image]), "--initrd", str(found["initramfs"]),
        "--cpus", str(scenario.cpus), "--memory", f"{MEMORY_MIB}M",
        "--kernel-decompress", scenario.decompress, "--timeout", str(timeout),
        "--cmdline", f"console=ttyS0 {cmdline}",
    ]  # fmt: skip


@pytest.fixture(scope="module", params=SCENARIOS, ids=lambda scenario: scenario.name)
def boot(request: pytest.FixtureRequest) -> Boot:
    scenario: Scenario = request.param
    command = run_command(scenario, cmdline=f"pyvmm.test={scenario.name} {run_parameter(REPORT)}")
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=BOOT_SECONDS + 60, cwd=ROOT)
    return Boot(scenario, result.returncode, result.stdout + result.stderr, started, time.time())


def test_the_kernel_boots_to_init(boot: Boot) -> None:
    assert "Linux version " in boot.output, boot.output[-3000:]
    assert "pyvmm-init: ready" in boot.output, boot.output[-3000:]
    # pyvmm's log (-v) says which entry it took.
    if boot.scenario.decompress == "guest":
        assert "unpacked by the guest" in boot.output  # the kernel's own decompressor ran
    else:
        assert "Xen PVH entry" in boot.output  # the vmlinux, or the one pyvmm unpacked
    assert re.match(r"\d+\.\d+", boot.value("kernel"))


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
    assert f"pyvmm.test={boot.scenario.name}" in boot.value("cmdline").split()


def test_the_guest_clock_is_the_hosts(boot: Boot) -> None:
    guest_time = int(boot.value("date"))
    assert boot.started - 5 <= guest_time <= boot.ended + 5


def test_poweroff_ends_pyvmm_with_status_0(boot: Boot) -> None:
    assert "pyvmm-run: exit=0" in boot.output
    assert boot.status == 0, boot.output[-3000:]


def test_the_stock_kernel_starts_with_pyvmms_memory_map() -> None:
    """Debian's LZ4 bzImage, unpacked by pyvmm and entered through PVH, runs and reads
    the command line and the memory map pyvmm gave it (STOCK_SECONDS of it)."""
    # earlyprintk: the console would only start with the 8250 driver, minutes later.
    early = "earlyprintk=serial,ttyS0,115200"
    command = run_command(STOCK, cmdline=f"{early} pyvmm.test=stock", timeout=STOCK_SECONDS)
    result = subprocess.run(command, capture_output=True, text=True, timeout=STOCK_SECONDS + 60, cwd=ROOT)
    output = result.stdout + result.stderr
    assert "(lz4 vmlinux)" in output and "Xen PVH entry" in output, output[-3000:]
    assert re.search(r"Linux version \S+-cloud-amd64 \(debian-kernel@", output), output[-3000:]
    assert f"Command line: console=ttyS0 {early} pyvmm.test=stock" in output
    top = MEMORY_MIB * 1024 * 1024 - 1
    assert f"BIOS-e820: [mem 0x0000000000100000-0x{top:016x}] usable" in output
    assert result.returncode == STATUS_STOPPED  # still booting when the time was up


@pytest.fixture
def shell() -> Iterator[Terminal]:
    """`pyvmm run` of the default bzImage on a pty, at the guest shell's prompt."""
    command = run_command(SCENARIOS[0], cmdline="")
    terminal = Terminal(command, ROOT)
    try:
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


def test_a_person_at_the_shell_leaves_with_the_escape_key(shell: Terminal) -> None:
    shell.type(b"uname -s\r")
    assert shell.expect(b"Linux", 120), bytes(shell.seen)
    shell.type(b"\x01x")
    assert shell.wait(60) == STATUS_STOPPED, bytes(shell.seen[-3000:])
