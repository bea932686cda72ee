"""Ways to talk to the server in tests: the real qemu.qmp client (async), and a raw
socket for what no well-behaved client sends."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from qemu.qmp import QMPClient

from pyvmm.api.address import QmpAddress, TcpAddress, UnixAddress

T = TypeVar("T")
TIMEOUT = 5.0


def run(test: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body with a deadline: a hang is a failure, not a stuck suite."""

    async def bounded() -> T:
        return await asyncio.wait_for(test(), 20)

    return asyncio.run(bounded())


def _target(address: QmpAddress) -> str | tuple[str, int]:
    if isinstance(address, UnixAddress):
        return address.path
    assert isinstance(address, TcpAddress)
    return (address.host or "127.0.0.1", address.port)


async def connect(address: QmpAddress, *, negotiate: bool = True) -> QMPClient:
    client = QMPClient("test")
    client.negotiate = negotiate
    await client.connect(_target(address))
    return client


class RawClient:
    """A blocking socket that reads the server's CRLF-terminated JSON lines."""

    def __init__(self, address: QmpAddress) -> None:
        if isinstance(address, UnixAddress):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(_target(address))
        self.buffer = b""
        self.events: list[dict[str, Any]] = []  # events read while waiting for a reply
        self.greeting = self.read()

    def send(self, data: bytes | dict[str, Any]) -> None:
        self.sock.sendall(data if isinstance(data, bytes) else json.dumps(data).encode() + b"\n")

    def read(self) -> dict[str, Any]:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    def reply(self) -> dict[str, Any]:
        """The next message that is not an event (events are kept for `event()`)."""
        while True:
            message = self.read()
            if "event" not in message:
                return message
            self.events.append(message)

    def event(self) -> dict[str, Any]:
        """The next event: one read while waiting for a reply, or the next message."""
        if self.events:
            return self.events.pop(0)
        message = self.read()
        assert "event" in message, message
        return message

    def execute(self, command: str, **arguments: object) -> dict[str, Any]:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.send(message)
        return self.reply()

    def negotiate(self) -> None:
        assert self.execute("qmp_capabilities") == {"return": {}}

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
