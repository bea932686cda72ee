"""The KVM binding: `linux/kvm.h` as ctypes structures, and `Kvm` / `Vm` / `Vcpu`
handles owning their file descriptors. Imports nothing else of pyvmm."""

from pyvmm.kvm.errors import KvmCapabilityError, KvmError, KvmIoctlError, KvmUnavailableError
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.uapi import Cap, ExitReason, InternalErrorSuberror, MpState, SystemEvent
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

__all__ = [
    "Cap",
    "ExitReason",
    "InternalErrorSuberror",
    "Kvm",
    "KvmCapabilityError",
    "KvmError",
    "KvmIoctlError",
    "KvmUnavailableError",
    "MpState",
    "SystemEvent",
    "Vcpu",
    "Vm",
]
