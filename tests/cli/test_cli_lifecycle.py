"""How a `pyvmm run` ends from outside: signals, a vanished terminal, a deadline over
restarts, a stdout nobody reads, the debug-exit port's line. Real guests on /dev/kvm,
a real pty."""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from cli.test_cli import BOOT_THEN_RESET, PYVMM, pyvmm
from guest_code import SPIN, multiboot_image, out_debug_exit32, write

pytestmark = pytest.mark.kvm
PRINT_READY = b"\x66\xba\xf8\x03\xb0R\xee\xb0\n\xee"  # mov dx, 0x3f8; out 'R', '\n'
FLOOD = PRINT_READY[:4] + b"\xb0Z\xee\xeb\xfb"  # mov dx, 0x3f8; again: mov al, 'Z'; out dx, al; jmp again


class PtySession:
    """`pyvmm run` with a pty as its controlling terminal (stdin and stdout), stderr to
    a file. The test keeps the slave side open too, to read the terminal's modes."""

    def __init__(self, args: list[str], stderr: Path) -> None:
        self.master, self.slave = os.openpty()
        self.stderr_path = stderr
        slave = self.slave

        def make_controlling_terminal() -> None:
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        with stderr.open("wb") as errors:
            self.process = subprocess.Popen(
                [*PYVMM, "run", *args], stdin=slave, stdout=slave, stderr=errors,
                start_new_session=True, preexec_fn=make_controlling_terminal,
            )  # fmt: skip

    def raw(self) -> bool:
        lflag = termios.tcgetattr(self.slave)[3]
        return not lflag & (termios.ICANON | termios.ECHO)

    def read_until(self, wanted: bytes, seconds: float) -> bytes:
        seen = b""
        deadline = time.monotonic() + seconds
        os.set_blocking(self.master, False)
        while wanted not in seen and time.monotonic() < deadline:
            try:
                seen += os.read(self.master, 4096)
            except BlockingIOError:
                time.sleep(0.05)
        return seen

    def wait(self, seconds: float) -> int:
        return self.process.wait(seconds)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def spinning_guest(tmp_path: Path) -> Path:
    return write(tmp_path, "spin.img", multiboot_image(PRINT_READY + SPIN))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_stops_the_guest_and_restores_the_terminal(
    spinning_guest: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    session = PtySession(["--kernel", str(spinning_guest)], tmp_path / "stderr")
    try:
        assert b"R" in session.read_until(b"R", 60), session.stderr
        assert session.raw()  # the console owns the terminal while the guest runs
        session.process.send_signal(signum)
        status = session.wait(30)
        assert not session.raw()  # cooked again: ICANON and ECHO are back
    finally:
        session.close()
    assert status == 72, session.stderr
    assert f"stopped: terminated by {signum.name}" in session.stderr
    assert "Traceback" not in session.stderr


def test_the_terminal_going_away_is_a_clean_stop(spinning_guest: Path, tmp_path: Path) -> None:
    """As under nohup or a closed ssh session: the kernel hangs the terminal up (SIGHUP)
    and every later access to it fails with EIO."""
    session = PtySession(["--kernel", str(spinning_guest)], tmp_path / "stderr")
    try:
        assert b"R" in session.read_until(b"R", 60), session.stderr
        os.close(session.master)  # hang up
        status = session.wait(30)
    finally:
        session.close()
    assert status == 72, session.stderr
    assert "Traceback" not in session.stderr


def test_the_timeout_bounds_a_guest_that_always_reboots(tmp_path: Path) -> None:
    kernel = write(tmp_path, "reset.img", multiboot_image(BOOT_THEN_RESET))
    started = time.monotonic()
    result = pyvmm("run", "--kernel", str(kernel), "--on-reboot", "restart", "--timeout", "3", timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 72, result.stderr
    assert "stopped: timed out after 3.0 s" in result.stderr
    assert result.stdout.count("B\n") >= 2  # it did restart meanwhile
    assert elapsed < 20


def test_a_stdout_nobody_reads_does_not_keep_pyvmm_past_its_timeout(tmp_path: Path) -> None:
    """The guest floods COM1 into a pipe nobody reads (4 KiB: full at once). The vCPU
    must not wait for it in a write: the timeout ends the run on time, without a
    traceback, and a line says how much output was dropped. The time counts from
    pyvmm's "booting" line (-v), after the timeout's clock has started."""
    kernel = write(tmp_path, "flood.img", multiboot_image(FLOOD))
    timeout = 3.0
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    lines: list[tuple[float, bytes]] = []
    try:
        process = subprocess.Popen(
            [*PYVMM, "-v", "run", "--kernel", str(kernel), "--timeout", str(timeout)],
            stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE,
        )  # fmt: skip
        os.close(write_end)  # only pyvmm writes to it; this end is never read
        assert process.stderr is not None
        stderr = process.stderr
        reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in stderr))
        reader.start()
        try:
            status = process.wait(60)
        finally:
            process.kill()
            process.wait()
        ended = time.monotonic()
        reader.join(10)
    finally:
        os.close(read_end)
    errors = b"".join(line for _, line in lines).decode()
    booting = [at for at, line in lines if b"booting" in line]
    assert status == 72, errors
    assert booting, errors
    assert ended - booting[0] < timeout + 2.5, errors
    assert f"stopped: timed out after {timeout} s" in errors
    assert "bytes of the guest's console output were dropped: stdout took no more" in errors
    assert "Traceback" not in errors


