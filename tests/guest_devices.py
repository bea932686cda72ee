"""The host's side of the virtio-pci Linux scenario of test_linux_guest.py: the
files and the network its one boot uses, made before `pyvmm run` starts, read back
after it ends, removed at the end (also when the boot fails).

- /dev/vda: `DISK_BYTES` of random data; the guest hashes it, sends it to the host
  over TCP, then writes the first MiB of what the host sent it at `PATTERN_OFFSET`;
- /dev/vdb: a small image given with readonly=on, which the guest tries to write;
  it holds the guest's script (`guest_script()`), too long for a kernel command line,
  and after it netio (benchmarks/guest_tools/netio.c), which moves the TCP streams;
- /dev/vdc: a sparse `FULL_DISK_BYTES` image on a tmpfs of `FULL_FS_BYTES`, so
  writes past the free space fail on the host (ENOSPC) and the guest sees I/O errors;
- eth0 on a TAP in a namespace made for the boot (guest_network.py), with the
  entropy device and the virtio console beside them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from benchmark_scripts import load
from guest_network import HOST_ADDRESS, PREFIX, TAP, GuestNetwork, NetworkResult, guest_commands
from net.netns import Namespace

MIB = 1 << 20
DISK_BYTES = 16 * MIB  # also what goes over TCP each way: "at least 16 MiB"
PATTERN_OFFSET = 4 * MIB
PATTERN_BYTES = MIB
READONLY_MAGIC = b"pyvmm-readonly-disk"
READONLY_BYTES = 64 * 1024  # the script's part of the image; netio follows it
NETIO = "/tmp/netio"  # where the guest puts it
FULL_FS_BYTES = MIB  # the tmpfs
FULL_DISK_BYTES = 8 * MIB  # the sparse image on it: most of it can never be allocated
FULL_WRITE_BYTES = 4 * MIB  # what the guest tries to write there


def _guest_programs() -> ModuleType:
    """benchmarks/guest_programs.py, which builds the benchmarks' guest programs."""
    return load("guest_programs")


def guest_script(netio_bytes: int) -> str:
    """The guest's side, a script on the readonly disk (the kernel command line has
    room for no more than 2 KiB): each step prints key=value lines."""
    programs = _guest_programs()
    return "\n".join([
        f"# {READONLY_MAGIC.decode()}: run by the guest with sh /dev/vdb",
        programs.unpack_command("/dev/vdb", "netio", netio_bytes, offset=READONLY_BYTES),
        "echo vda-sha256=$(sha256sum /dev/vda | cut -d' ' -f1)",
        "echo vdb-ro=$(cat /sys/block/vdb/ro)",
        "echo vdb-head=$(head -n 1 /dev/vdb)",
        "dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/tmp/vdb.err; echo vdb-write=$?",
        "sed 's/^/vdb-dd: /' /tmp/vdb.err",
        f"dd if=/dev/vda of=/dev/vdc bs=64k count={FULL_WRITE_BYTES // 65536} oflag=direct 2>/tmp/vdc.err",
        "echo vdc-write=$?; sed 's/^/vdc-dd: /' /tmp/vdc.err",
        "echo hwrng=$(cat /sys/class/misc/hw_random/rng_current)",
        "echo random=$(head -c 64 /dev/hwrng | od -An -tx1 | tr -d ' \\n')",
        *guest_commands(NETIO, "/dev/vda", "/tmp/down"),
        f"dd if=/tmp/down of=/dev/vda bs={PATTERN_BYTES} count=1 seek={PATTERN_OFFSET // PATTERN_BYTES}"
        " conv=fsync 2>/dev/null; echo pattern=$?; sync",
        "for d in /sys/bus/virtio/devices/*; do echo virtio=${d##*/} $(cat $d/device); done",
        "echo consoles=$(cat /sys/class/tty/console/active)",
        "dmesg | grep -iE 'virtio|vd[a-z]|eth0|I/O error' | sed 's/^/dmesg: /'",
        "exit 0",  # what follows is the image's padding and netio
        "",
    ])  # fmt: skip


