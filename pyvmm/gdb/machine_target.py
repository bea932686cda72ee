"""`MachineTarget`: the `DebugTarget` the gdb stub drives, over a `pyvmm.machine.Machine`
(target.py states the contract). A debugger's stop is the machine's DEBUG state,
reached through the machine's one pause order (`Machine.stop_the_world`); a vCPU that
exits with KVM_EXIT_DEBUG parks itself at once (`VcpuRunner.on_debug`) and the rest
of the world stops from a helper thread, since a vCPU thread cannot wait for itself
to park."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

from pyvmm.errors import LifecycleError
from pyvmm.gdb.debugregs import GuestDebug
from pyvmm.gdb.target import DebugEvent, StopReason
from pyvmm.kvm import Vcpu
from pyvmm.machine import Machine
from pyvmm.machine.lifecycle import MachineState
from pyvmm.machine.vcpu import DebugExit
from pyvmm.memory import GuestMemory
from pyvmm.outcome import ExitKind, GuestExit

log = logging.getLogger(__name__)
T = TypeVar("T")


def _guest_debug(control: int, debugreg: list[int]) -> Callable[[Vcpu], None]:
    return lambda vcpu: vcpu.set_guest_debug(control, debugreg)


class MachineTarget:
    """A built machine under a debugger (attach before the machine starts, or while
    it is paused or running)."""

    def __init__(self, machine: Machine) -> None:
        self._events: queue.Queue[DebugEvent] = queue.Queue()
        self._ended = False
        self._guest_debug: dict[int, tuple[int, list[int]]] = {}  # the stub's, per vCPU
        self._machine = machine
        self._memory = self._hook(machine)

    def _hook(self, machine: Machine) -> GuestMemory:
        if machine.memory is None:
            raise LifecycleError("a debugger attaches to a built machine")
        for runner in machine.runners:
            runner.on_debug = self._hit
            runner.debugged = True  # the emulator runs no instruction ahead of a step
        machine.add_listener(self._on_machine_event)
        return machine.memory

    def attach(self, machine: Machine) -> None:
        """Debug `machine` from now on, built and not started: the guest rebooted and
        the VMM boots it again. Its vCPUs get the guest debugging the stub set (the
        breakpoints stay); the debugger sees no stop for the reboot."""
        self._machine.remove_listener(self._on_machine_event)
        self._memory = self._hook(machine)
        self._machine = machine
        for index, (control, debugreg) in self._guest_debug.items():
            if index < len(machine.runners):
                machine.on_vcpu(index, _guest_debug(control, debugreg))
                machine.runners[index].single_stepping = bool(control & GuestDebug.SINGLESTEP)

    def end(self, status: int) -> None:
        """The VMM will not run the guest again (a reboot it does not restart)."""
        if not self._ended:
            self._ended = True
            self._events.put(DebugEvent(0, StopReason.ENDED, exit_status=status))

    # --- DebugTarget ----------------------------------------------------------------------

    @property
    def vcpu_count(self) -> int:
        return len(self._machine.runners)

    @property
    def memory(self) -> GuestMemory:
        return self._memory

    def run_on_vcpu(self, index: int, fn: Callable[[Vcpu], T]) -> T:
        return self._machine.on_vcpu(index, fn)

    def set_guest_debug(self, index: int, control: int, debugreg: list[int]) -> None:
        self._machine.on_vcpu(index, _guest_debug(control, debugreg))
        self._guest_debug[index] = (control, list(debugreg))
        self._machine.runners[index].single_stepping = bool(control & GuestDebug.SINGLESTEP)

    def debug_stop(self) -> None:
        """Running: stop the world, one REQUESTED event. Paused (`--gdb-wait`, or by
        QMP): the debugger holds it, no event. Already stopped or ended: nothing."""
        machine = self._machine
        state = machine.state
        if state is MachineState.RUNNING:
            try:
                machine.stop_the_world(MachineState.DEBUG)
            except LifecycleError:
                if machine.state is not MachineState.STOPPED:
                    raise
                return  # it ended meanwhile: ENDED is queued
            self._events.put(DebugEvent(0, StopReason.REQUESTED))
        elif state is MachineState.PAUSED:
            machine.debug_hold()
        elif state is MachineState.CREATED:
            raise LifecycleError("the machine has not started: start it paused for a debugger (--gdb-wait)")

    def debug_continue(self, step_vcpu: int | None) -> None:
        self._machine.restart_the_world(MachineState.DEBUG, only=step_vcpu)

    def wait_debug_event(self, timeout: float) -> DebugEvent | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def kill(self) -> None:
        self._machine.stop(GuestExit(ExitKind.STOPPED, "killed by the debugger"))

    # --- from the machine -------------------------------------------------------------------

    def _hit(self, hit: DebugExit) -> None:
        """On the vCPU's thread, which parks after this returns: the others stop from
        a helper thread (all-stop), and the event is queued once they have."""
        threading.Thread(target=self._stop_for, args=(hit,), name="gdb-stop", daemon=True).start()

    def _stop_for(self, hit: DebugExit) -> None:
        machine = self._machine
        try:
            machine.stop_the_world(MachineState.DEBUG)
        except LifecycleError:
            # Stopped already (another vCPU's hit, a debugger's stop, a pause): this
            # vCPU stays parked and meets its breakpoint again when it runs.
            return
        self._events.put(DebugEvent(hit.vcpu, StopReason.DEBUG_EXIT, hit.exception, hit.pc, hit.dr6, hit.dr7))

    def _on_machine_event(self, event: str, data: dict[str, object]) -> None:
        """SHUTDOWN ends the debugging; a RESET is a reboot the VMM may restart (it
        calls `attach`, or `end` when it does not)."""
        if event == "SHUTDOWN":
            outcome = self._machine.outcome
            self.end(outcome.status if outcome is not None else 0)
