"""Private network namespaces for the TAP and virtio-net tests.

Every TAP, address and socket a test makes lives in a namespace the test created
(pyroute2.netns) and removes at the end; nothing touches the host's interfaces.
`inside()` moves only the calling thread (setns(2) is per thread), so a TAP or a
socket opened there stays in the namespace after the thread moves back.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute, netns

TUN = "/dev/net/tun"
_counter = itertools.count()


def why_not_usable() -> str | None:
    if os.geteuid() != 0:
        return "TAP tests create network namespaces: they need root"
    if not os.path.exists(TUN):
        return f"{TUN} is missing: no TAP devices on this host"
    return None


class Namespace:
    """One network namespace, named pyvmm-test-PID-N, removed by `remove()`."""

    def __init__(self) -> None:
        self.name = f"pyvmm-test-{os.getpid()}-{next(_counter)}"
        netns.create(self.name)
        with self.inside(), IPRoute() as ipr:
            ipr.link("set", index=socket.if_nametoindex("lo"), state="up")

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run the block with this thread in the namespace."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            netns.setns(self.name, flags=0)
            try:
                yield
            finally:
                netns.setns(home, flags=0)
        finally:
            os.close(home)

    def links(self) -> set[str]:
        with self.inside():
            return {name for _index, name in socket.if_nameindex()}

    def add_tap(self, name: str, *, multi_queue: bool = False) -> None:
        """A persistent TAP that nobody has open, as `ip tuntap add` makes."""
        command = ["ip", "-n", self.name, "tuntap", "add", "dev", name, "mode", "tap"]
        subprocess.run([*command, *(["multi_queue"] if multi_queue else [])], check=True)

    def add_veth(self, name: str, peer: str) -> None:
        with self.inside(), IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="veth", peer=peer)

    def configure(self, name: str, address: str, prefixlen: int = 24) -> None:
        """Link up with an IPv4 address, IPv6 off (so no router solicitations or
        DAD frames arrive unasked)."""
        with self.inside():
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as knob:
                knob.write("1")
            with IPRoute() as ipr:
                index = socket.if_nametoindex(name)
                ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
                ipr.link("set", index=index, state="up")

    def remove(self) -> None:
        netns.remove(self.name)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    reason = why_not_usable()
    if reason is not None:
        pytest.skip(reason)
    space = Namespace()
    try:
        yield space
    finally:
        space.remove()
