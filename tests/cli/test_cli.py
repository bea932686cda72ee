"""`pyvmm run` as a user runs it: exit statuses, the console, one-line errors."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guest_code import SPIN, multiboot_image, write
from terminal import Terminal

from pyvmm.cli import build_parser, main
from pyvmm.config import DEFAULT_MEMORY, MAX_CPUS, MAX_TIMEOUT, MachineConfig
from pyvmm.errors import ConfigError

PYVMM = [sys.executable, "-m", "pyvmm"]


def pyvmm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYVMM, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.kvm
def test_demo_guest_on_the_command_line(guests: Path) -> None:
    result = pyvmm("run", "--kernel", str(guests / "hello.elf"), "--stats")
    assert "Hello from the pyvmm demo guest!" in result.stdout
    assert result.returncode == 0
    assert "exits:" in result.stderr and "serial (COM1)" in result.stderr


@pytest.mark.kvm
def test_debug_exit_status(guests: Path) -> None:
    result = pyvmm("run", "--kernel", str(guests / "mbinfo.elf"), "--cmdline", "exit=4")
    assert result.returncode == 9


def test_missing_kernel(tmp_path: Path) -> None:
    assert_one_line_error(pyvmm("run", "--kernel", str(tmp_path / "nope")), "nope")


NINES = pytest.param("9" * 5000, id="5000 nines")  # past int()'s 4300 digits


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`pyvmm run --kernel k ARGS...` in this process: it must stop at the parser with
    status 2 and one `pyvmm: error: ... (see pyvmm run --help)` line. That line."""
    with pytest.raises(SystemExit) as caught:
        main(["run", "--kernel", "no-such-kernel", *args])
    assert caught.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pyvmm: error: ") and lines[0].endswith(" (see pyvmm run --help)"), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "size", ["0", "-5", "lots", "1.5G", "1Q", "99999999T", "65T", "4097B", "\u0662\u0665\u0666M", NINES]
)
def test_bad_memory_sizes(capsys: pytest.CaptureFixture[str], size: str) -> None:
    line = usage_error(capsys, "--memory", size)
    assert "argument --memory: " in line and len(line) < 300


@pytest.mark.parametrize("cpus", ["0", "-1", "two", "1.5", "1025", "99999", "100000", NINES])
def test_bad_cpu_counts(capsys: pytest.CaptureFixture[str], cpus: str) -> None:
    assert "argument --cpus: " in usage_error(capsys, "--cpus", cpus)


def test_more_cpus_than_any_kvm_allows(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, "--cpus", "99999")
    assert f"at most {MAX_CPUS} vCPUs, got 99999" in line


@pytest.mark.parametrize(
    "seconds",
    ["inf", "-inf", "infinity", "1e309", "99999999999999", "nan", "-nan", "0", "-0", "-1", "", NINES],
)
def test_bad_timeouts(capsys: pytest.CaptureFixture[str], seconds: str) -> None:
    assert "argument --timeout: " in usage_error(capsys, "--timeout", seconds)


