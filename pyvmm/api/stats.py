"""QMP's `query-stats` and `query-stats-schemas` over KVM's binary statistics, in
QEMU's result shapes (qapi/stats.json; QEMU's accel/kvm/kvm-all.c fills them from the
same KVM_GET_STATS_FD descriptors), and pyvmm's own counters as a downstream command
(qmp-spec.rst, "Downstream extension of QMP")."""

from __future__ import annotations

from collections.abc import Sequence

from pyvmm.api.arguments import STR, ArrayOf, Enum, Field, Struct, check, check_struct
from pyvmm.api.controller import KvmStatsSet, MachineController, StatsTarget
from pyvmm.api.protocol import QmpError
from pyvmm.kvm.stats import StatDescriptor
from pyvmm.kvm.uapi import StatsBase, StatsType, StatsUnit
from pyvmm.machine.stats import ExitStats

PROVIDER = "kvm"
PROVIDERS = Enum((PROVIDER,))
TARGETS = Enum(("vm", "vcpu", "cryptodev"))
# StatsRequest: a provider and, optionally, the names wanted from it
_REQUEST = Struct((Field("provider", PROVIDERS), Field("names", ArrayOf(STR), True)))


def vcpu_qom_path(index: int) -> str:
    """Where QEMU's PC machine puts CPU `index` in its object tree (query-cpus-fast)."""
    return f"/machine/unattached/device[{index}]"


# KVM's descriptor fields as QEMU names them (accel/kvm/kvm-all.c)
_TYPES = {
    StatsType.CUMULATIVE: "cumulative",
    StatsType.INSTANT: "instant",
    StatsType.PEAK: "peak",
    StatsType.LINEAR_HIST: "linear-histogram",
    StatsType.LOG_HIST: "log2-histogram",
}
_UNITS = {
    StatsUnit.NONE: None,
    StatsUnit.BYTES: "bytes",
    StatsUnit.SECONDS: "seconds",
    StatsUnit.CYCLES: "cycles",
    StatsUnit.BOOLEAN: "boolean",
}
_BASES = {StatsBase.POW10: 10, StatsBase.POW2: 2}


def _value(descriptor: StatDescriptor, values: tuple[int, ...]) -> object:
    """StatsValue: a boolean, one number, or a histogram's buckets."""
    if descriptor.unit is StatsUnit.BOOLEAN:
        return bool(values[0]) if values else False
    if descriptor.size == 1:
        return values[0] if values else 0
    return list(values)


def _schema(descriptor: StatDescriptor) -> dict[str, object]:
    """StatsSchemaValue: `base` only with an exponent, `bucket-size` only for a
    linear histogram."""
    schema: dict[str, object] = {
        "name": descriptor.name,
        "type": _TYPES[descriptor.type],
        "exponent": descriptor.exponent,
    }
    unit = _UNITS[descriptor.unit]
    if unit is not None:
        schema["unit"] = unit
    if descriptor.exponent:
        schema["base"] = _BASES[descriptor.base]
    if descriptor.type is StatsType.LINEAR_HIST:
        schema["bucket-size"] = descriptor.bucket_size
    return schema


def _check_filter(arguments: dict[str, object]) -> tuple[str, set[str] | None, list[str] | None]:
    """The target, the names asked for (None: all) and the vCPUs asked for (None: all).
    StatsFilter is a union on `target`: `vcpus` belongs to the vcpu branch only."""
    target = check(TARGETS, arguments.get("target"), "target") if "target" in arguments else None
    if target is None:
        raise QmpError("Parameter 'target' is missing")
    fields = [Field("target", TARGETS), Field("providers", ArrayOf(_REQUEST), True)]
    if target == "vcpu":
        fields.append(Field("vcpus", ArrayOf(STR), True))
    checked = check_struct(Struct(tuple(fields)), arguments)
    names: set[str] | None = None
    providers = checked.get("providers")
    if isinstance(providers, list):
        # kvm is the one provider: a request for it without names wants them all
        wanted = [request.get("names") for request in providers]
        if all(isinstance(request_names, list) for request_names in wanted):
            names = {str(name) for request_names in wanted for name in request_names}
    vcpus = checked.get("vcpus")
    return str(target), names, vcpus if isinstance(vcpus, list) else None


def query_stats(controller: MachineController, arguments: dict[str, object]) -> list[dict[str, object]]:
    target, names, vcpus = _check_filter(arguments)
    if target == "cryptodev" or names == set():
        return []
    results = []
    for stats_set in controller.kvm_stats(StatsTarget(target)):
        result: dict[str, object] = {"provider": PROVIDER}
        if stats_set.vcpu is not None:
            path = vcpu_qom_path(stats_set.vcpu)
            if vcpus is not None and path not in vcpus:
                continue
            result["qom-path"] = path
        result["stats"] = [
            {"name": descriptor.name, "value": _value(descriptor, stats_set.values.get(descriptor.name, ()))}
            for descriptor in stats_set.descriptors
            if names is None or descriptor.name in names
        ]
        results.append(result)
    return results


def _first(sets: Sequence[KvmStatsSet]) -> tuple[StatDescriptor, ...]:
    return sets[0].descriptors if sets else ()


def query_stats_schemas(
    controller: MachineController, arguments: dict[str, object]
) -> list[dict[str, object]]:
    """One schema per target, from the descriptors of the first set (every vCPU has the
    same ones)."""
    del arguments  # `provider`, checked: kvm is the only one
    schemas: list[dict[str, object]] = []
    for target in StatsTarget:
        descriptors = _first(controller.kvm_stats(target))
        if descriptors:
            schemas.append(
                {"provider": PROVIDER, "target": target.value, "stats": [_schema(d) for d in descriptors]}
            )
    return schemas


def counters(stats: ExitStats) -> dict[str, object]:
    """pyvmm's exit counters (`ExitStats`) in QAPI's style: lists of named records."""
    result: dict[str, object] = {
        "run-seconds": stats.run_seconds,
        "exit-seconds": stats.exit_seconds,
        "exits": [{"reason": name, "count": count} for name, count in sorted(stats.exits.items())],
        "vcpus": [
            {
                "cpu-index": index,
                "exits": [{"reason": name, "count": count} for name, count in sorted(exits.items())],
            }
            for index, exits in enumerate(stats.per_vcpu)
        ],
        "devices": [
            {
                "bus": entry.bus,
                "name": entry.name,
                "base": entry.base,
                "length": entry.length,
                "reads": entry.reads,
                "writes": entry.writes,
            }
            for entry in stats.ranges
        ],
        "emulated": [
            {"mnemonic": mnemonic, "count": count} for mnemonic, count in sorted(stats.emulated.items())
        ],
    }
    if stats.io is not None:
        result["io-thread"] = {
            "callbacks": stats.io.callbacks,
            "busy-seconds": stats.io.busy_seconds,
            "cpu-seconds": stats.io.cpu_seconds,
            "faults": stats.io.faults,
        }
    return result
