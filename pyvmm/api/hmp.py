"""`human-monitor-command`: the few HMP commands pyvmm answers, as QEMU's human monitor
prints them (QEMU's monitor/hmp-cmds.c), lines ending in CRLF as the monitor sends
them. An unknown command is answered as HMP answers it, in the text, not as a QMP
error."""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.api.controller import MachineController
from pyvmm.api.protocol import PACKAGE, QEMU_VERSION, QmpError
from pyvmm.machine.lifecycle import MachineState

# QEMU's RunState for each machine state (qapi/run-state.json)
RUN_STATES = {
    MachineState.CREATED: "prelaunch",
    MachineState.RUNNING: "running",
    MachineState.PAUSED: "paused",
    MachineState.DEBUG: "debug",
    MachineState.STOPPED: "shutdown",
}
MAX_COMMAND_LINE = 4096


def _crlf(text: str) -> str:
    lines = text.splitlines()
    return "".join(f"{line}\r\n" for line in lines)


def _status(controller: MachineController, cpu: int) -> str:
    del cpu
    status = RUN_STATES[controller.state]
    if status == "running":
        return "VM status: running\r\n"
    return "VM status: paused\r\n" if status == "paused" else f"VM status: paused ({status})\r\n"


def _registers(controller: MachineController, cpu: int) -> str:
    try:
        return _crlf(controller.registers_text(cpu))
    except IndexError:
        raise QmpError("Parameter 'cpu-index' expects a CPU number") from None


def _cpus(controller: MachineController, cpu: int) -> str:
    return "".join(
        f"{'*' if vcpu.index == cpu else ' '} CPU #{vcpu.index}: thread_id={vcpu.thread_id}\r\n"
        for vcpu in controller.vcpus()
    )


def _kvm(controller: MachineController, cpu: int) -> str:
    del controller, cpu
    return "kvm support: enabled\r\n"


def _name(controller: MachineController, cpu: int) -> str:
    del cpu
    return f"{controller.name}\r\n" if controller.name else ""


def _version(controller: MachineController, cpu: int) -> str:
    del controller, cpu
    return "{major}.{minor}.{micro}".format(**QEMU_VERSION) + f" ({PACKAGE})\r\n"


INFO: dict[str, Callable[[MachineController, int], str]] = {
    "status": _status,
    "registers": _registers,
    "cpus": _cpus,
    "kvm": _kvm,
    "name": _name,
    "version": _version,
}


def run(controller: MachineController, command_line: str, cpu_index: int | None) -> str:
    """The monitor's output for `command_line`, run with `cpu_index` as its current CPU."""
    if len(command_line) > MAX_COMMAND_LINE:
        raise QmpError(f"Parameter 'command-line' is longer than {MAX_COMMAND_LINE} characters")
    if cpu_index is not None and cpu_index not in {vcpu.index for vcpu in controller.vcpus()}:
        raise QmpError("Parameter 'cpu-index' expects a CPU number")
    words = command_line.split()
    if not words:
        return ""
    if words[0] not in ("info", "i"):
        return f"unknown command: '{words[0]}'\r\n"
    if len(words) < 2 or words[1] not in INFO:
        return f"unknown command: '{' '.join(words[:2])}'\r\n"
    cpu = 0 if cpu_index is None else cpu_index
    if words[1] == "registers" and words[2:] == ["-a"]:
        return "".join(
            f"\r\nCPU#{vcpu.index}\r\n" + _registers(controller, vcpu.index) for vcpu in controller.vcpus()
        )
    return INFO[words[1]](controller, cpu)
