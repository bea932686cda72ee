"""virtio-net in a Linux guest: TCP both ways, pyvmm beside loopback and QEMU, in one run.

The benchmark makes a network namespace of its own (pyroute2; nothing outside it is
touched) holding a TAP, 10.77.0.1/24 on the host's side of it; the guest (pyvmm's
default kernel and busybox initramfs) takes 10.77.0.2 on eth0, the virtio-net device
on that TAP (`--net tap=NAME`, virtio-pci or `--transport mmio`), and moves `--size`
MiB (64 by default) of a seeded random stream each way with netio
(benchmarks/guest_tools/netio.c, static, handed to the guest on a small read-only disk
it copies to /tmp; 1 MiB per system call, where busybox nc's 1 KiB calls would
measure the guest kernel's system-call cost on a software KVM):

- tx (guest to host): `netio send 10.77.0.1 PORT BYTES SEED` makes pattern.c's stream
  at user-mode speed; a Python peer in the namespace receives it and checks its
  sha256;
- rx (host to guest): `netio recv 10.77.0.1 PORT /dev/null`: the peer sends the same
  stream, the guest prints its checksum, compared here with `netio sum`'s on the host.

Rates are measured on the host by the peer: tx from its first byte to the end of the
stream, rx from its accept to the guest's netio closing the connection (once it has
read the end of the stream).
Beside them, in the same run: the same two commands on the host over loopback in the
namespace (the physical limit), and QEMU with the same kernel, initramfs, command
line and pattern disk (`-netdev tap,ifname=NAME,script=no,downscript=no -device
virtio-net-pci`, no vhost): `-accel kvm` (its failure line where it cannot boot; on
kvm_pvm "KVM internal error") and `-accel tcg` (the CPU emulated: the rate says what
TCG costs). For pyvmm, as in virtio_blk.py: pyvmm's own CPU seconds per GiB moved,
the process's, the I/O thread's, and the share of the transfer's time the I/O
thread spent in device callbacks (target: below 50%).

    python benchmarks/virtio_net.py [--size 64] [--transport pci|mmio]
                                    [--vmms pyvmm,qemu-kvm,qemu-tcg] [--quick] [-v]

Needs root (namespaces, TAP). `--quick`: 4 MiB. Exits 0 whatever the numbers are; 1
with one line on stderr when it cannot measure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, Path(__file__).resolve().parent):  # run as a script: pyvmm and guest_run beside us
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from guest_programs import TOOLS_OUT, ToolBuildError, build_tools, tool_disk, unpack_command  # noqa: E402
from guest_run import (  # noqa: E402
    BenchmarkError,
    GuestRun,
    Phase,
    per_gib,
    qemu_command,
    run_pyvmm,
    run_qemu,
    share,
    table,
)

from pyvmm.device_config import DiskConfig, NetConfig  # noqa: E402
from pyvmm.errors import VmmError  # noqa: E402
from pyvmm.images.commands import build_with_progress  # noqa: E402
from pyvmm.images.initramfs import run_parameter  # noqa: E402

MiB = 1 << 20
SEED = 0x2545F4914F6CDD1D  # the xorshift64 seed of pattern.c and netio.c
BUSY_TARGET = 0.50
PATTERN, NETIO = TOOLS_OUT / "pattern", TOOLS_OUT / "netio"
TAP = "pyvmmbench0"
HOST_ADDRESS, GUEST_ADDRESS, PREFIX = "10.77.0.1", "10.77.0.2", 24
TX_PORT, RX_PORT = 5001, 5002
GUEST_TIMEOUT = 3600.0
PHASES = ("tx", "rx")


class Namespace:
    """A network namespace of this benchmark's own, with a TAP, removed on exit."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]  # pyvmm's TAP tests use it

        self._netns = netns
        self.name = f"pyvmm-bench-{os.getpid()}"
        netns.create(self.name)
        try:
            with self.inside(), IPRoute() as ipr:
                ipr.link("set", index=socket.if_nametoindex("lo"), state="up")
            subprocess.run(["ip", "-n", self.name, "tuntap", "add", "dev", TAP, "mode", "tap"], check=True,
                           capture_output=True)  # fmt: skip
            with self.inside():
                # IPv6 off: no router solicitations or DAD frames in the measurement.
                Path(f"/proc/sys/net/ipv6/conf/{TAP}/disable_ipv6").write_text("1")
                with IPRoute() as ipr:
                    index = socket.if_nametoindex(TAP)
                    ipr.addr("add", index=index, address=HOST_ADDRESS, prefixlen=PREFIX)
                    ipr.link("set", index=index, state="up")
        except BaseException:
            netns.remove(self.name)
            raise

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The block with this thread in the namespace (setns(2) is per thread)."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            self._netns.setns(self.name, flags=0)
            try:
                yield
            finally:
                self._netns.setns(home, flags=0)
        finally:
            os.close(home)

    def remove(self) -> None:
        self._netns.remove(self.name)


