"""Ports a guest pokes harmlessly: the POST code port 0x80, the 0xED delay port, ...

Firmware and kernels write progress codes to port 0x80 and use it (or 0xED) for short
I/O delays. Claiming such ports with a `PortSink` keeps them out of the bus's
"unclaimed" counters and gives them a read value of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.bus import all_ones
from pyvmm.errors import ConfigError
from pyvmm.snapshot.checks import check_int, check_type
from pyvmm.snapshot.registry import saved_state

POST_CODE_PORT = 0x80
IO_DELAY_PORT = 0xED


@saved_state("port-sink")
@dataclass(frozen=True)
class PortSinkState:
    """A `PortSink`'s state: the last value written (the fill value is configuration)."""

    last_value: int  # up to 8 bytes, the widest access


class PortSink:
    """Accepts and ignores writes; every byte reads as `fill` (all ones by default).

    `last_value` keeps the last value written, which for port 0x80 is the guest's
    latest POST code.
    """

    def __init__(self, fill: int = 0xFF) -> None:
        if not 0 <= fill <= 0xFF:
            raise ConfigError(f"port fill value must be a byte value, not {fill:#x}")
        self._fill = fill
        self.last_value = 0

    def reset(self) -> None:
        self.last_value = 0

    def save(self) -> PortSinkState:
        return PortSinkState(self.last_value)

    def restore(self, state: object) -> None:
        """Take `state`, checked first (a bad one raises `StateError`, nothing changes)."""
        checked = check_type("port sink", state, PortSinkState)
        self.last_value = check_int("port sink", "last_value", checked.last_value, 0, (1 << 64) - 1)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(bytes((self._fill,)) * size, "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.last_value = value & all_ones(size)
