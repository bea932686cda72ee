"""The QMP server through the real qemu.qmp client (and a raw socket where a client
misbehaves): greeting, negotiation, ids, errors, events, several clients."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from api.clients import RawClient, connect, run
from api.fake_machine import FakeMachine
from qemu.qmp import ExecuteError, QMPClient

from pyvmm.api.address import TcpAddress, UnixAddress
from pyvmm.api.protocol import PACKAGE, QEMU_VERSION
from pyvmm.api.qmp import QmpServer
from pyvmm.errors import ConfigError
from pyvmm.machine.lifecycle import MachineState


async def _error(
    client: QMPClient, command: str, arguments: dict[str, object] | None = None
) -> tuple[str, str]:
    with pytest.raises(ExecuteError) as caught:
        await client.execute(command, arguments)
    return caught.value.error_class, str(caught.value)


def test_greeting_has_the_version_and_no_capability(server: QmpServer) -> None:
    async def body() -> None:
        client = await connect(server.address)
        assert client.greeting is not None
        version = client.greeting.QMP.version
        assert version == {"qemu": QEMU_VERSION, "package": PACKAGE}
        assert list(client.greeting.QMP.capabilities) == []
        assert await client.execute("query-version") == version
        await client.disconnect()

    run(body)


def test_only_qmp_capabilities_runs_before_negotiation(server: QmpServer) -> None:
    raw = RawClient(server.address)
    assert raw.execute("query-status") == {
        "error": {
            "class": "CommandNotFound",
            "desc": "Expecting capabilities negotiation with 'qmp_capabilities'",
        }
    }
    assert raw.execute("qmp_capabilities", enable=["oob"])["error"] == {
        "class": "GenericError",
        "desc": "Capability 'oob' not available",
    }
    raw.negotiate()
    assert raw.execute("qmp_capabilities") == {
        "error": {
            "class": "CommandNotFound",
            "desc": "Capabilities negotiation is already complete, command ignored",
        }
    }
    assert raw.execute("query-status") == {"return": {"running": False, "status": "prelaunch"}}
    raw.close()


@pytest.mark.parametrize("request_id", [7, "abc", None, [1, {"x": None}], {"nested": [True, 2.5]}])
def test_any_id_is_echoed(server: QmpServer, request_id: object) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    raw.send({"execute": "query-kvm", "id": request_id})
    assert raw.reply() == {"return": {"enabled": True, "present": True}, "id": request_id}
    raw.send({"execute": "no-such-command", "id": request_id})
    assert raw.reply()["id"] == request_id
    raw.close()


def test_unknown_command_and_bad_arguments(server: QmpServer) -> None:
    async def body() -> None:
        client = await connect(server.address)
        assert await _error(client, "query-blah") == (
            "CommandNotFound",
            "The command query-blah has not been found",
        )
        assert await _error(client, "stop", {"now": True}) == (
            "GenericError",
            "Parameter 'now' is unexpected",
        )
        assert await _error(client, "human-monitor-command") == (
            "GenericError",
            "Parameter 'command-line' is missing",
        )
        assert await _error(client, "human-monitor-command", {"command-line": 5}) == (
            "GenericError",
            "Invalid parameter type for 'command-line', expected: string",
        )
        assert await _error(client, "human-monitor-command", {"command-line": "info", "cpu-index": True}) == (
            "GenericError",
            "Invalid parameter type for 'cpu-index', expected: integer",
        )
        assert await _error(client, "query-stats", {"target": "disk"}) == (
            "GenericError",
            "Parameter 'target' does not accept value 'disk'",
        )
        assert await _error(
            client, "query-stats", {"target": "vm", "providers": [{"provider": "kvm", "x": 1}]}
        ) == (
            "GenericError",
            "Parameter 'providers[0].x' is unexpected",
        )
        # the checks come before any side effect
        assert await client.execute("query-status") == {"running": False, "status": "prelaunch"}
        await client.disconnect()

    run(body)


@pytest.mark.parametrize(
    ("sent", "desc"),
    [
        (b'{"execute": }\n', "JSON parse error, expecting value"),
        (b"[1, 2]\n", "QMP input must be a JSON object"),
        (b"42\n", "QMP input must be a JSON object"),
        (b'"query-status"\n', "QMP input must be a JSON object"),
        (b"}\n", "JSON parse error, expecting value"),
        (b'{"execute": NaN}\n', "JSON parse error, invalid literal NaN"),
        (b'{"execute": "query-kvm", "id": 1e999}\n', "JSON parse error, number out of range"),
        (b'{"execute": "a\xff"}\n', "JSON parse error, invalid character"),
        (b'{"execute": "stop"\x01}\n', "JSON parse error, invalid character"),
        (b'{"execute": "\xc3\x28"}\n', "JSON parse error, invalid UTF-8 sequence"),
        (b'{"arguments": {}}\n', "QMP input lacks member 'execute'"),
        (b'{"execute": 1}\n', "QMP input member 'execute' must be a string"),
        (b'{"execute": "stop", "arguments": []}\n', "QMP input member 'arguments' must be an object"),
        (b'{"execute": "stop", "extra": 1}\n', "QMP input member 'extra' is unexpected"),
        (b'{"exec-oob": "stop"}\n', "QMP input member 'exec-oob' is unexpected"),
    ],
)
def test_malformed_input_gets_a_generic_error_and_the_session_goes_on(
    server: QmpServer, sent: bytes, desc: str
) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    raw.send(sent)
    reply = raw.reply()
    assert reply["error"] == {"class": "GenericError", "desc": desc}
    assert "id" not in reply
    assert raw.execute("query-name") == {"return": {"name": "guest0"}}
    raw.close()


def test_the_id_of_a_malformed_command_is_echoed(server: QmpServer) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    raw.send(b'{"execute": "stop", "id": "x1", "bogus": 2}')
    assert raw.reply() == {
        "error": {"class": "GenericError", "desc": "QMP input member 'bogus' is unexpected"},
        "id": "x1",
    }
    raw.close()


def test_single_quotes_and_split_messages_are_read_as_qemu_reads_them(server: QmpServer) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    raw.send(b"{'execute': 'human-monitor-command', 'arguments': {'command-line': 'info \\'")
    time.sleep(0.05)
    raw.send(b"status'}, 'id': 'it\"s'}")
    assert raw.reply() == {"return": "unknown command: 'info 'status'\r\n", "id": 'it"s'}
    raw.send(b'{"execute": "query-name", "id": 1}{"execute": "query-kvm", "id": 2}')
    assert raw.reply()["id"] == 1
    assert raw.reply()["id"] == 2
    raw.close()


def test_a_control_character_resyncs_the_parser(server: QmpServer) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    raw.send(b'{"execute": "query-status", "arguments": {"a": [1, 2')  # never finished
    raw.send(b"\x1b")
    assert raw.reply()["error"] == {"class": "GenericError", "desc": "JSON parse error, invalid character"}
    assert raw.execute("query-status") == {"return": {"running": False, "status": "prelaunch"}}
    raw.close()


def test_an_oversized_message_is_refused_and_skipped(machine: FakeMachine, short_dir: object) -> None:
    qmp = QmpServer(machine, TcpAddress("127.0.0.1", 0), max_message=4096)
    qmp.start()
    try:
        raw = RawClient(qmp.address)
        raw.negotiate()
        raw.send(b'{"execute": "query-status", "arguments": {"pad": "' + b"x" * 100_000 + b'"}, "id": 3}')
        assert raw.reply() == {"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}
        assert raw.execute("query-kvm") == {"return": {"enabled": True, "present": True}}
        deep = b"[" * 100 + b"]" * 100
        raw.send(deep)
        assert raw.reply()["error"] == {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"}
        assert raw.execute("query-kvm") == {"return": {"enabled": True, "present": True}}
        raw.close()
    finally:
        qmp.close()


def test_a_client_that_cannot_resync_is_dropped_and_others_are_served(server: QmpServer) -> None:
    flooder = RawClient(server.address)
    other = RawClient(server.address)
    other.negotiate()
    flooder.send(b'{"a": "')
    chunk = b"y" * (1 << 20)
    with pytest.raises(OSError):
        for _ in range(64):  # 64 MiB of one string: past what the server skips
            flooder.send(chunk)
    assert other.execute("query-kvm")["return"] == {"enabled": True, "present": True}
    flooder.close()
    other.close()


def test_each_query_has_qemus_shape(server: QmpServer, machine: FakeMachine) -> None:
    async def body() -> None:
        client = await connect(server.address)
        commands = await client.execute("query-commands")
        names = {entry["name"] for entry in commands}  # type: ignore[attr-defined]
        assert {
            "qmp_capabilities",
            "query-status",
            "migrate",
            "query-stats",
            "__org.pyvmm_query-counters",
        } <= names
        assert await client.execute("query-name") == {"name": "guest0"}
        assert await client.execute("query-kvm") == {"enabled": True, "present": True}
        assert await client.execute("query-cpus-fast") == [
            {
                "cpu-index": index,
                "qom-path": f"/machine/unattached/device[{index}]",
                "thread-id": 4000 + index,
                "props": {"socket-id": 0, "core-id": index, "thread-id": 0},
                "target": "x86_64",
            }
            for index in range(2)
        ]
        disks = await client.execute("query-block")
        assert isinstance(disks, list)
        assert [disk["device"] for disk in disks] == ["disk0", "cd0"]
        disk0, cd0 = disks
        assert disk0["inserted"]["file"] == "/var/lib/disk0.img"
        assert disk0["inserted"]["ro"] is False
        assert disk0["inserted"]["image"]["virtual-size"] == 1 << 30
        assert disk0["inserted"]["drv"] == "raw"
        assert "qdev" not in disk0
        assert cd0["qdev"] == "virtio-blk1"
        assert cd0["inserted"]["ro"] is True
        assert {"device", "type", "removable", "locked"} <= set(cd0)
        await client.disconnect()

    run(body)


def test_an_unnamed_machine_has_an_empty_name_info(short_dir: object) -> None:
    unnamed = FakeMachine(name=None)
    qmp = QmpServer(unnamed, "tcp:127.0.0.1:0")
    qmp.start()
    try:
        raw = RawClient(qmp.address)
        raw.negotiate()
        assert raw.execute("query-name") == {"return": {}}
        raw.close()
    finally:
        qmp.close()


def test_lifecycle_commands_and_their_events(server: QmpServer, machine: FakeMachine) -> None:
    async def body() -> None:
        client = await connect(server.address)
        watcher = await connect(server.address)
        assert await client.execute("cont") == {}
        assert await client.execute("query-status") == {"running": True, "status": "running"}
        assert await client.execute("cont") == {}  # running already: nothing to do, as QEMU
        assert await client.execute("stop") == {}
        assert await client.execute("query-status") == {"running": False, "status": "paused"}
        assert await client.execute("stop") == {}
        assert await client.execute("system_reset") == {}
        assert await client.execute("system_powerdown") == {}
        assert machine.calls == ["resume", "pause", "reset", "powerdown"]
        before = time.time()
        for listener in (client.events, watcher.events):
            names = []
            for _ in range(4):
                event = await listener.get()
                names.append(event["event"])
                stamp: dict[str, int] = event["timestamp"]  # type: ignore[assignment]
                assert 0 <= stamp["microseconds"] < 1_000_000
                assert before - 10 < stamp["seconds"] <= before + 1
            assert names == ["RESUME", "STOP", "RESET", "POWERDOWN"]
        await client.disconnect()
        await watcher.disconnect()

    run(body)


def test_reset_event_data(server: QmpServer) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    assert raw.execute("system_reset") == {"return": {}}
    event = raw.event()
    assert event["event"] == "RESET"
    assert event["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    assert set(event["timestamp"]) == {"seconds", "microseconds"}
    raw.close()


def test_a_lifecycle_error_is_a_generic_error(server: QmpServer, machine: FakeMachine) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    assert raw.execute("quit") == {"return": {}}
    assert raw.event()["event"] == "SHUTDOWN"
    assert raw.execute("cont")["error"] == {
        "class": "GenericError",
        "desc": "Resetting the Virtual Machine is required",
    }
    assert raw.execute("system_powerdown") == {"return": {}}  # the machine decides; the fake accepts
    raw.close()


def test_quit_answers_before_the_machine_stops(server: QmpServer, machine: FakeMachine) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    raw.send({"execute": "quit", "id": "q"})
    assert raw.read() == {"return": {}, "id": "q"}
    event = raw.read()
    assert event["event"] == "SHUTDOWN"
    assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert machine.state is MachineState.STOPPED
    raw.close()


def test_no_events_before_negotiation(server: QmpServer, machine: FakeMachine) -> None:
    waiting = RawClient(server.address)
    active = RawClient(server.address)
    active.negotiate()
    assert active.execute("system_powerdown") == {"return": {}}
    assert active.event()["event"] == "POWERDOWN"
    # the client still negotiating got nothing: its next message is the reply
    assert waiting.execute("qmp_capabilities") == {"return": {}}
    waiting.close()
    active.close()


def test_a_slow_command_does_not_stall_another_client(server: QmpServer, machine: FakeMachine) -> None:
    async def body() -> None:
        slow = await connect(server.address)
        fast = await connect(server.address)
        await slow.execute("cont")
        machine.gate.clear()
        stopping = asyncio.ensure_future(slow.execute("stop"))
        await asyncio.get_running_loop().run_in_executor(None, machine.entered.wait, 5)
        assert await fast.execute("query-status") == {"running": True, "status": "running"}
        assert await fast.execute("query-cpus-fast")
        assert not stopping.done()
        machine.gate.set()
        assert await stopping == {}
        assert await fast.execute("query-status") == {"running": False, "status": "paused"}
        await slow.disconnect()
        await fast.disconnect()

    run(body)


def test_a_client_gone_mid_command_changes_nothing_else(server: QmpServer, machine: FakeMachine) -> None:
    stays = RawClient(server.address)
    stays.negotiate()
    assert stays.execute("cont") == {"return": {}}
    assert stays.event()["event"] == "RESUME"
    machine.gate.clear()
    leaves = RawClient(server.address)
    leaves.negotiate()
    leaves.send({"execute": "stop", "id": 1})
    assert machine.entered.wait(5)
    leaves.close()
    machine.gate.set()
    # the command finished; its reply went nowhere; the other client sees the event
    assert stays.event()["event"] == "STOP"
    assert stays.execute("query-status") == {"return": {"running": False, "status": "paused"}}
    deadline = time.monotonic() + 5
    while server.clients != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.clients == 1
    stays.close()


def test_clients_one_after_another(server: QmpServer) -> None:
    async def body() -> None:
        for _ in range(5):
            client = await connect(server.address)
            assert await client.execute("query-kvm") == {"enabled": True, "present": True}
            await client.disconnect()

    run(body)


def test_tcp_on_an_ephemeral_port(machine: FakeMachine) -> None:
    qmp = QmpServer(machine, "tcp:127.0.0.1:0,server=on,wait=off")
    qmp.start()
    try:
        address = qmp.address
        assert isinstance(address, TcpAddress)
        assert address.port > 0

        async def body() -> None:
            client = await connect(address)
            assert await client.execute("query-status") == {"running": False, "status": "prelaunch"}
            await client.disconnect()

        run(body)
    finally:
        qmp.close()


def test_the_unix_socket_is_removed_on_close_and_a_stale_one_replaced(
    machine: FakeMachine, short_dir: object
) -> None:
    from pathlib import Path

    assert isinstance(short_dir, Path)
    path = short_dir / "vm.qmp"
    first = QmpServer(machine, f"unix:{path}")
    first.start()
    assert path.is_socket()
    first._sock.close()  # type: ignore[union-attr]  # as if the process died: the socket file stays
    second = QmpServer(machine, f"unix:{path},server=on,wait=off")
    second.start()
    raw = RawClient(second.address)
    raw.negotiate()
    raw.close()
    second.close()
    first.close()
    assert not path.exists()
    assert machine.listeners == 0


def test_an_address_that_cannot_be_bound_is_a_config_error(machine: FakeMachine, short_dir: object) -> None:
    from pathlib import Path

    assert isinstance(short_dir, Path)
    regular = short_dir / "file"
    regular.write_text("not a socket")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        QmpServer(machine, f"unix:{regular}").start()
    with pytest.raises(ConfigError, match="cannot listen"):
        QmpServer(machine, f"unix:{short_dir}/missing/dir.sock").start()
    assert regular.read_text() == "not a socket"


def test_events_from_many_threads_never_block_them(server: QmpServer, machine: FakeMachine) -> None:
    raw = RawClient(server.address)
    raw.negotiate()

    def burst() -> None:
        for _ in range(50):
            machine._emit("POWERDOWN")

    threads = [threading.Thread(target=burst) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 2
    assert [raw.event()["event"] for _ in range(200)] == ["POWERDOWN"] * 200
    machine._emit("BAD", {"x": object()})  # not JSON: dropped and logged, the caller is fine
    raw.close()


def test_a_client_that_never_reads_is_dropped(server: QmpServer, machine: FakeMachine) -> None:
    deaf = RawClient(server.address)
    deaf.negotiate()
    listening = RawClient(server.address)
    listening.negotiate()
    payload = "z" * 4096

    batches = threading.Semaphore(2)

    def emit() -> None:
        for _ in range(20):  # 8 MiB of events: more than a client may leave unread
            assert batches.acquire(timeout=10)
            for _ in range(100):
                machine._emit("POWERDOWN", {"pad": payload})

    emitter = threading.Thread(target=emit)
    emitter.start()
    for _ in range(20):  # the listening client keeps up: at most two batches behind
        for _ in range(100):
            assert listening.event()["data"] == {"pad": payload}
        batches.release()
    emitter.join()
    deadline = time.monotonic() + 5
    while server.clients != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.clients == 1
    assert listening.execute("query-kvm")["return"] == {"enabled": True, "present": True}
    deaf.close()
    listening.close()


def test_quit_is_not_held_by_a_stuck_lifecycle_command(server: QmpServer, machine: FakeMachine) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    assert raw.execute("cont") == {"return": {}}
    machine.gate.clear()
    stuck = RawClient(server.address)
    stuck.negotiate()
    stuck.send({"execute": "stop"})
    assert machine.entered.wait(5)
    assert raw.execute("quit") == {"return": {}}
    deadline = time.monotonic() + 5
    while machine.state is not MachineState.STOPPED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert machine.state is MachineState.STOPPED
    machine.gate.set()
    # the held pause now finds a stopped machine: its client gets the machine's refusal
    reply = stuck.reply()
    assert reply["error"]["class"] == "GenericError"
    assert "stopped" in reply["error"]["desc"]
    raw.close()
    stuck.close()


def test_the_legacy_synchronous_client(server: QmpServer) -> None:
    """qemu.qmp's QEMUMonitorProtocol, what QEMU's own test scripts and many tools use."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    address = server.address
    assert isinstance(address, UnixAddress)
    monitor = QEMUMonitorProtocol(address.path)
    greeting = monitor.connect()
    assert greeting is not None
    assert greeting["QMP"]["version"]["package"] == PACKAGE
    assert monitor.cmd("cont") == {}
    assert monitor.cmd("query-status") == {"running": True, "status": "running"}
    event = monitor.pull_event(wait=5.0)
    assert event is not None
    assert event["event"] == "RESUME"
    reply = monitor.cmd_raw("stop", {"bogus": 1})
    assert reply["error"]["class"] == "GenericError"
    monitor.close()
