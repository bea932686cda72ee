"""A machine's lifecycle: its states and the transitions between them, checked in one
place before anything acts (Cloud Hypervisor's `VmState::valid_transition`).

    created ──start──▶ running ◀──resume/pause──▶ paused
       │                 │  ▲                        │
       │            debug│  │continue                │
       │                 ▼  │                        │
       │                debug                        │
       └──────────────────┴────────stop──────────────┴──▶ stopped

`created` is a built (or not yet built) VM whose vCPUs have not run; `start(paused=True)`
goes straight to `paused` (QEMU's `-S`, gdb's `--gdb-wait`). `debug` is a stop the
debugger asked for or a breakpoint hit: the vCPUs are parked as in `paused`, but only
the debugger continues them. `stopped` is final.
"""

from __future__ import annotations

import enum

from pyvmm.errors import LifecycleError


class MachineState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    DEBUG = "debug"
    STOPPED = "stopped"


_ALLOWED: dict[MachineState, frozenset[MachineState]] = {
    MachineState.CREATED: frozenset({MachineState.RUNNING, MachineState.PAUSED, MachineState.STOPPED}),
    MachineState.RUNNING: frozenset({MachineState.PAUSED, MachineState.DEBUG, MachineState.STOPPED}),
    MachineState.PAUSED: frozenset({MachineState.RUNNING, MachineState.DEBUG, MachineState.STOPPED}),
    MachineState.DEBUG: frozenset({MachineState.RUNNING, MachineState.PAUSED, MachineState.STOPPED}),
    MachineState.STOPPED: frozenset(),
}


def check_transition(current: MachineState, target: MachineState) -> None:
    """`LifecycleError` unless a machine in `current` may go to `target`."""
    if target not in _ALLOWED[current]:
        raise LifecycleError(f"the machine is {current.value}: it cannot become {target.value}")


def is_parked(state: MachineState) -> bool:
    """Whether the vCPUs of a started machine in `state` are parked (not in KVM_RUN)."""
    return state in (MachineState.PAUSED, MachineState.DEBUG)