@functools.cache
def readonly_image() -> bytes:
    """vdb's bytes: the script padded to `READONLY_BYTES`, then netio (built now when
    it is missing or stale), padded to whole sectors."""
    programs = _guest_programs()
    netio = programs.program("netio").read_bytes()
    script = guest_script(len(netio)).encode()
    assert len(script) < READONLY_BYTES
    return programs.padded(script.ljust(READONLY_BYTES, b"\n") + netio)


GUEST_COMMANDS = "; sh /dev/vdb"  # after the common report, on the command line


@dataclass(frozen=True)
class DevicesResult:
    """What the host holds after the boot: what it gave, and what it found."""

    disk: bytes  # vda as made
    download: bytes  # what the host sent the guest
    disk_after: bytes
    readonly_after: bytes
    network: NetworkResult

    @property
    def disk_sha256(self) -> str:
        return hashlib.sha256(self.disk).hexdigest()

    @property
    def download_sha256(self) -> str:
        return hashlib.sha256(self.download).hexdigest()


class GuestDevices:
    """The images, the tmpfs and the network of one boot, made now; `close()` removes them."""

    def __init__(self, seconds: float) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pyvmm-test-pci-"))
        self.full_fs = self.directory / "full"
        self._mounted = False
        self._network: GuestNetwork | None = None
        try:
            self.disk = os.urandom(DISK_BYTES)
            self.download = os.urandom(DISK_BYTES)
            (self.directory / "disk.img").write_bytes(self.disk)
            (self.directory / "readonly.img").write_bytes(readonly_image())
            self.full_fs.mkdir()
            mount = ["mount", "-t", "tmpfs", "-o", f"size={FULL_FS_BYTES}", "pyvmm-test", str(self.full_fs)]
            subprocess.run(mount, check=True)
            self._mounted = True
            with (self.full_fs / "full.img").open("wb") as image:
                image.truncate(FULL_DISK_BYTES)  # sparse: tmpfs allocates on write
            self._network = GuestNetwork(self.download, seconds)
        except BaseException:
            self.close()
            raise

    def options(self) -> list[str]:
        """The `pyvmm run` options that give the guest these devices."""
        return [
            "--disk", str(self.directory / "disk.img"),
            "--disk", f"{self.directory / 'readonly.img'},readonly=on",
            "--disk", str(self.full_fs / "full.img"),
            "--net", f"tap={TAP}",
        ]  # fmt: skip

    def wrap(self, command: Sequence[str]) -> list[str]:
        assert self._network is not None
        return self._network.wrap(command)

    def finish(self) -> DevicesResult:
        """What the host finds, read once the guest has gone."""
        assert self._network is not None
        return DevicesResult(
            self.disk,
            self.download,
            (self.directory / "disk.img").read_bytes(),
            (self.directory / "readonly.img").read_bytes(),
            self._network.finish(),
        )

    def close(self) -> None:
        """Remove the namespace, the tmpfs and the images (idempotent)."""
        if self._network is not None:
            self._network.close()
            self._network = None
        if self._mounted:
            subprocess.run(["umount", str(self.full_fs)], check=True)
            self._mounted = False
        shutil.rmtree(self.directory, ignore_errors=True)


class GuestLink:
    """eth0 on a TAP in a namespace made for the boot, and nothing else: the guest
    brings it up and pings the host, whose kernel answers (`link_commands()`);
    `close()` removes it."""

    def __init__(self, seconds: float) -> None:
        self._namespace: Namespace | None = Namespace()
        try:
            self._namespace.add_tap(TAP)
            self._namespace.configure(TAP, HOST_ADDRESS, PREFIX)
        except BaseException:
            self.close()
            raise

    def options(self) -> list[str]:
        return ["--net", f"tap={TAP}"]

    def wrap(self, command: Sequence[str]) -> list[str]:
        assert self._namespace is not None
        return ["ip", "netns", "exec", self._namespace.name, *command]

    def finish(self) -> None:
        """Nothing to read back: what the link did is in the guest's report."""

    def close(self) -> None:
        """Remove the namespace with the TAP (idempotent)."""
        if self._namespace is not None:
            self._namespace.remove()
            self._namespace = None
