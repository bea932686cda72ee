"""A real Linux guest paused, snapshotted, restored and cloned through QMP (issue 17):
ONE boot of the default guest (its busybox initramfs, a scratch --disk as /dev/vda,
virtio-net on a TAP in a network namespace of the test's own) tells the whole story:

1. the shell answers; the guest's busybox nc opens a TCP connection to a host-side
   socket in the namespace; bytes go both ways;
2. QMP stop, a minute paused, cont: the console, the disk (written, synced, read back
   past the page cache) and the TCP connection work on, and dmesg has no soft-lockup
   or RCU-stall line;
3. QMP migrate to a file, quit;
4. `pyvmm run --incoming file:SNAP` with the same options (its own copy of the disk,
   taken after the first process quit; a TAP of the same name in the same namespace):
   the shell, the disk and the same TCP connection (the host kept its socket open while
   no VM ran) carry on both ways;
5. two clones side by side from the same file, each with its own disk copy and its
   own TAP (one namespace each): both shells answer; system_powerdown on one powers it
   off cleanly (pyvmm exits 0), quit ends the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api.test_qmp_pyvmm import connected, next_event
from guest_network import GUEST_ADDRESS, HOST_ADDRESS, PREFIX, TAP
from net.netns import Namespace, why_not_usable
from qemu.qmp import QMPClient
from test_linux_guest import BOOT_SECONDS, ROOT, images

pytestmark = pytest.mark.kvm

PAUSE_SECONDS = 60  # "paused for a minute" (issue 17)
COMMAND_SECONDS = 120  # one shell command on a software KVM
PORT = 7007
DISK_BYTES = 4 << 20
OPTIONS = ("--guest", "default", "--root", "initramfs", "--memory", "256M")
PROMPT = b"/ # "
# What Linux prints when a pause looks like a hung CPU to it (kernel/watchdog.c,
# kernel/rcu/tree_stall.h).
STALLS = ("soft lockup", "rcu_sched detected stall", "rcu: INFO", "detected stalls", "hard LOCKUP")


class Vm:
    """`pyvmm run` inside a namespace, its console on pipes, QMP on a socket."""

    def __init__(
        self, namespace: Namespace, qmp: Path, disk: Path, *extra: str, copy: Path | None = None
    ) -> None:
        # A restore gets its own copy of the disk, at a path of its own: pyvmm names a
        # placed disk by its place and type, so the snapshot fits any copy.
        command = [
            "ip", "netns", "exec", namespace.name,
            sys.executable, "-m", "pyvmm", "run", *OPTIONS, "--disk", str(copy or disk),
            "--net", f"tap={TAP}", "--qmp", f"unix:{qmp}",
            "--timeout", str(BOOT_SECONDS), *extra,
        ]  # fmt: skip
        self.qmp = qmp
        self.output = bytearray()
        self._serial = 0
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            self.output += chunk

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def wait_for(self, wanted: bytes, seconds: float, start: int = 0) -> None:
        deadline = time.monotonic() + seconds
        while self.output.find(wanted, start) < 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                ended = "" if self.process.poll() is None else f"pyvmm ended: {self.close(1)}\n"
                pytest.fail(
                    f"{ended}no {wanted!r} after {seconds} s; the console ends:\n{self.text()[-3000:]}"
                )
            time.sleep(0.1)

    def run(self, command: str) -> str:
        """`command`'s output in the shell, between markers the echoed line lacks (the
        shell expands `$(echo ...)`; the echo of the typed line holds it unexpanded)."""
        self._serial += 1
        mark = f"snap-{self._serial}"
        start = len(self.output)
        assert self.process.stdin is not None
        self.process.stdin.write(f'echo "<$(echo {mark})>"; {command}; echo "</$(echo {mark})>"\n'.encode())
        self.process.stdin.flush()
        self.wait_for(f"</{mark}>".encode(), COMMAND_SECONDS, start)
        text = self.output[start:].decode("utf-8", "replace")
        return text[text.index(f"<{mark}>") + len(mark) + 2 : text.rindex(f"</{mark}>")]

    def close(self, seconds: float = 60) -> tuple[int, str]:
        """The exit status once pyvmm has ended (killed after `seconds`), and stderr."""
        try:
            status = self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._reader.join(5)
        assert self.process.stderr is not None
        return status, self.process.stderr.read().decode(errors="replace")


class Peer:
    """The host's end of the guest's TCP connection: a listener in the namespace and
    the one connection it accepts, kept open across the guest's absences."""

    def __init__(self, namespace: Namespace) -> None:
        with namespace.inside():  # the socket stays in the namespace
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST_ADDRESS, PORT))
        self.listener.listen(1)
        self.listener.settimeout(COMMAND_SECONDS)
        self.connection: socket.socket | None = None
        self.received = bytearray()

    def accept(self) -> None:
        self.connection, _ = self.listener.accept()
        self.connection.settimeout(COMMAND_SECONDS)

    def expect(self, wanted: bytes) -> None:
        """Read until `wanted` has arrived (anywhere in what came so far)."""
        assert self.connection is not None
        while wanted not in self.received:
            chunk = self.connection.recv(65536)
            assert chunk, f"the connection closed; it carried {bytes(self.received)!r}"
            self.received += chunk

    def send(self, data: bytes) -> None:
        assert self.connection is not None
        self.connection.sendall(data)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.listener.close()


