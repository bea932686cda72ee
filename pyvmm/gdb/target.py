"""What the gdb stub needs from a machine: the `DebugTarget` Protocol the machine
implements, and the `DebugEvent`s it reports.

The contract, in all-stop mode (gdb manual, "Remote Protocol", §E.10 "Stop Reply
Packets" and "All-Stop Mode"):

- `debug_stop()` parks every vCPU (the machine's DEBUG state) and returns once all are
  parked. Each time the machine goes from running to parked it reports exactly one
  `DebugEvent`: `REQUESTED` for a stop asked by `debug_stop()`, `DEBUG_EXIT` when a
  vCPU's KVM_RUN returned KVM_EXIT_DEBUG (the machine then parks the others: all-stop),
  `ENDED` when the guest ended (it will not run again). A `debug_stop()` on a parked
  machine does nothing and reports nothing; on a machine that was never started it
  parks it all the same (gdb's `--gdb-wait`: the first instruction has not run).
- `run_on_vcpu(i, fn)` calls `fn(vcpu)` on vCPU i's own thread while the vCPUs are
  parked, and returns what it returns (or raises what it raises). A port or MMIO exit
  the vCPU was in has been completed first, so its registers are at an instruction
  boundary.
- `set_guest_debug(i, control, debugreg)` sets vCPU i's KVM_SET_GUEST_DEBUG (while
  parked). The target keeps it: a machine that replaces its vCPUs (a guest reboot
  the VMM restarts) gives the new ones the same, so breakpoints outlive a reboot.
- `debug_continue(step_vcpu)` lets the machine run again: every vCPU, or, with
  `step_vcpu`, only that one (the others stay parked) until its next event. The stub
  has set each vCPU's guest debugging beforehand, SINGLESTEP for a step; the machine
  does not change it.
- `wait_debug_event(timeout)` returns the next event, or None after `timeout` seconds.
- `kill()` stops the machine for good (gdb's `k`); it reports `ENDED`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pyvmm.kvm import Vcpu
from pyvmm.memory import GuestMemory

T = TypeVar("T")


class StopReason(enum.Enum):
    DEBUG_EXIT = "KVM_EXIT_DEBUG"
    REQUESTED = "stop requested"
    ENDED = "machine ended"


@dataclass(frozen=True)
class DebugEvent:
    """Why the machine stopped. For `DEBUG_EXIT`, the exit's `kvm_debug_exit_arch`
    (KVM api.rst, KVM_EXIT_DEBUG): the exception vector (1 = #DB, 3 = #BP), the guest
    RIP, DR6 and DR7. For `ENDED`, the exit status the machine will return."""

    vcpu: int
    reason: StopReason
    exception: int = 0
    pc: int = 0
    dr6: int = 0
    dr7: int = 0
    exit_status: int = 0


class DebugTarget(Protocol):
    """A machine the gdb stub can drive; see the module docstring for the contract."""

    @property
    def vcpu_count(self) -> int: ...

    @property
    def memory(self) -> GuestMemory: ...

    def run_on_vcpu(self, index: int, fn: Callable[[Vcpu], T]) -> T: ...

    def set_guest_debug(self, index: int, control: int, debugreg: list[int]) -> None: ...

    def debug_stop(self) -> None: ...

    def debug_continue(self, step_vcpu: int | None) -> None: ...

    def wait_debug_event(self, timeout: float) -> DebugEvent | None: ...

    def kill(self) -> None: ...


__all__ = ["DebugEvent", "DebugTarget", "StopReason"]
