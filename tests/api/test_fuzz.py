"""Garbage at the socket: whatever a client sends, the server answers only with
well-formed QMP lines, keeps serving the other clients, and nothing escapes its
thread (the `server` fixture fails the test on any error it logs)."""

from __future__ import annotations

import json
import socket

from api.clients import TIMEOUT, RawClient
from api.fake_machine import FakeMachine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.api.address import UnixAddress
from pyvmm.api.qmp import QmpServer
from pyvmm.errors import VmmError

# pieces a parser cares about, so that examples reach past the first byte
_TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"'",
    b"\\",
    b":",
    b",",
    b"\n",
    b"\x1b",
    b"\xff",
    b'"execute"',
    b'"arguments"',
    b'"id"',
    b'"qmp_capabilities"',
    b'"query-status"',
    b'"human-monitor-command"',
    b'"command-line"',
    b'"info registers"',
    b'"cpu-index"',
    b'"query-stats"',
    b'"target"',
    b'"vcpu"',
    b"1e999",
    b"-0",
    b"null",
    b'"\\ud800"',
]
garbage = st.lists(st.one_of(st.binary(max_size=32), st.sampled_from(_TOKENS)), max_size=40).map(b"".join)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=garbage, negotiate_first=st.booleans())
def test_garbage_gets_qmp_answers_and_others_are_served(
    server: QmpServer, machine: FakeMachine, data: bytes, negotiate_first: bool
) -> None:
    machine.snapshot_error = VmmError("no snapshots in this test")
    address = server.address
    assert isinstance(address, UnixAddress)
    bystander = RawClient(address)
    bystander.negotiate()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(address.path)
    if negotiate_first:
        sock.sendall(b'{"execute": "qmp_capabilities"}\n')
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)  # the server finishes what it read, then hangs up
    output = _read_all(sock)
    sock.close()

    assert output.endswith(b"\r\n")
    lines = output.split(b"\r\n")[:-1]
    assert "QMP" in json.loads(lines[0])
    for line in lines[1:]:
        assert line.isascii()
        message = json.loads(line)
        assert isinstance(message, dict)
        assert {"return", "error", "event"} & set(message), message
        if "error" in message:
            assert set(message["error"]) == {"class", "desc"}

    assert bystander.execute("query-kvm") == {"return": {"enabled": True, "present": True}}
    bystander.close()
