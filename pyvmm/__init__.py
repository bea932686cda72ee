"""pyvmm: a virtual machine monitor for Linux KVM, in Python.

    from pyvmm import Machine, MachineConfig
    result = Machine(MachineConfig(kernel="hello.elf", memory="128M")).run()
    print(result.console_text, result.exit.describe())

The names below load on first use, so `import pyvmm.kvm` (the bare KVM binding)
pulls in nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyvmm.config import MachineConfig
    from pyvmm.errors import VmmError
    from pyvmm.machine import Machine, RunResult
    from pyvmm.outcome import ExitKind, GuestExit

__all__ = ["ExitKind", "GuestExit", "Machine", "MachineConfig", "RunResult", "VmmError"]
__version__ = "0.1.0"

_HOMES = {
    "MachineConfig": "pyvmm.config",
    "VmmError": "pyvmm.errors",
    "Machine": "pyvmm.machine",
    "RunResult": "pyvmm.machine",
    "ExitKind": "pyvmm.outcome",
    "GuestExit": "pyvmm.outcome",
}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pyvmm' has no attribute {name!r}")
