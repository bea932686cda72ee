"""The error of the interrupt layer."""

from __future__ import annotations

from pyvmm.errors import VmmError
from pyvmm.kvm import Cap, Vm


class InterruptError(VmmError):
    """No GSI is left, KVM refused a route, or this host lacks what an interrupt needs."""


def require(vm: Vm, cap: Cap, purpose: str) -> int:
    """KVM_CHECK_EXTENSION for `cap`; an `InterruptError` naming `purpose` when absent."""
    value = vm.kvm.check_extension(cap)
    if not value:
        raise InterruptError(f"this host's KVM lacks KVM_CAP_{cap.name}, needed for {purpose}")
    return value
