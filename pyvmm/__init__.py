"""pyvmm: a virtual machine monitor for Linux KVM, in Python.

    from pyvmm import Machine, MachineConfig
    result = Machine(MachineConfig(kernel="hello.elf", memory="128M")).run()
    print(result.console_text, result.exit.describe())
"""

from pyvmm.config import MachineConfig
from pyvmm.errors import VmmError
from pyvmm.machine import Machine, RunResult
from pyvmm.outcome import ExitKind, GuestExit

__all__ = ["ExitKind", "GuestExit", "Machine", "MachineConfig", "RunResult", "VmmError"]
__version__ = "0.1.0"
