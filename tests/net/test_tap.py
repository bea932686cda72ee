"""Tap: opening an existing TAP or creating one, the errors a user can cause, the
vnet header size and the offload probe, on real TAP devices in a private namespace."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from net.netns import Namespace, namespace

from pyvmm.errors import ConfigError
from pyvmm.net import tap as tap_module
from pyvmm.net.if_tun import TUNGETVNETHDRSZ, TunOffload
from pyvmm.net.tap import Tap, TapError

__all__ = ["namespace"]  # the fixture, imported for pytest
ROOT = Path(__file__).resolve().parents[2]
CSUM, TSO4, TSO6 = int(TunOffload.TUN_F_CSUM), int(TunOffload.TUN_F_TSO4), int(TunOffload.TUN_F_TSO6)


def test_a_missing_tap_is_one_clear_error(namespace: Namespace) -> None:
    with namespace.inside(), pytest.raises(TapError, match="'nosuchtap' does not exist") as error:
        Tap.open("nosuchtap")
    assert isinstance(error.value, ConfigError)
    assert "nosuchtap" not in namespace.links()  # as root TUNSETIFF would have made it


@pytest.mark.parametrize("kind", ["loopback", "veth", "tun"])
def test_an_interface_that_is_not_a_tap_is_refused(namespace: Namespace, kind: str) -> None:
    if kind == "veth":
        namespace.add_veth("veth0", "veth1")
        name = "veth0"
    elif kind == "tun":
        command = ["ip", "-n", namespace.name, "tuntap", "add", "dev", "tun0", "mode", "tun"]
        subprocess.run(command, check=True)
        name = "tun0"
    else:
        name = "lo"
    with namespace.inside(), pytest.raises(TapError, match=f"'{name}' is not a single-queue TAP"):
        Tap.open(name)


def test_a_multi_queue_tap_is_refused(namespace: Namespace) -> None:
    namespace.add_tap("mq0", multi_queue=True)
    with namespace.inside(), pytest.raises(TapError, match="not a single-queue TAP"):
        Tap.open("mq0")


def test_an_existing_tap_is_attached_and_left_in_place(namespace: Namespace) -> None:
    namespace.add_tap("ptap0")
    with namespace.inside():
        tap = Tap.open("ptap0")
    try:
        assert (tap.name, tap.created) == ("ptap0", False)
        assert fcntl.fcntl(tap.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(tap.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        size = fcntl.ioctl(tap.fileno(), TUNGETVNETHDRSZ, struct.pack("i", 0))
        assert struct.unpack("i", size)[0] == 12  # virtio_net_hdr_v1 with num_buffers
        with pytest.raises(BlockingIOError):
            os.read(tap.fileno(), 2048)  # non-blocking: nothing queued, no wait
    finally:
        tap.close()
    assert "ptap0" in namespace.links()  # a TAP the user made outlives pyvmm
    assert tap.closed and tap.fileno() == -1
    tap.close()  # idempotent


def test_a_tap_in_use_is_refused(namespace: Namespace) -> None:
    namespace.add_tap("ptap0")
    with namespace.inside():
        first = Tap.open("ptap0")
        try:
            with pytest.raises(TapError, match="'ptap0' is in use by another process"):
                Tap.open("ptap0")
        finally:
            first.close()


def test_offloads_are_probed_and_set(namespace: Namespace) -> None:
    namespace.add_tap("ptap0")
    with namespace.inside():
        tap = Tap.open("ptap0")
    try:
        assert tap.offloads & (CSUM | TSO4 | TSO6) == CSUM | TSO4 | TSO6  # every kernel since 2.6.27
        assert not tap.offloads & TunOffload.TUN_F_TSO_ECN  # not probed: pyvmm offers no ECN
        assert tap.offload == 0  # nothing until a guest negotiates
        tap.set_offload(CSUM | TSO4)
        assert tap.offload == CSUM | TSO4
        with pytest.raises(ValueError, match="not supported"):
            tap.set_offload(0x80)
    finally:
        tap.close()


def test_a_created_tap_is_up_and_removed_at_close(namespace: Namespace) -> None:
    with namespace.inside():
        tap = Tap.open(None)
    try:
        assert tap.created and tap.name.startswith("pyvmm")
        assert tap.name in namespace.links()
        flags = _ip_link(namespace, tap.name).split("<", 1)[1].split(">", 1)[0].split(",")
        assert "UP" in flags  # administratively up, as pyvmm brought it
    finally:
        tap.close()
    assert tap.name not in namespace.links()


def test_a_tap_owns_its_fd_as_every_fd_is_owned(namespace: Namespace) -> None:
    """pyvmm's one fd owner (FileDescriptor): the context manager closes it, close is
    idempotent, and a created TAP dropped without close() goes with its fd."""
    with namespace.inside(), Tap.open(None) as tap:
        assert tap.name in namespace.links() and not tap.closed
    assert tap.closed and tap.fileno() == -1 and tap.name not in namespace.links()
    tap.close()
    with namespace.inside():
        name = Tap.open(None).name  # dropped at once
    gc.collect()
    assert name not in namespace.links()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_created_tap_goes_away_when_pyvmm_is_killed(namespace: Namespace, signum: int) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pyroute2 import netns
        netns.setns(sys.argv[1], flags=0)
        from pyvmm.net.tap import Tap
        tap = Tap.open(None)  # held: a dropped Tap closes its fd and the TAP goes
        print(tap.name, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, namespace.name], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        name = child.stdout.readline().strip()
        assert name in namespace.links()
        child.send_signal(signum)
        child.wait(10)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 5
    while name in namespace.links() and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel unregisters the device after the fd's last close
    assert name not in namespace.links()


def test_no_permission_for_dev_net_tun(namespace: Namespace) -> None:
    # A real unprivileged process: /dev/net/tun is root's only on this host (0600). It
    # imports as root (the interpreter lives under /root) and then drops to nobody.
    if os.stat("/dev/net/tun").st_mode & 0o006:
        pytest.skip("/dev/net/tun is open to everyone here")
    script = textwrap.dedent(
        """
        import os
        from pyvmm.net.tap import Tap
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        try:
            Tap.open(None)
        except Exception as error:
            print(error)
        """
    )
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.stdout.strip() == "no permission to open /dev/net/tun (TAP networking needs access to it)"


def test_a_missing_dev_net_tun(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tap_module, "TUN_PATH", str(tmp_path / "tun"))
    with pytest.raises(TapError, match=r"tun does not exist \(load the tun module"):
        Tap.open(None)


def _ip_link(namespace: Namespace, name: str) -> str:
    return subprocess.run(
        ["ip", "-n", namespace.name, "-o", "link", "show", name], capture_output=True, text=True, check=True
    ).stdout
