"""The machine: `Machine` builds a VM from a `MachineConfig` through the platform, keeps
its lifecycle and runs it (`machine.py`); one thread per vCPU (`vcpu.py`); the exit and
I/O counters (`stats.py`); the guest's output, through a bounded `ConsoleStream`
(`console_stream.py`) and kept as a bounded tail (`console_tail.py`).

How a guest ended (`GuestExit`, `ExitKind`) is `pyvmm.outcome`'s, at the package root:
the devices that end a VM raise it, and a device never imports the machine.
"""

from pyvmm.machine.machine import Machine, RunResult

__all__ = ["Machine", "RunResult"]
