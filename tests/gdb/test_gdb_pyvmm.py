"""The real gdb, in batch mode, against `pyvmm run --gdb ... --gdb-wait` booting a guest
built with symbols (tests/guests/gdbtarget): break at a function, read its argument
and a global, step a line, watch a write, continue to the guest's exit."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from gdb.test_server import GDB

pytestmark = pytest.mark.kvm


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_gdb_breaks_reads_steps_watches_and_sees_the_exit(guests: Path) -> None:
    kernel = guests / "gdbtarget.elf"
    port = free_port()
    pyvmm = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(kernel)]
    vm = subprocess.Popen(
        [*pyvmm, "--gdb", f"tcp::{port}", "--gdb-wait"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert vm.stderr is not None
        waiting = vm.stderr.readline()  # once the stub listens
        assert "gdb: waiting for a debugger" in waiting, waiting
        assert GDB is not None
        commands = [
            "set architecture i386:x86-64", f"file {kernel}", f"target remote 127.0.0.1:{port}",
            "break tick", "continue", "print n", "print counter",
            "next", "next", "print counter",
            "delete", "set can-use-hw-watchpoints 0", "watch counter", "continue",
            "delete", "continue",
        ]  # fmt: skip
        argv = [GDB, "-nx", "-batch"]
        for command in commands:
            argv += ["-ex", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        output = done.stdout + done.stderr
        stdout, stderr = vm.communicate(timeout=60)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    assert re.search(r"Breakpoint 1, tick \(n=1\)", output), output
    assert "$1 = 1" in output and "$2 = 0" in output, output  # n, and counter before the add
    assert "$3 = 1" in output, output  # after stepping over `counter = before + n`
    assert re.search(r"Old value = 1\s+New value = 3", output), output  # the second tick's write
    assert "exited with code 037" in output, output  # status 31, as gdb prints it (octal)
    assert "gdbtarget: counter=15" in stdout
    assert vm.returncode == 31, stderr
