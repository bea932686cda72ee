"""The serial console in both directions: bytes typed to the echo guest (tests/guests/echo/)
come back in upper case, through the Python API with a polling and with an interrupt-driven
guest, through `pyvmm run` on a real pseudo-terminal, and through a pipe on its stdin."""

from __future__ import annotations

import os
import re
import select
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from terminal import Terminal

from pyvmm import ExitKind, Machine, MachineConfig
from pyvmm.machine import RunResult

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).resolve().parents[2]
READY = b"echo ready"
WAIT_SECONDS = 60.0  # a boot takes about a second here; software KVM can be much slower
GUEST_TIMEOUT = 120.0


def wait_until(condition: Callable[[], bool], seconds: float = WAIT_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def type_to_guest(kernel: Path, cmdline: str, typed: bytes) -> RunResult:
    """Boot `kernel`, wait for its ready line, type `typed` and return how the run ended."""
    machine = Machine(MachineConfig(kernel=kernel, cmdline=cmdline, timeout=GUEST_TIMEOUT))
    results: list[RunResult] = []
    runner = threading.Thread(target=lambda: results.append(machine.run()), name="machine", daemon=True)
    runner.start()
    try:
        ready = wait_until(lambda: READY in machine.console_output or not runner.is_alive())
        ended = f", guest ended: {results[0].exit.describe()}" if results else ""
        assert ready and runner.is_alive(), f"no ready line in {machine.console_output!r}{ended}"
        machine.send_input(typed)
        runner.join(GUEST_TIMEOUT + 10)
        assert not runner.is_alive(), f"the guest did not end: {machine.console_output!r}"
    finally:
        if runner.is_alive():
            machine.stop()
            runner.join(10)
    assert results, "Machine.run() raised (see the thread's traceback above)"
    return results[0]


def serial_accesses(result: RunResult) -> tuple[int, int]:
    (serial,) = [entry for entry in result.stats.ranges if entry.bus == "port" and entry.base == 0x3F8]
    return serial.reads, serial.writes


@pytest.mark.parametrize("mode", ["poll", "irq"])
def test_typed_bytes_come_back_in_upper_case(guests: Path, mode: str) -> None:
    result = type_to_guest(guests / "echo.elf", f"mode={mode}", b"hello world q")
    text = result.console_text
    assert "HELLO WORLD" in text, text
    if mode == "poll":
        assert text == "echo ready (poll)\nHELLO WORLD Q\nbye count=13\n"
    else:
        match = re.fullmatch(r"echo ready \(irq\)\nHELLO WORLD Q\nirqs=(\d+)\nbye count=13\n", text)
        assert match and int(match[1]) > 0, text
    assert result.exit.kind is ExitKind.DEBUG_EXIT, result.exit
    assert result.exit.code == 13 and result.status == 27
    reads, writes = serial_accesses(result)
    assert reads > 0 and writes >= len(text)
    assert result.stats.exits["IO"] >= reads + writes


def test_a_long_burst_arrives_whole_and_in_order(guests: Path) -> None:
    """More than the UART's FIFO and the guest's rings hold at once: the guest must stop
    and restart reception and wait for room to send, without losing or reordering a byte."""
    alphabet = b"abcdefghijklmnoprstuvwxyz0123456789 .\n"  # no q before the end
    burst = bytes(alphabet[i * 7 % len(alphabet)] for i in range(3000)) + b"q"
    result = type_to_guest(guests / "echo.elf", "mode=irq", burst)
    expected = b"echo ready (irq)\n" + burst.upper() + b"\nirqs="
    assert result.console.startswith(expected), result.console[-200:]
    assert result.console.endswith(f"\nbye count={len(burst)}\n".encode())
    assert result.exit.code == len(burst)


def test_typing_on_a_terminal(guests: Path) -> None:
    """`pyvmm run` on a real pseudo-terminal, with the interrupt-driven guest."""
    kernel = str(guests / "echo.elf")
    command = [sys.executable, "-m", "pyvmm", "run", "--kernel", kernel, "--cmdline", "mode=irq"]
    terminal = Terminal(command, ROOT)
    try:
        assert terminal.expect(READY, WAIT_SECONDS), bytes(terminal.seen)
        terminal.type(b"abc")
        assert terminal.expect(b"ABC", WAIT_SECONDS), bytes(terminal.seen)
        terminal.type(b"q")
        status = terminal.wait(WAIT_SECONDS)
    finally:
        terminal.close()
    assert status is not None, "pyvmm did not exit after q"
    assert status == (4 << 1) | 1


PYVMM = [sys.executable, "-m", "pyvmm"]


def read_until(fd: int, wanted: bytes, seconds: float = WAIT_SECONDS) -> bytes:
    """What comes out of `fd` until `wanted` has (or the time is up, or it ends)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while wanted not in seen and (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            data = os.read(fd, 4096)
            if not data:
                break
            seen += data
    return seen


def piped_run(kernel: Path, *args: str) -> subprocess.Popen[bytes]:
    """`pyvmm run` with pipes for stdin and stdout, as a script drives it."""
    command = [*PYVMM, "run", "--kernel", str(kernel), *args]
    pipe = subprocess.PIPE
    return subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe)


@pytest.mark.parametrize("mode", ["poll", "irq"])
def test_a_pipe_on_stdin_types_on_the_console(guests: Path, mode: str) -> None:
    """As `(sleep 45; echo poweroff) | pyvmm run` does it: bytes written to the pipe
    reach the guest as they come, unchanged, and its answer comes back on stdout."""
    process = piped_run(guests / "echo.elf", "--cmdline", f"mode={mode}", "--timeout", str(GUEST_TIMEOUT))
    assert process.stdin is not None and process.stdout is not None
    try:
        seen = read_until(process.stdout.fileno(), READY + b" (" + mode.encode() + b")\n")
        assert seen.endswith(b")\n"), seen  # ready: what comes now is the guest's to read
        process.stdin.write(b"hello\x01x world q")  # Ctrl-A x is no escape key here
        process.stdin.flush()
        output, errors = process.communicate(timeout=GUEST_TIMEOUT + 30)
    finally:
        process.kill()
        process.wait()
    text = (seen + output).decode()
    irqs = r"irqs=\d+\n" if mode == "irq" else ""
    assert re.fullmatch(rf"echo ready \({mode}\)\nHELLO\x01X WORLD Q\n{irqs}bye count=15\n", text), text
    assert process.returncode == (15 << 1) | 1, errors  # the guest's own end, code = bytes read
    assert "Traceback" not in errors.decode()


def test_a_pipe_larger_than_the_consoles_buffer_loses_nothing(guests: Path) -> None:
    """`cat file | pyvmm run`: 100,000 bytes, more than the UART's 64 KiB host buffer
    takes at once, all reach the guest (it counts them) because the piped input waits
    for room instead of letting the buffer drop the rest."""
    size = 100_000
    process = piped_run(guests / "echo.elf", "--timeout", str(GUEST_TIMEOUT))
    assert process.stdin is not None and process.stdout is not None
    try:
        # After the guest set its UART up: a byte in the UART before that is lost to
        # its FIFO reset, as on real hardware.
        seen = read_until(process.stdout.fileno(), READY + b" (poll)\n")
        output, errors = process.communicate(b"a" * size + b"q", timeout=GUEST_TIMEOUT + 30)
    finally:
        process.kill()
        process.wait()
    text = (seen + output).decode()
    assert f"bye count={size + 1}\n" in text, text[-200:]
    assert text.count("A") == size
    assert "Traceback" not in errors.decode()


def test_the_end_of_the_input_leaves_the_guest_running(guests: Path) -> None:
    """The pipe closes after "abc": the guest has had it and runs on (as under QEMU)
    until pyvmm's --timeout stops it; the end of the input is no error."""
    process = piped_run(guests / "echo.elf", "--timeout", "5")
    assert process.stdin is not None and process.stdout is not None
    try:
        seen = read_until(process.stdout.fileno(), READY + b" (poll)\n")
        process.stdin.write(b"abc")
        process.stdin.close()
        output = seen + read_until(process.stdout.fileno(), b"ABC")
        status = process.wait(60)
        errors = process.stderr.read().decode() if process.stderr else ""
    finally:
        process.kill()
        process.wait()
    assert output == b"echo ready (poll)\nABC", output
    assert status == 72, errors
    assert errors == "pyvmm: guest ended: stopped: timed out after 5.0 s\n"


def test_a_closed_stdin_is_no_input(guests: Path) -> None:
    """`pyvmm run <&-`: Python has no sys.stdin and fd 0 is the first file pyvmm
    opens; nothing is read from it, and the guest runs as with /dev/null."""
    command = f"exec {shlex.join([*PYVMM, 'run', '--kernel', str(guests / 'hello.elf')])} <&-"
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.stdout == "Hello from the pyvmm demo guest!\nbye\n"
    assert result.returncode == 0 and result.stderr == "", result.stderr
