"""How a guest ended, as returned by `Machine.run()` and turned into an exit status."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class ExitKind(enum.Enum):
    POWEROFF = "poweroff"  # the guest powered off (ACPI sleep control / PM1 control)
    REBOOT = "reboot"  # the guest asked for a reset (keyboard controller, triple fault policy)
    DEBUG_EXIT = "debug-exit"  # the guest wrote to the isa-debug-exit port
    TRIPLE_FAULT = "triple-fault"  # KVM_EXIT_SHUTDOWN
    ERROR = "error"  # the VM cannot go on: internal error, failed entry, ...
    STOPPED = "stopped"  # the user or the host stopped the VM
    QUIT = "quit"  # a control client asked the VMM to quit (QMP `quit`): status 0, as QEMU's


# Exit statuses of `pyvmm run` that are not a debug-exit value.
STATUS_POWEROFF = 0
STATUS_REBOOT = 64
STATUS_ERROR = 70
STATUS_TRIPLE_FAULT = 71
STATUS_STOPPED = 72


@dataclass(frozen=True)
class GuestExit:
    """The end of a guest: what happened, a detail line, and the value it carries."""

    kind: ExitKind
    detail: str = ""
    code: int = 0  # the value written to the debug-exit port

    @property
    def status(self) -> int:
        """The process exit status `pyvmm run` uses for this outcome."""
        if self.kind is ExitKind.DEBUG_EXIT:
            return ((self.code << 1) | 1) & 0xFF
        return {
            ExitKind.POWEROFF: STATUS_POWEROFF,
            ExitKind.QUIT: STATUS_POWEROFF,
            ExitKind.REBOOT: STATUS_REBOOT,
            ExitKind.TRIPLE_FAULT: STATUS_TRIPLE_FAULT,
            ExitKind.ERROR: STATUS_ERROR,
            ExitKind.STOPPED: STATUS_STOPPED,
        }[self.kind]

    def describe(self) -> str:
        text = self.kind.value
        if self.kind is ExitKind.DEBUG_EXIT:
            text += f" (value {self.code:#x}, status {self.status})"
        return f"{text}: {self.detail}" if self.detail else text


class StopRequest(Protocol):
    """Given to devices that can end the VM (debug exit, power control, reset)."""

    def __call__(self, outcome: GuestExit) -> None: ...


class ConsoleInput(Protocol):
    """Where host input for the guest's interactive console goes (the UART, or
    virtio-console's hvc0): `feed` takes bytes from any thread, dropping (and
    counting) what its host buffer has no room for; `input_room` says how much that is
    now, so a sender that must lose nothing (a piped stdin) waits instead, as QEMU's
    character back ends ask `can_read` first."""

    def feed(self, data: bytes) -> None: ...

    def input_room(self) -> int: ...


class InterruptLine(Protocol):
    """An interrupt input of the platform (an IOAPIC/PIC pin), driven by a device."""

    def set_level(self, high: bool) -> None: ...