@pytest.mark.parametrize("flag", ["--kernel", "--initrd"])
def test_an_empty_file_name(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    assert f"argument {flag}: expected a file path, got an empty one" in usage_error(capsys, flag, "")


def test_the_cli_refuses_in_machine_configs_words(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, "--timeout", "nan")
    with pytest.raises(ConfigError) as caught:
        MachineConfig(kernel="vmlinuz", timeout=math.nan)
    words = str(caught.value).removeprefix("MachineConfig.timeout: ")
    assert line == f"pyvmm: error: argument --timeout: {words} (see pyvmm run --help)"


def test_good_numbers_are_read() -> None:
    args = build_parser().parse_args(
        ["run", "--kernel", "k", "--cpus", str(MAX_CPUS), "--memory", "1G", "--timeout", "1e-3"]
    )
    assert (args.cpus, args.memory, args.timeout) == (MAX_CPUS, 1 << 30, 0.001)
    assert build_parser().parse_args(["run"]).memory == DEFAULT_MEMORY
    assert build_parser().parse_args(["run", "--timeout", str(MAX_TIMEOUT)]).timeout == MAX_TIMEOUT


def test_a_bad_number_is_a_usage_error_end_to_end() -> None:
    """The whole command, as a user runs it: status 2, one line, no traceback."""
    result = pyvmm("run", "--kernel", "x", "--timeout", "inf")
    assert_one_line_error(result, "pyvmm: error: argument --timeout:", "got inf")
    assert result.returncode == 2


def test_malformed_image(tmp_path: Path) -> None:
    truncated = b"\x7fELF\x02\x01\x01" + bytes(20)
    assert_one_line_error(pyvmm("run", "--kernel", str(write(tmp_path, "bad.elf", truncated))), "bad.elf")


def test_unknown_flag() -> None:
    assert_one_line_error(pyvmm("run", "--kernel", "x", "--bogus"), "--bogus")
    assert_one_line_error(pyvmm("run", "--cpus"), "--cpus")
    assert_one_line_error(pyvmm("run", "--guest", "nope"), "--guest")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_device_that_is_not_kvm(guests: Path) -> None:
    """/dev/kvm replaced by /dev/null in a private mount namespace."""
    script = f"mount --bind /dev/null /dev/kvm && exec {' '.join(PYVMM)} run --kernel {guests / 'hello.elf'}"
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "KVM_GET_API_VERSION")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists(),
    reason="needs root, setpriv and a system python3 an unprivileged user can run",
)
def test_no_permission_on_dev_kvm() -> None:
    """An unprivileged user without access to /dev/kvm gets a hint, not a traceback."""
    root = Path(__file__).resolve().parents[2]
    probe = f"import sys; sys.path.insert(0, {str(root)!r}); from pyvmm.kvm import Kvm; Kvm()"
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", probe]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "KvmUnavailableError: no permission to open /dev/kvm" in result.stderr


@pytest.mark.kvm
def test_terminal_console_escape_key_quits(tmp_path: Path) -> None:
    """Through a real pseudo-terminal: the guest spins, the user types Ctrl-A x."""
    kernel = write(tmp_path, "spin.img", multiboot_image(SPIN))
    terminal = Terminal([*PYVMM, "run", "--kernel", str(kernel)], Path.cwd())
    try:
        time.sleep(2.0)
        terminal.type(b"\x01x")
        status = terminal.wait(30)
    finally:
        terminal.close()
    assert status == 72


# Prints "B" and a newline on COM1, then asks the i8042 for a reset (command 0xFE).
BOOT_THEN_RESET = (
    b"\x66\xba\xf8\x03"  # mov dx, 0x3f8
    b"\xb0B\xee\xb0\n\xee"  # mov al, 'B'; out dx, al; mov al, 10; out dx, al
    b"\xb0\xfe\xe6\x64"  # mov al, 0xfe; out 0x64, al
) + SPIN


@pytest.mark.kvm
def test_a_reboot_ends_pyvmm_with_the_reboot_status(tmp_path: Path) -> None:
    kernel = write(tmp_path, "reset.img", multiboot_image(BOOT_THEN_RESET))
    result = pyvmm("run", "--kernel", str(kernel))
    assert result.stdout == "B\n"
    assert result.returncode == 64, result.stderr


@pytest.mark.kvm
def test_on_reboot_restart_boots_the_guest_again(tmp_path: Path) -> None:
    kernel = write(tmp_path, "reset.img", multiboot_image(BOOT_THEN_RESET))
    command = [*PYVMM, "run", "--kernel", str(kernel), "--on-reboot", "restart"]
    pipe = subprocess.PIPE
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe)
    assert process.stdout is not None
    try:
        boots = [process.stdout.readline() for _ in range(3)]  # three boots: pyvmm went on
    finally:
        process.kill()
        _, errors = process.communicate(timeout=30)
    assert boots == [b"B\n"] * 3
    assert errors.count(b"the guest rebooted; starting it again") >= 2


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--disk", "a.img,cache=none", "unknown option 'cache'"),
        ("--net", "user", "only TAP"),
        ("--net", "tap=tap0,mac=zz", "not a MAC"),
        ("--transport", "ccw", "invalid choice"),
        ("--device", "edu", "invalid choice"),
    ],
)
def test_bad_device_options_are_one_line(flag: str, value: str, words: str) -> None:
    result = pyvmm("run", "--kernel", "/bin/true", flag, value)
    assert_one_line_error(result, words)
    assert result.returncode == 2