class Peer:
    """One TCP connection's host end, listening in the namespace: receives a stream
    (hashing it) or sends `data`; times the transfer."""

    def __init__(self, space: Namespace, address: str, port: int, data: bytes | None) -> None:
        with space.inside():
            self._listener = socket.create_server((address, port))
        self._data = data
        self.received = 0
        self.sha256 = ""
        self.started: float | None = None  # first byte in, or the accept when sending
        self.ended: float | None = None
        self.error = ""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._listener.settimeout(GUEST_TIMEOUT)
            connection, _ = self._listener.accept()
            with connection:
                if self._data is None:
                    digest = hashlib.sha256()
                    buffer = bytearray(1 << 20)
                    while got := connection.recv_into(buffer):
                        if self.started is None:
                            self.started = time.monotonic()
                        digest.update(memoryview(buffer)[:got])
                        self.received += got
                    self.ended = time.monotonic()
                    self.sha256 = digest.hexdigest()
                else:
                    self.started = time.monotonic()
                    connection.sendall(self._data)
                    connection.shutdown(socket.SHUT_WR)
                    while connection.recv(4096):  # until the guest's nc closes too
                        pass
                    self.ended = time.monotonic()
        except OSError as exc:
            self.error = str(exc)
        finally:
            self._listener.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)


@dataclass
class Row:
    label: str
    phase: str
    moved: int = 0
    seconds: float = 0.0  # the transfer, timed on the host
    phase_data: Phase | None = None
    note: str = ""

    def busy(self) -> float | None:
        busy = self.phase_data.delta("io_busy") if self.phase_data else None
        return None if busy is None or self.seconds <= 0 else busy / self.seconds

    def cells(self) -> list[str]:
        p = self.phase_data
        rate = f"{self.moved / MiB / self.seconds:.2f} MiB/s" if self.moved and self.seconds > 0 else "failed"
        busy = self.busy()
        verdict = "-" if busy is None else ("met" if busy < BUSY_TARGET else "MISSED")
        cpu = [
            per_gib(p.delta(name), self.moved) if p else "-" for name in ("vmm_cpu", "process_cpu", "io_cpu")
        ]
        seconds = f"{self.seconds:.1f}" if self.moved else "-"
        return [self.label, self.phase, rate, seconds, *cpu, share(busy), verdict, self.note]


def stream(size: int) -> bytes:
    """`pattern SIZE SEED`'s output: what both directions carry."""
    result = subprocess.run([str(PATTERN), str(size), str(SEED)], capture_output=True, check=True)
    return result.stdout


def stream_sum(data: bytes) -> str:
    """netio's checksum of `data`, from the program on the host."""
    result = subprocess.run([str(NETIO), "sum", "-"], input=data, capture_output=True, check=True)
    return result.stdout.decode().rsplit("sum ", 1)[-1].strip()


