"""The gdb remote serial protocol stub: a debugger drives the guest's vCPUs.

`GdbServer(target, parse_gdb_address("tcp::1234"))` listens for gdb; the machine is
the `target`, a `DebugTarget` (target.py: the contract between stub and machine).
Modules: packets.py (framing), registers.py (the x86-64 register file and
target.xml), debugregs.py (DR7 and KVM_SET_GUEST_DEBUG), paging.py (guest-virtual
memory), breakpoints.py (Z0-Z4), probe.py (what this host's KVM delivers), stub.py
(the packets of a session), server.py (TCP, one debugger at a time, all-stop).
"""

from pyvmm.gdb.server import DEFAULT_ADDRESS, DEFAULT_PORT, GdbAddress, GdbServer, parse_gdb_address
from pyvmm.gdb.target import DebugEvent, DebugTarget, StopReason

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_PORT",
    "DebugEvent",
    "DebugTarget",
    "GdbAddress",
    "GdbServer",
    "StopReason",
    "parse_gdb_address",
]