@pytest.mark.parametrize("kind", ["text", "dev-zero", "fifo", "directory", "sparse-giant"])
def test_a_kernel_that_is_no_kernel_is_one_line(tmp_path: Path, kind: str) -> None:
    """What a user may hand --kernel by mistake: one line, status 1, no hang."""
    if kind == "text":
        kernel = write(tmp_path, "hostname", b"vm\n")
    elif kind == "dev-zero":
        kernel = Path("/dev/zero")
    elif kind == "fifo":
        kernel = tmp_path / "fifo"
        os.mkfifo(kernel)
    elif kind == "directory":
        kernel = tmp_path
    else:
        kernel = tmp_path / "giant"
        with kernel.open("wb") as file:
            file.truncate(100 << 30)  # 100 GiB, sparse
    result = pyvmm("run", "--kernel", str(kernel), "--timeout", "5", timeout=60)
    assert_one_line_error(result)
    assert result.returncode == 1


# --- bad disks and network cards (issue 12): one line each, before the guest runs -------------

# Prints "B" and a newline on COM1, then spins: the devices are built once "B" is out.
BOOT_THEN_SPIN = b"\x66\xba\xf8\x03\xb0B\xee\xb0\n\xee" + SPIN


@pytest.mark.kvm
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_disk_that_is_no_image_is_one_line(guests: Path, tmp_path: Path, kind: str) -> None:
    image, words = {
        "missing": (tmp_path / "absent.img", "absent.img: no such file"),
        "directory": (tmp_path, "is a directory, not a disk image"),
    }[kind]
    result = pyvmm("run", "--kernel", str(guests / "hello.elf"), "--disk", str(image), timeout=60)
    assert_one_line_error(result, "pyvmm: error: ", words)
    assert result.returncode == 1
    assert "Hello" not in result.stdout  # refused before the guest ran


@pytest.mark.kvm
def test_two_vms_cannot_open_one_image_for_writing(tmp_path: Path) -> None:
    """The first pyvmm holds the image while its guest spins; a second one asking for
    the same image fails at once with one line naming the lock, and the first runs on."""
    kernel = write(tmp_path, "spin.img", multiboot_image(BOOT_THEN_SPIN))
    image = write(tmp_path, "shared.img", bytes(1 << 16))
    first = subprocess.Popen(
        [*PYVMM, "run", "--kernel", str(kernel), "--disk", str(image)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert first.stdout is not None
    try:
        assert first.stdout.readline() == b"B\n"  # its disk is open and locked by now
        started = time.monotonic()
        second = pyvmm("run", "--kernel", str(kernel), "--disk", str(image), timeout=60)
        assert time.monotonic() - started < 30  # at once, not after a wait for the lock
        assert_one_line_error(second, "pyvmm: error: ", "shared.img", "in use by another VM")
        assert second.returncode == 1 and second.stdout == ""
        assert first.poll() is None  # the first VM was not disturbed
    finally:
        first.terminate()
        _, errors = first.communicate(timeout=30)
    assert first.returncode == 72, errors  # stopped by SIGTERM, as the README says


needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or not os.path.exists("/dev/net/tun"),
    reason="needs root, unshare and /dev/net/tun",
)


@pytest.mark.kvm
@needs_namespaces
def test_a_tap_that_does_not_exist_is_one_line(guests: Path) -> None:
    """In a network namespace of its own (unshare -n): nothing is created there either."""
    command = [*PYVMM, "run", "--kernel", str(guests / "hello.elf"), "--net", "tap=nosuchtap0"]
    # Then: was a TAP of that name made (as TUNSETIFF would, for root)? 99 if so.
    made = "ip link show nosuchtap0 >/dev/null 2>&1 && exit 99"
    script = f"{shlex.join(command)}; status=$?; {made}; exit $status"
    result = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert_one_line_error(result, "pyvmm: error: ", "TAP device 'nosuchtap0' does not exist")
    assert result.returncode == 1


@pytest.mark.kvm
@needs_namespaces
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_no_permission_for_dev_net_tun_is_one_line(guests: Path, tmp_path: Path) -> None:
    """/dev/net/tun replaced by a file nobody may open (a private mount namespace), and
    pyvmm run as root without CAP_DAC_OVERRIDE, as a user without access to it."""
    closed = write(tmp_path, "tun", b"")
    closed.chmod(0)
    pyvmm_command = [*PYVMM, "run", "--kernel", str(guests / "hello.elf"), "--net", "tap"]
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *pyvmm_command]
    script = f"mount --bind {shlex.quote(str(closed))} /dev/net/tun && exec {shlex.join(drop)}"
    result = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert_one_line_error(result, "pyvmm: error: ", "no permission to open /dev/net/tun")
    assert result.returncode == 1