def network(namespace: Namespace) -> None:
    namespace.add_tap(TAP)
    namespace.configure(TAP, HOST_ADDRESS, PREFIX)


@contextlib.contextmanager
def running(*vms: Vm) -> Iterator[None]:
    try:
        yield
    finally:
        for vm in vms:
            if vm.process.poll() is None:
                vm.process.kill()
            vm.close(10)


async def qmp(vm: Vm) -> QMPClient:
    return await connected(vm.qmp)


async def migrate(client: QMPClient, snapshot: Path) -> None:
    await client.execute("migrate", {"uri": f"file:{snapshot}"})
    deadline = time.monotonic() + 120
    while (status := await migration_status(client)) != "completed":
        assert status in ("setup", "active"), status
        assert time.monotonic() < deadline, "the migration never completed"
        await asyncio.sleep(0.1)


async def migration_status(client: QMPClient) -> object:
    answer = await client.execute("query-migrate")
    assert isinstance(answer, dict)
    return answer.get("status")


async def quit_vm(client: QMPClient) -> None:
    await client.execute("quit")
    assert (await next_event(client, "SHUTDOWN"))["data"] == {"guest": False, "reason": "host-qmp-quit"}
    await client.disconnect()


def disk_round_trip(vm: Vm, text: str) -> None:
    """`text` written to sector 1 of /dev/vda, synced, caches dropped, read back."""
    written = vm.run(
        f"printf '{text}' | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null; echo dd=$?; sync;"
        " echo 3 > /proc/sys/vm/drop_caches"
    )
    assert "dd=0" in written, written
    read = vm.run(f"dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c {len(text)}; echo")
    assert text in read, read


def tcp_round_trip(vm: Vm, peer: Peer, tag: str) -> None:
    """The guest's nc sends a line and receives one on the connection made in step 1."""
    vm.run(f"echo guest-{tag} >&3")
    peer.expect(f"guest-{tag}\n".encode())
    peer.send(f"host-{tag}\n".encode())
    deadline = time.monotonic() + COMMAND_SECONDS
    while f"host-{tag}" not in vm.run("cat /tmp/from-host"):
        assert time.monotonic() < deadline, f"host-{tag} never reached the guest"
        time.sleep(0.5)


def stall_lines(vm: Vm) -> list[str]:
    dmesg = vm.run("dmesg")
    return [line for line in dmesg.splitlines() if any(stall in line for stall in STALLS)]


