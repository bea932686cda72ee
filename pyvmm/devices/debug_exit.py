"""QEMU's `isa-debug-exit` device: a port a test guest writes to end the VM with a status.

A write of value `v` ends the VM; `pyvmm run` then exits with status ``(v << 1) | 1``
(see `GuestExit.status`), so a guest can report success or failure to a test harness
without any other device. The odd status keeps a guest's exit apart from pyvmm's own
statuses, as QEMU does. Reads return all ones, as from an empty port.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyvmm.bus import all_ones
from pyvmm.outcome import ExitKind, GuestExit, StopRequest
from pyvmm.snapshot.checks import check_type
from pyvmm.snapshot.registry import saved_state

logger = logging.getLogger(__name__)

DEBUG_EXIT_PORT = 0xF4
DEBUG_EXIT_LENGTH = 4  # QEMU's default iosize


@saved_state("debug-exit")
@dataclass(frozen=True)
class DebugExitState:
    """The debug-exit port keeps nothing: a write ends the VM. The (empty) state lets
    every device be saved and restored alike."""


class DebugExit:
    """Ends the VM with the value the guest writes (any width, at any offset of the port)."""

    def __init__(self, stop: StopRequest) -> None:
        self._stop = stop

    def reset(self) -> None:
        pass  # nothing to reset

    def save(self) -> DebugExitState:
        return DebugExitState()

    def restore(self, state: object) -> None:
        check_type("debug-exit", state, DebugExitState)

    def read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        code = value & all_ones(size)
        logger.debug("guest wrote %#x to the debug-exit port", code)
        self._stop(GuestExit(ExitKind.DEBUG_EXIT, "guest wrote to the debug-exit port", code=code))
