"""QMP against a real `pyvmm run` (the counting guest on /dev/kvm), through the real
qemu.qmp client: status, stop and cont, registers, migrate to a file that a second
process resumes, statistics, quit."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_code import write
from machine.counter_guest import COUNTER, counted
from qemu.qmp import QMPClient
from terminal import Terminal

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).resolve().parents[2]


class Pyvmm:
    """`pyvmm run` in a subprocess, its stdout collected as it comes."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyvmm", "run", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(65536):
            self.output += chunk

    def wait_output(self, length: int, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while len(self.output) < length:
            assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
            assert time.monotonic() < deadline, "no output"
            time.sleep(0.01)

    def close(self) -> tuple[int, str]:
        try:
            status = self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._reader.join(5)
        assert self.process.stderr is not None
        return status, self.process.stderr.read().decode()


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The counter's kernel and a socket path short enough for AF_UNIX."""
    short = Path(f"/tmp/qmp-{id(tmp_path):x}")
    short.mkdir()
    yield write(tmp_path, "counter.bin", COUNTER), short
    for leftover in short.iterdir():
        leftover.unlink()
    short.rmdir()


async def connected(socket: Path) -> QMPClient:
    deadline = time.monotonic() + 30
    while not socket.exists():
        assert time.monotonic() < deadline, "no QMP socket"
        await asyncio.sleep(0.02)
    client = QMPClient("test")
    await client.connect(str(socket))
    return client


async def next_event(client: QMPClient, name: str) -> dict[str, object]:
    while True:
        event = await asyncio.wait_for(client.events.get(), 30)
        if event["event"] == name:
            return dict(event)


def test_a_qmp_client_drives_pyvmm(counter: tuple[Path, Path], tmp_path: Path) -> None:
    kernel, short = counter
    socket, snapshot = short / "qmp.sock", tmp_path / "vm.snap"
    vm = Pyvmm("--kernel", str(kernel), "--kernel-format", "flat", "--memory", "64M",
               "--qmp", f"unix:{socket},server=on,wait=off", "--name", "counter")  # fmt: skip

    async def drive() -> int:
        client = await connected(socket)
        assert await client.execute("query-name") == {"name": "counter"}
        vm.wait_output(16)
        assert await client.execute("query-status") == {"running": True, "status": "running"}
        cpus = await client.execute("query-cpus-fast")
        assert isinstance(cpus, list) and len(cpus) == 1 and cpus[0]["thread-id"] > 0  # type: ignore[index]

        await client.execute("stop")
        await next_event(client, "STOP")
        assert await client.execute("query-status") == {"running": False, "status": "paused"}
        printed = len(vm.output)
        await asyncio.sleep(0.3)
        assert len(vm.output) == printed  # paused: not a byte more
        registers = await client.execute("human-monitor-command", {"command-line": "info registers"})
        assert isinstance(registers, str) and "RIP=" in registers and "RBX=" in registers

        await client.execute("migrate", {"uri": f"file:{snapshot}"})
        while (await client.execute("query-migrate")).get("status") != "completed":  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        assert await client.execute("query-status") == {"running": False, "status": "paused"}

        stats = await client.execute("query-stats", {"target": "vcpu"})
        assert isinstance(stats, list)
        counters = await client.execute("__org.pyvmm_query-counters")
        assert isinstance(counters, dict) and counters

        await client.execute("cont")
        await next_event(client, "RESUME")
        vm.wait_output(printed + 8)
        await client.execute("quit")
        shutdown = await next_event(client, "SHUTDOWN")
        assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
        await client.disconnect()
        return printed

    printed = asyncio.run(drive())
    status, stderr = vm.close()
    assert status == 0, stderr  # quit: as QEMU's
    assert counted(bytes(vm.output), 0)

    # The snapshot resumes in a new process with the next number.
    resumed = Pyvmm("--kernel", str(kernel), "--kernel-format", "flat", "--memory", "64M",
                    "--incoming", f"file:{snapshot}", "--timeout", "1")  # fmt: skip
    resumed.close()
    assert len(resumed.output) >= 8 and counted(bytes(resumed.output), printed)


def test_a_snapshot_shows_its_progress_on_the_terminal(counter: tuple[Path, Path], tmp_path: Path) -> None:
    """pyvmm on a terminal draws the migration's progress on it (stderr)."""
    kernel, short = counter
    socket = short / "qmp.sock"
    command = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(kernel), "--kernel-format", "flat"]
    terminal = Terminal([*command, "--memory", "64M", "--qmp", f"unix:{socket}"], ROOT)

    async def migrate() -> None:
        client = await connected(socket)
        await client.execute("migrate", {"uri": f"file:{tmp_path / 'vm.snap'}"})
        while (await client.execute("query-migrate")).get("status") != "completed":  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        await client.execute("quit")
        await client.disconnect()

    try:
        asyncio.run(migrate())
        assert terminal.wait(30) == 0
        assert re.search(rb"snapshot: done in [\d.]+s \(64 MiB\)", bytes(terminal.seen)), bytes(
            terminal.seen
        )[-500:]
    finally:
        terminal.close()