def guest_script(size: int, tool_bytes: int) -> str:
    return "; ".join([
        f"ip link set eth0 up && ip addr add {GUEST_ADDRESS}/{PREFIX} dev eth0",
        unpack_command("/dev/vda", "netio", tool_bytes),
        f"echo bench-begin tx; /tmp/netio send {HOST_ADDRESS} {TX_PORT} {size} {SEED}; echo bench-end tx",
        f"echo bench-begin rx; /tmp/netio recv {HOST_ADDRESS} {RX_PORT} /dev/null; echo bench-end rx",
    ])  # fmt: skip


def rows_of(
    label: str, tx: Peer, rx: Peer, data: bytes, phases: dict[str, Phase], rx_output: str
) -> list[Row]:
    """The two directions' rows from the peers (and the receiving netio's line)."""
    rows = []
    if tx.ended is not None and tx.started is not None:
        right = tx.sha256 == hashlib.sha256(data).hexdigest() and tx.received == len(data)
        note = "" if right else f"WRONG DATA: {tx.received} bytes, sha256 {tx.sha256[:16]}..."
        rows.append(Row(label, "tx", tx.received, tx.ended - tx.started, phases.get("tx"), note))
    else:
        rows.append(Row(label, "tx", note=tx.error or "no connection"))
    if rx.ended is not None and rx.started is not None:
        right = f"recv {len(data)} bytes" in rx_output and f"sum {stream_sum(data)}" in rx_output
        note = "" if right else f"WRONG DATA: the netio line: {rx_output.strip()[-80:]!r}"
        rows.append(Row(label, "rx", len(data), rx.ended - rx.started, phases.get("rx"), note))
    else:
        rows.append(Row(label, "rx", note=rx.error or "no connection"))
    return rows


def guest_run(label: str, space: Namespace, data: bytes, boot: Callable[[], GuestRun]) -> list[Row]:
    """Peers up, the guest booted by `boot()`, rows from both."""
    tx = Peer(space, HOST_ADDRESS, TX_PORT, None)
    rx = Peer(space, HOST_ADDRESS, RX_PORT, data)
    try:
        run = boot()
    finally:
        tx.close()
        rx.close()
    rx_phase = run.phases.get("rx")
    found = rows_of(label, tx, rx, data, run.phases, rx_phase.output if rx_phase else "")
    if run.failure:  # why the guest failed, not what the peer then saw (a closed listener)
        for row in found:
            row.note = run.failure if not row.moved else (row.note or run.failure)
    return found


def pyvmm_in(space: Namespace, label: str, kernel: Path, initrd: Path, cmdline: str, transport: str,
             tools: Path, echo: Callable[[bytes], object] | None) -> GuestRun:  # fmt: skip
    """pyvmm's run with this thread in the namespace: the TAP is opened by name there."""
    disks, nets = (DiskConfig(str(tools), readonly=True),), (NetConfig(TAP),)
    with space.inside():
        try:
            return run_pyvmm(label, kernel, initrd, cmdline, transport=transport, disks=disks, nets=nets,
                             timeout=GUEST_TIMEOUT, echo=echo)  # fmt: skip
        except VmmError as exc:  # e.g. a pyvmm without --net yet
            return GuestRun(label, None, "", failure=f"pyvmm: error: {exc}")