HELLO_SAYS = len(b"Hello from the pyvmm demo guest!\nbye\n")


@pytest.mark.parametrize("stdout", ["closed pipe", "closed"])
def test_a_stdout_that_fails_is_one_line_and_the_guest_runs_to_its_end(guests: Path, stdout: str) -> None:
    """`pyvmm run | head -0` (the reader has gone: EPIPE) and `pyvmm run >&-` (no
    stdout at all; fd 1 is whatever pyvmm opens first, never written): the guest
    runs to its poweroff, and one line says that its output was dropped and why."""
    command = [*PYVMM, "run", "--kernel", str(guests / "hello.elf")]
    if stdout == "closed":
        result = subprocess.run(
            ["sh", "-c", f"exec {shlex.join(command)} >&-"], stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        why = "stdout failed (closed when pyvmm started)"
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True,
                timeout=120,
            )  # fmt: skip
        finally:
            os.close(write_end)
        why = "stdout failed (Broken pipe)"
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"pyvmm: {HELLO_SAYS} bytes of the guest's console output were dropped: {why}\n"


@pytest.mark.parametrize(("value", "status"), [(35, 71), (128, 1), (0, 1)])
def test_a_debug_exit_says_so_when_its_status_collides(tmp_path: Path, value: int, status: int) -> None:
    """(v << 1) | 1 cut to 8 bits can be pyvmm's own triple-fault (71) or error (1)
    status: the line on stderr tells them apart."""
    kernel = write(tmp_path, "exit.img", multiboot_image(out_debug_exit32(value) + SPIN))
    result = pyvmm("run", "--kernel", str(kernel))
    assert result.returncode == status
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"pyvmm: guest ended: debug-exit (value {value:#x}, status {status})"
    ), result.stderr


def test_the_console_keeps_a_bounded_tail_of_a_flood(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest printing without end: the VMM keeps only the tail, and says how much
    went by."""
    from pyvmm.machine import console
    from pyvmm.machine.machine import Machine, MachineConfig

    monkeypatch.setattr(console, "CONSOLE_TAIL_BYTES", 4096)
    kernel = write(tmp_path, "flood.img", multiboot_image(FLOOD))
    streamed = bytearray()
    result = Machine(MachineConfig(kernel=kernel, timeout=5, console=streamed.extend)).run()
    assert result.exit.detail.startswith("timed out")
    assert len(streamed) > 8192  # the guest printed past the limit...
    assert result.console == b"Z" * 4096  # ...but only the last 4 KiB are kept
    assert result.console_dropped == len(streamed) - 4096


def test_sigterm_under_the_python_api_is_left_to_the_caller() -> None:
    """The signal handlers exist only inside `pyvmm run`: a program that embeds
    `Machine` keeps its own."""
    from pyvmm.cli.signals import stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(lambda name: None):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    assert sys.platform.startswith("linux")
