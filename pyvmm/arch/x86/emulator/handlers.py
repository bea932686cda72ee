"""The type of an instruction handler: it reads and changes state through the
`Context`, raises `InjectFault` for a guest exception and `NotCovered` for a form it
does not handle. RIP is advanced by the emulator, not by handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyvmm.arch.x86.emulator.context import Context

Handler = Callable[["Context"], None]