def loopback_rows(space: Namespace, data: bytes) -> list[Row]:
    """The guest's two netio commands on the host, over loopback inside the namespace."""
    tx = Peer(space, "127.0.0.1", TX_PORT, None)
    rx = Peer(space, "127.0.0.1", RX_PORT, data)
    inside = ["ip", "netns", "exec", space.name, str(NETIO)]
    try:
        subprocess.run([*inside, "send", "127.0.0.1", str(TX_PORT), str(len(data)), str(SEED)],
                       capture_output=True, check=False, timeout=600)  # fmt: skip
        result = subprocess.run([*inside, "recv", "127.0.0.1", str(RX_PORT), "/dev/null"],
                                capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    finally:
        tx.close()
        rx.close()
    return rows_of("host loopback (netio)", tx, rx, data, {}, result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="MiB each way (default 64)")
    parser.add_argument("--transport", choices=("pci", "mmio"), default="pci", help="pyvmm's transport")
    parser.add_argument("--vmms", default="pyvmm,qemu-kvm,qemu-tcg",
                        help="comma-separated: pyvmm, qemu-kvm, qemu-tcg")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="4 MiB each way")
    parser.add_argument("-v", "--verbose", action="store_true", help="the guests' consoles on stderr")
    args = parser.parse_args()
    if args.quick:
        args.size = 4
    if args.size < 1:
        raise BenchmarkError("--size must be at least 1 (MiB)")
    vmms = [name for name in args.vmms.split(",") if name]
    if not set(vmms) <= {"pyvmm", "qemu-kvm", "qemu-tcg"}:
        raise BenchmarkError(f"--vmms takes pyvmm, qemu-kvm and qemu-tcg, not {args.vmms!r}")
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        raise BenchmarkError("needs root and /dev/net/tun (it makes a network namespace and a TAP)")
    if any(name.startswith("qemu") for name in vmms) and shutil.which("qemu-system-x86_64") is None:
        raise BenchmarkError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    size = args.size * MiB
    build_tools()
    data = stream(size)
    images = build_with_progress("default")
    kernel, initrd = images.path("bzImage"), images.path("initramfs")
    echo = sys.stderr.buffer.write if args.verbose else None
    # A SIGTERM unwinds like an error, so the namespace (and the TAP in it) goes too.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    space = Namespace()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pyvmm-net-bench-") as work:
            tools = Path(work, "tools.img")
            tool_bytes = tool_disk(tools, "netio")
            cmdline = f"console=ttyS0 {run_parameter(guest_script(size, tool_bytes))}"
            for vmm in vmms:
                print(f"  {vmm}: booting ...", file=sys.stderr, flush=True)
                if vmm == "pyvmm":
                    label = f"pyvmm, virtio-{args.transport}"

                    boot = partial(
                        pyvmm_in, space, label, kernel, initrd, cmdline, args.transport, tools, echo
                    )
                    rows += guest_run(label, space, data, boot)
                else:
                    accel = vmm.split("-")[1]
                    label = f"QEMU -accel {accel}, virtio-net-pci"
                    devices = ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                               "-device", "virtio-net-pci,netdev=n0",
                               "-drive", f"file={tools},if=none,id=d0,format=raw,readonly=on",
                               "-device", "virtio-blk-pci,drive=d0"]  # fmt: skip
                    command = ["ip", "netns", "exec", space.name,
                               *qemu_command(accel, kernel, initrd, cmdline, devices)]  # fmt: skip

                    def qemu(label: str = label, command: list[str] = command) -> GuestRun:
                        return run_qemu(label, command, timeout=GUEST_TIMEOUT, echo=echo)

                    rows += guest_run(label, space, data, qemu)
                print(f"  {vmm}: {rows[-1].note or 'done'}", file=sys.stderr, flush=True)
            rows += loopback_rows(space, data)
    finally:
        space.remove()

    header = ["VMM / reference", "direction", "rate", "transfer s", "VMM CPU s/GiB",
              "process CPU s/GiB", "I/O thread CPU s/GiB", "I/O thread busy", "< 50%", "note"]  # fmt: skip
    print(f"virtio-net: TCP, {args.size} MiB each way with netio (tx: guest to host, rx: host to guest)"
          f" ({os.uname().release}, {os.cpu_count()} host CPUs)")  # fmt: skip
    print(table([row.cells() for row in rows], header))
    busy = [b for row in rows if (b := row.busy()) is not None]
    if busy:
        verdict = "met" if max(busy) < BUSY_TARGET else "missed"
        print(f"I/O thread busy < {100 * BUSY_TARGET:.0f}% of the transfer's time: {verdict}"
              f" (worst {100 * max(busy):.1f}%)")  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchmarkError, ToolBuildError) as exc:
        print(f"virtio_net.py: {exc}", file=sys.stderr)
        sys.exit(1)