@pytest.fixture
def short(tmp_path: Path) -> Iterator[Path]:
    """A directory for QMP sockets short enough for AF_UNIX."""
    reason = why_not_usable()
    if reason is not None:
        pytest.skip(reason)
    directory = Path(f"/tmp/snapq-{id(tmp_path):x}")
    directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_linux_guest_paused_saved_restored_and_cloned_through_qmp(tmp_path: Path, short: Path) -> None:
    images("default")  # built (or found in the cache) before the clock starts
    disk, snapshot = tmp_path / "disk.img", tmp_path / "guest.snap"
    disk.write_bytes(bytes(DISK_BYTES))
    namespace = Namespace()
    peer: Peer | None = None
    timings: dict[str, float] = {}
    try:
        network(namespace)
        peer = Peer(namespace)
        started = time.monotonic()
        vm = Vm(namespace, short / "first.sock", disk)
        with running(vm):
            vm.wait_for(b"pyvmm-init: ready", BOOT_SECONDS)
            vm.wait_for(PROMPT, COMMAND_SECONDS)
            timings["boot"] = time.monotonic() - started
            up = vm.run(f"ip link set eth0 up && ip addr add {GUEST_ADDRESS}/{PREFIX} dev eth0; echo up=$?")
            assert "up=0" in up, up
            # nc reads what the shell writes to fd 3 (a fifo) and writes what the host
            # sends into /tmp/from-host.
            vm.run(f"mkfifo /tmp/to-host; nc {HOST_ADDRESS} {PORT} </tmp/to-host >/tmp/from-host 2>&1 & true")
            vm.run("exec 3>/tmp/to-host")
            peer.accept()
            tcp_round_trip(vm, peer, "booted")
            disk_round_trip(vm, "before-pause")

            async def pause() -> None:
                client = await qmp(vm)
                await client.execute("stop")
                await next_event(client, "STOP")
                assert await client.execute("query-status") == {"running": False, "status": "paused"}
                printed = len(vm.output)
                await asyncio.sleep(PAUSE_SECONDS)
                assert len(vm.output) == printed  # paused: not a byte more
                await client.execute("cont")
                await next_event(client, "RESUME")
                await client.disconnect()

            asyncio.run(pause())
            assert vm.run("echo $((6*7))").strip() == "42"
            disk_round_trip(vm, "after-pause")
            tcp_round_trip(vm, peer, "resumed")
            assert stall_lines(vm) == []

            async def save() -> None:
                client = await qmp(vm)
                await migrate(client, snapshot)
                await quit_vm(client)

            started = time.monotonic()
            asyncio.run(save())
            status, stderr = vm.close()
            timings["save"] = time.monotonic() - started
            assert status == 0, stderr[-3000:]
        assert disk.read_bytes()[512 : 512 + len("after-pause")] == b"after-pause"

        # The restore: its own copy of the disk, taken now that the first VM has quit;
        # the host's end of the connection waited meanwhile.
        restored_disk = tmp_path / "restored.img"
        shutil.copyfile(disk, restored_disk)
        started = time.monotonic()
        restored = Vm(
            namespace, short / "restored.sock", disk, "--incoming", f"file:{snapshot}", copy=restored_disk
        )
        with running(restored):
            assert restored.run("echo $((6*7))").strip() == "42"
            timings["restore"] = time.monotonic() - started
            disk_round_trip(restored, "restored")
            tcp_round_trip(restored, peer, "restored")
            assert stall_lines(restored) == []

            async def finish() -> None:
                await quit_vm(await qmp(restored))

            asyncio.run(finish())
            status, stderr = restored.close()
            assert status == 0, stderr[-3000:]
        assert restored_disk.read_bytes()[512 : 512 + len("restored")] == b"restored"
        assert disk.read_bytes()[512 : 512 + len("after-pause")] == b"after-pause"  # not the copy's write
    finally:
        if peer is not None:
            peer.close()
        namespace.remove()

    clones(tmp_path, short, disk, snapshot)
    print(", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))


def clones(tmp_path: Path, short: Path, disk: Path, snapshot: Path) -> None:
    """Two restores of one file side by side, each with its own disk copy and its own
    TAP (a namespace each); their connection's peer has gone, which is not checked."""
    spaces = [Namespace(), Namespace()]
    try:
        for space in spaces:
            network(space)
        copies = [tmp_path / f"clone-{index}.img" for index in range(2)]
        for copy in copies:
            shutil.copyfile(disk, copy)
        twins = [
            Vm(space, short / f"clone-{index}.sock", disk, "--incoming", f"file:{snapshot}", copy=copy)
            for index, (space, copy) in enumerate(zip(spaces, copies, strict=True))
        ]
        with running(*twins):
            for index, twin in enumerate(twins):
                assert twin.run("echo $((6*7))").strip() == "42"
                disk_round_trip(twin, f"clone-{index}")
            # Both still run after the other one's work.
            for twin in twins:
                assert twin.run("echo $((6*7))").strip() == "42"
            for index, copy in enumerate(copies):
                assert copy.read_bytes()[512 : 512 + len("clone-0")] == f"clone-{index}".encode()

            async def power_off() -> None:
                client = await qmp(twins[0])
                await client.execute("system_powerdown")
                await client.disconnect()
                await quit_vm(await qmp(twins[1]))

            asyncio.run(power_off())
            powered, stderr = twins[0].close(COMMAND_SECONDS)
            assert powered == 0, stderr[-3000:] + twins[0].text()[-3000:]
            assert "pyvmm-init: poweroff" in twins[0].text()
            quitted, stderr = twins[1].close()
            assert quitted == 0, stderr[-3000:]
    finally:
        for space in spaces:
            space.remove()
