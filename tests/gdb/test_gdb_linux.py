"""The real gdb against the default Linux guest's kernel (its vmlinux, symbols but no
debug information): a clone of the session's booted guest (tests/linux_snapshot.py)
resumed by `pyvmm run --incoming ... --gdb ... --gdb-wait`; gdb breaks at a kernel
function the shell's next command reaches, shows the backtrace and the registers,
and lets the guest run on."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from gdb.test_gdb_pyvmm import free_port
from gdb.test_server import GDB
from linux_snapshot import CLI_OPTIONS, GuestSnapshot
from test_linux_guest import images

pytestmark = pytest.mark.kvm

FUNCTION = "ksys_write"  # every `echo` of the shell goes through it


def test_gdb_breaks_in_the_linux_kernel_and_shows_the_backtrace(default_guest: GuestSnapshot) -> None:
    vmlinux = images("default")["vmlinux"]
    port = free_port()
    command = [sys.executable, "-m", "pyvmm", "run", *CLI_OPTIONS, "--incoming", f"file:{default_guest.path}"]
    vm = subprocess.Popen(
        [*command, "--gdb", f"tcp::{port}", "--gdb-wait", "--timeout", "600"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert vm.stderr is not None and vm.stdin is not None
        said = ""
        while "gdb: waiting for a debugger" not in said:  # after the images' own line
            line = vm.stderr.readline().decode()
            assert line, said
            said += line

        def type_when_running() -> None:
            time.sleep(3)  # gdb has set its breakpoint and continued by then
            assert vm.stdin is not None
            vm.stdin.write(b"echo from-the-shell\n")
            vm.stdin.flush()

        typist = threading.Thread(target=type_when_running, daemon=True)
        assert GDB is not None
        argv = [GDB, "-nx", "-batch"]
        for line in (
            f"file {vmlinux}", f"target remote 127.0.0.1:{port}",
            f"hbreak {FUNCTION}", "continue", "bt 3", "info registers rip", "delete", "detach",
        ):  # fmt: skip
            argv += ["-ex", line]
        gdb = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        typist.start()
        output, _ = gdb.communicate(timeout=300)
        typist.join()
        vm.stdin.write(b"poweroff\n")
        vm.stdin.flush()
        stdout, stderr = vm.communicate(timeout=300)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    assert "Hardware assisted breakpoint 1, 0x" in output or f"in {FUNCTION} ()" in output, output
    assert "#0  " in output and FUNCTION in output.split("#0", 1)[1].splitlines()[0], output
    assert "#1  " in output, output  # a caller: the stack was walked through guest virtual memory
    assert "rip" in output and FUNCTION in output.split("rip", 1)[1].splitlines()[0], output
    assert b"from-the-shell" in stdout  # detached: the guest ran on and answered
    assert vm.returncode == 0, stderr.decode()[-2000:]
