"""The commands that carry data: migrate to a file and query-migrate, KVM statistics,
human-monitor-command, pyvmm's counters; all through the qemu.qmp client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from api.clients import RawClient, connect, run
from api.fake_machine import SNAPSHOT_CHUNK, SNAPSHOT_CHUNKS, FakeMachine
from qemu.qmp import ExecuteError, QMPClient

from pyvmm.api.qmp import QmpServer
from pyvmm.errors import VmmError


async def _error(client: QMPClient, command: str, arguments: dict[str, object] | None = None) -> str:
    with pytest.raises(ExecuteError) as caught:
        await client.execute(command, arguments)
    assert caught.value.error_class == "GenericError"
    return str(caught.value)


async def _migration_events(client: QMPClient) -> list[str]:
    statuses: list[str] = []
    while not statuses or statuses[-1] not in ("completed", "failed"):
        event = await client.events.get()
        data: dict[str, str] = event.get("data", {})  # type: ignore[assignment]
        if event["event"] == "MIGRATION":
            statuses.append(data["status"])
    return statuses


def test_migrate_to_a_file(server: QmpServer, machine: FakeMachine, short_dir: Path) -> None:
    target = short_dir / "vm.snap"

    async def body() -> None:
        client = await connect(server.address)
        assert await client.execute("query-migrate") == {}  # none yet, as QEMU
        assert await client.execute("migrate", {"uri": f"file:{target}"}) == {}
        assert await _migration_events(client) == ["setup", "active", "completed"]
        info = await client.execute("query-migrate")
        assert isinstance(info, dict)
        assert info["status"] == "completed"
        size = SNAPSHOT_CHUNKS * len(SNAPSHOT_CHUNK)
        assert info["ram"]["transferred"] == info["ram"]["total"] == size
        assert info["ram"]["remaining"] == 0
        assert {"total-time", "setup-time", "downtime"} <= set(info)
        await client.disconnect()

    run(body)
    assert target.read_bytes() == SNAPSHOT_CHUNK * SNAPSHOT_CHUNKS
    assert machine.calls == ["snapshot"]


def test_one_migration_at_a_time_and_progress_while_active(
    server: QmpServer, machine: FakeMachine, short_dir: Path
) -> None:
    async def body() -> None:
        client = await connect(server.address)
        machine.gate.clear()
        await client.execute("migrate", {"uri": f"file:{short_dir / 'a'}"})
        await asyncio.get_running_loop().run_in_executor(None, machine.entered.wait, 5)
        assert (await client.execute("query-migrate"))["status"] == "active"  # type: ignore[index]
        assert await _error(client, "migrate", {"uri": f"file:{short_dir / 'b'}"}) == (
            "There's a migration process in progress"
        )
        # the loop stays free while the machine saves
        assert await client.execute("query-status") == {"running": False, "status": "prelaunch"}
        machine.gate.set()
        assert (await _migration_events(client))[-1] == "completed"
        await client.disconnect()

    run(body)
    assert not (short_dir / "b").exists()


def test_a_failed_migration_says_why(server: QmpServer, machine: FakeMachine, short_dir: Path) -> None:
    machine.snapshot_error = VmmError("device 'virtio-net0' cannot save its state")

    async def body() -> None:
        client = await connect(server.address)
        await client.execute("migrate", {"uri": f"file:{short_dir / 'x'}"})
        assert await _migration_events(client) == ["setup", "active", "failed"]
        assert await client.execute("query-migrate") == {
            "status": "failed",
            "error-desc": "device 'virtio-net0' cannot save its state",
        }
        # a later one may start again
        machine.snapshot_error = None
        await client.execute("migrate", {"uri": f"file:{short_dir / 'y'}"})
        assert (await _migration_events(client))[-1] == "completed"
        await client.disconnect()

    run(body)


@pytest.mark.parametrize(
    ("arguments", "desc"),
    [
        ({"uri": "tcp:127.0.0.1:4444"}, "Migration over 'tcp:' is not supported by pyvmm: use a file: URI"),
        ({"uri": "/tmp/x"}, "Invalid URI: uri is not a valid migration protocol"),
        ({"uri": "file:"}, "Invalid URI: the file: URI names no file"),
        ({"uri": "file:/tmp/x,offset=4096"}, "pyvmm does not support an offset in a file: migration URI"),
        ({}, "Parameter 'uri' is missing: pyvmm takes a file: URI, not channels"),
        ({"uri": "file:/tmp/x", "resume": True}, "Cannot resume if there is no paused migration"),
        ({"uri": "file:/tmp/x", "blk": True}, "Parameter 'blk' is unexpected"),
    ],
)
def test_migrate_refuses(
    server: QmpServer, machine: FakeMachine, arguments: dict[str, object], desc: str
) -> None:
    async def body() -> None:
        client = await connect(server.address)
        assert await _error(client, "migrate", arguments) == desc
        assert await client.execute("query-migrate") == {}
        await client.disconnect()

    run(body)
    assert machine.calls == []


def test_query_stats_for_the_vm_and_the_vcpus(server: QmpServer) -> None:
    async def body() -> None:
        client = await connect(server.address)
        assert await client.execute("query-stats", {"target": "vm"}) == [
            {
                "provider": "kvm",
                "stats": [
                    {"name": "remote_tlb_flush", "value": 7},
                    {"name": "pages_4k", "value": 512},
                    {"name": "max_mmu_page_hash_collisions", "value": 3},
                ],
            }
        ]
        vcpus = await client.execute("query-stats", {"target": "vcpu"})
        assert isinstance(vcpus, list)
        assert [result["qom-path"] for result in vcpus] == [
            "/machine/unattached/device[0]",
            "/machine/unattached/device[1]",
        ]
        assert vcpus[1]["stats"] == [
            {"name": "exits", "value": 101},
            {"name": "halt_wait_ns", "value": 5000},
            {"name": "guest_mode", "value": True},
            {"name": "halt_poll_fail_hist", "value": [0, 1, 2, 3]},
            {"name": "halt_wait_hist", "value": [4, 5]},
        ]
        filtered = await client.execute(
            "query-stats",
            {
                "target": "vcpu",
                "vcpus": ["/machine/unattached/device[1]"],
                "providers": [{"provider": "kvm", "names": ["exits"]}],
            },
        )
        assert filtered == [
            {
                "provider": "kvm",
                "qom-path": "/machine/unattached/device[1]",
                "stats": [{"name": "exits", "value": 101}],
            }
        ]
        assert await client.execute("query-stats", {"target": "vm", "providers": []}) == []
        assert (
            await _error(client, "query-stats", {"target": "vm", "vcpus": []})
            == "Parameter 'vcpus' is unexpected"
        )
        assert await _error(client, "query-stats", {}) == "Parameter 'target' is missing"
        assert await _error(client, "query-stats", {"target": "vm", "providers": [{"provider": "xen"}]}) == (
            "Parameter 'providers[0].provider' does not accept value 'xen'"
        )
        await client.disconnect()

    run(body)


def test_query_stats_schemas(server: QmpServer) -> None:
    async def body() -> None:
        client = await connect(server.address)
        schemas = await client.execute("query-stats-schemas", {"provider": "kvm"})
        assert isinstance(schemas, list)
        assert [(schema["provider"], schema["target"]) for schema in schemas] == [
            ("kvm", "vm"),
            ("kvm", "vcpu"),
        ]
        assert schemas[0]["stats"][0] == {"name": "remote_tlb_flush", "type": "cumulative", "exponent": 0}
        assert schemas[1]["stats"] == [
            {"name": "exits", "type": "cumulative", "exponent": 0},
            {"name": "halt_wait_ns", "type": "cumulative", "unit": "seconds", "base": 10, "exponent": -9},
            {"name": "guest_mode", "type": "instant", "unit": "boolean", "exponent": 0},
            {
                "name": "halt_poll_fail_hist",
                "type": "log2-histogram",
                "unit": "seconds",
                "base": 10,
                "exponent": -9,
            },
            {
                "name": "halt_wait_hist",
                "type": "linear-histogram",
                "unit": "seconds",
                "base": 10,
                "exponent": -9,
                "bucket-size": 10,
            },
        ]
        assert await client.execute("query-stats-schemas") == schemas
        await client.disconnect()

    run(body)


def test_human_monitor_command(server: QmpServer) -> None:
    async def body() -> None:
        client = await connect(server.address)

        async def hmp(line: str, **extra: object) -> object:
            return await client.execute("human-monitor-command", {"command-line": line, **extra})

        assert await hmp("info status") == "VM status: paused (prelaunch)\r\n"
        await client.execute("cont")
        assert await hmp("info status") == "VM status: running\r\n"
        await client.execute("stop")
        assert await hmp("info status") == "VM status: paused\r\n"
        assert (
            await hmp("info registers")
            == "RAX=0000000000000000 RBX=0000000000000000\r\nRIP=0000000000100000 RFL=00000002\r\n"
        )
        second = await hmp("info registers", **{"cpu-index": 1})
        assert isinstance(second, str)
        assert second.startswith("RAX=0000000000000001")
        everything = await hmp("info registers -a")
        assert isinstance(everything, str)
        assert "CPU#0" in everything and "CPU#1" in everything
        assert (
            await hmp("info cpus", **{"cpu-index": 1})
            == "  CPU #0: thread_id=4000\r\n* CPU #1: thread_id=4001\r\n"
        )
        assert await hmp("info kvm") == "kvm support: enabled\r\n"
        assert await hmp("info name") == "guest0\r\n"
        assert await hmp("savevm x") == "unknown command: 'savevm'\r\n"
        assert await hmp("info nothing") == "unknown command: 'info nothing'\r\n"
        assert await hmp("   ") == ""
        assert await _error(
            client, "human-monitor-command", {"command-line": "info registers", "cpu-index": 9}
        ) == ("Parameter 'cpu-index' expects a CPU number")
        await client.disconnect()

    run(body)


def test_pyvmm_counters(server: QmpServer) -> None:
    raw = RawClient(server.address)
    raw.negotiate()
    assert raw.execute("__org.pyvmm_query-counters")["return"] == {
        "run-seconds": 2.5,
        "exit-seconds": 0.125,
        "exits": [{"reason": "HLT", "count": 4}, {"reason": "IO", "count": 30}],
        "vcpus": [
            {"cpu-index": 0, "exits": [{"reason": "HLT", "count": 3}, {"reason": "IO", "count": 20}]},
            {"cpu-index": 1, "exits": [{"reason": "HLT", "count": 1}, {"reason": "IO", "count": 10}]},
        ],
        "devices": [{"bus": "pio", "name": "serial0", "base": 0x3F8, "length": 8, "reads": 12, "writes": 18}],
        "emulated": [{"mnemonic": "movdqa", "count": 2}],
        "io-thread": {"callbacks": 9, "busy-seconds": 0.01, "cpu-seconds": 0.02, "faults": 1},
    }
    raw.close()
