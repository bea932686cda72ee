"""`--qmp ADDRESS`: QEMU's socket chardev syntax, listening servers only."""

from __future__ import annotations

import pytest

from pyvmm.api.address import TcpAddress, UnixAddress, parse_address
from pyvmm.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("unix:/tmp/vm.qmp", UnixAddress("/tmp/vm.qmp")),
        ("unix:/tmp/vm.qmp,server=on,wait=off", UnixAddress("/tmp/vm.qmp")),
        ("unix:rel.sock,server,nowait", UnixAddress("rel.sock")),
        ("tcp:127.0.0.1:4444", TcpAddress("127.0.0.1", 4444)),
        ("tcp:localhost:0,server=on,wait=off", TcpAddress("localhost", 0)),
        ("tcp::4444", TcpAddress("", 4444)),
        ("tcp:[::1]:65535", TcpAddress("::1", 65535)),
    ],
)
def test_accepted(text: str, address: object) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/tmp/vm.qmp", "expected unix:PATH or tcp:HOST:PORT"),
        ("stdio:", "unsupported backend 'stdio'"),
        ("unix:", "the socket path is empty"),
        ("unix:/" + "a" * 200, "longer than 107 bytes"),
        ("unix:/tmp/x,server=off", "server=off is not supported"),
        ("unix:/tmp/x,wait=on", "wait=on is not supported"),
        ("unix:/tmp/x,wait", "wait=on is not supported"),
        ("unix:/tmp/x,reconnect=1", "unknown option 'reconnect'"),
        ("tcp:127.0.0.1", "expected tcp:HOST:PORT"),
        ("tcp:127.0.0.1:65536", "not a number from 0 to 65535"),
        ("tcp:127.0.0.1:-1", "not a number from 0 to 65535"),
        ("tcp:127.0.0.1:٤٤", "not a number from 0 to 65535"),
        ("tcp:::1:80", "expected tcp:HOST:PORT"),
        ("tcp:[::1:80", "expected tcp:[IPV6]:PORT"),
        ("tcp:a b:80", "is not a host name or address"),
    ],
)
def test_refused_in_one_line(text: str, why: str) -> None:
    with pytest.raises(
        ConfigError, match="^--qmp .*" + why.replace("[", r"\[").replace("(", r"\(")
    ) as caught:
        parse_address(text)
    assert "\n" not in str(caught.value)


def test_the_address_prints_as_it_parses() -> None:
    for text in ("unix:/tmp/vm.qmp", "tcp:127.0.0.1:4444", "tcp:[::1]:80"):
        assert str(parse_address(text)) == text
