"""The QMP commands pyvmm serves: each with its argument schema, where it runs and a
handler returning the result in QEMU's shape (QEMU's qapi/*.json, named at each).

Where a command runs: on the server's loop only when it touches no machine; a query
on the query workers; a lifecycle change on the one lifecycle worker (they never
overlap, and a slow one never stalls the loop or another client's queries).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from pyvmm.api import hmp, stats
from pyvmm.api.arguments import BOOL, INT, NO_ARGUMENTS, STR, Field, Struct
from pyvmm.api.controller import MachineController
from pyvmm.api.migration import Broadcast, MigrationJob
from pyvmm.api.protocol import ErrorClass, QmpError, version
from pyvmm.machine.lifecycle import MachineState

# pyvmm's own commands start with this (qmp-spec.rst, "Downstream extension of QMP")
DOWNSTREAM = "__org.pyvmm_"


class Runs(enum.Enum):
    LOOP = "loop"
    QUERY = "query"
    LIFECYCLE = "lifecycle"


@dataclass
class Context:
    """What a handler may use: the machine, the migration job, the event broadcast."""

    controller: MachineController
    broadcast: Broadcast
    migration: MigrationJob = field(default_factory=MigrationJob)


Handler = Callable[[Context, dict[str, object]], object]


@dataclass(frozen=True)
class Command:
    handler: Handler
    arguments: Struct | None = NO_ARGUMENTS  # None: the handler checks them itself
    runs: Runs = Runs.QUERY
    # answered before it runs (quit: the client gets its reply before the machine stops)
    reply_first: bool = False


def _query_status(ctx: Context, args: dict[str, object]) -> object:
    """StatusInfo (qapi/run-state.json)."""
    state = ctx.controller.state
    return {"running": state is MachineState.RUNNING, "status": hmp.RUN_STATES[state]}


def _query_name(ctx: Context, args: dict[str, object]) -> object:
    """NameInfo (qapi/misc.json): no `name` member when the VM has none."""
    name = ctx.controller.name
    return {"name": name} if name else {}


def _query_cpus_fast(ctx: Context, args: dict[str, object]) -> object:
    """CpuInfoFast (qapi/machine.json), as QEMU's PC machine fills it."""
    return [
        {
            "cpu-index": vcpu.index,
            "qom-path": stats.vcpu_qom_path(vcpu.index),
            "thread-id": vcpu.thread_id,
            "props": {"socket-id": vcpu.socket, "core-id": vcpu.core, "thread-id": vcpu.thread},
            "target": "x86_64",
        }
        for vcpu in ctx.controller.vcpus()
    ]


def _query_block(ctx: Context, args: dict[str, object]) -> object:
    """BlockInfo with BlockDeviceInfo and ImageInfo (qapi/block-core.json): a raw file
    with no throttling, write-back cache."""
    return [
        {
            "device": disk.id,
            **({"qdev": disk.qdev} if disk.qdev else {}),
            "type": "unknown",
            "removable": False,
            "locked": False,
            "io-status": "ok",
            "inserted": {
                "file": disk.file,
                "node-name": disk.id,
                "ro": disk.read_only,
                "drv": disk.format,
                "backing_file_depth": 0,
                "encrypted": False,
                "detect_zeroes": "off",
                "bps": 0,
                "bps_rd": 0,
                "bps_wr": 0,
                "iops": 0,
                "iops_rd": 0,
                "iops_wr": 0,
                "write_threshold": 0,
                "cache": {"writeback": True, "direct": False, "no-flush": False},
                "image": {
                    "filename": disk.file,
                    "format": disk.format,
                    "virtual-size": disk.size,
                    "dirty-flag": False,
                },
            },
        }
        for disk in ctx.controller.block_devices()
    ]


def _ack(action: Callable[[MachineController], None]) -> Handler:
    def handler(ctx: Context, args: dict[str, object]) -> object:
        action(ctx.controller)
        return {}

    return handler


def _stop(controller: MachineController) -> None:
    # QEMU's stop on a VM that is not running does nothing and succeeds
    if controller.state is MachineState.RUNNING:
        controller.pause()


def _cont(controller: MachineController) -> None:
    state = controller.state
    if state is MachineState.STOPPED:
        raise QmpError("Resetting the Virtual Machine is required")
    if state is not MachineState.RUNNING:
        controller.resume()


def _migrate(ctx: Context, args: dict[str, object]) -> object:
    """migrate (qapi/migration.json): only `uri`, a file: one; detached, as always now."""
    if args.get("resume"):
        raise QmpError("Cannot resume if there is no paused migration")
    if "uri" not in args:
        raise QmpError("Parameter 'uri' is missing: pyvmm takes a file: URI, not channels")
    ctx.migration.start(ctx.controller, str(args["uri"]), ctx.broadcast)
    return {}


def _hmp(ctx: Context, args: dict[str, object]) -> object:
    cpu = args.get("cpu-index")
    return hmp.run(ctx.controller, str(args["command-line"]), cpu if isinstance(cpu, int) else None)


COMMANDS: dict[str, Command] = {
    # qmp_capabilities is the session's own (negotiation); listed for query-commands
    "query-version": Command(lambda ctx, args: version(), runs=Runs.LOOP),
    "query-commands": Command(lambda ctx, args: [{"name": name} for name in names()], runs=Runs.LOOP),
    "query-kvm": Command(lambda ctx, args: {"enabled": True, "present": True}, runs=Runs.LOOP),
    "query-status": Command(_query_status),
    "query-name": Command(_query_name),
    "query-cpus-fast": Command(_query_cpus_fast),
    "query-block": Command(_query_block),
    "stop": Command(_ack(_stop), runs=Runs.LIFECYCLE),
    "cont": Command(_ack(_cont), runs=Runs.LIFECYCLE),
    "system_powerdown": Command(_ack(lambda c: c.powerdown()), runs=Runs.LIFECYCLE),
    "system_reset": Command(_ack(lambda c: c.reset()), runs=Runs.LIFECYCLE),
    "quit": Command(_ack(lambda c: c.quit()), runs=Runs.LIFECYCLE, reply_first=True),
    "migrate": Command(
        _migrate,
        Struct(
            (
                Field("uri", STR, True),
                Field("detach", BOOL, True),
                Field("resume", BOOL, True),
            )
        ),
        runs=Runs.LOOP,
    ),
    "query-migrate": Command(lambda ctx, args: ctx.migration.info(), runs=Runs.LOOP),
    # query-stats' arguments are a union on `target`: checked by stats.query_stats
    "query-stats": Command(lambda ctx, args: stats.query_stats(ctx.controller, args), arguments=None),
    "query-stats-schemas": Command(
        lambda ctx, args: stats.query_stats_schemas(ctx.controller, args),
        Struct((Field("provider", stats.PROVIDERS, True),)),
    ),
    "human-monitor-command": Command(
        _hmp, Struct((Field("command-line", STR), Field("cpu-index", INT, True)))
    ),
    f"{DOWNSTREAM}query-counters": Command(lambda ctx, args: stats.counters(ctx.controller.exit_stats())),
}


def names() -> tuple[str, ...]:
    return ("qmp_capabilities", *COMMANDS)


def find(name: str) -> Command:
    command = COMMANDS.get(name)
    if command is None:
        raise QmpError(f"The command {name} has not been found", ErrorClass.COMMAND_NOT_FOUND)
    return command
