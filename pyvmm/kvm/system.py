"""`Kvm`: the /dev/kvm handle. Checks the API version, answers capability questions
and creates VMs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pyvmm.kvm import ioctls, x86
from pyvmm.kvm.errors import KvmError, KvmUnavailableError
from pyvmm.kvm.handle import KvmHandle
from pyvmm.kvm.uapi import KVM_API_VERSION, Cap

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm

DEFAULT_DEVICE = "/dev/kvm"
_MAX_CPUID_ENTRIES = 256
_MAX_MSR_INDICES = 1024


class Kvm(KvmHandle):
    """An open /dev/kvm."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_DEVICE) -> None:
        path = os.fspath(path)  # a str from here on: it names the device in every message
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailableError(f"{path} does not exist: KVM is not available on this host") from None
        except PermissionError:
            raise KvmUnavailableError(
                f"no permission to open {path}: add yourself to its group (usually 'kvm') or run as root"
            ) from None
        except OSError as exc:
            raise KvmUnavailableError(f"cannot open {path}: {exc.strerror}") from None
        super().__init__(fd)
        self.path = path
        version = self._ioctl(ioctls.KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            self.close()
            raise KvmError(f"{path} speaks KVM API {version}, pyvmm needs {KVM_API_VERSION}")
        self._caps: dict[int, int] = {}

    def check_extension(self, cap: Cap | int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific positive value."""
        if cap not in self._caps:
            self._caps[cap] = self._ioctl(ioctls.KVM_CHECK_EXTENSION, int(cap))
        return self._caps[cap]

    def max_vcpus(self) -> int:
        """The most vCPUs one VM may have (KVM_CAP_MAX_VCPUS, else KVM_CAP_NR_VCPUS, else 4)."""
        return self.check_extension(Cap.MAX_VCPUS) or self.check_extension(Cap.NR_VCPUS) or 4

    def vcpu_mmap_size(self) -> int:
        return self._ioctl(ioctls.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self) -> list[x86.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID: the leaves KVM can give a guest."""
        layout = x86.cpuid2_with(_MAX_CPUID_ENTRIES)
        buffer = layout()
        buffer.nent = _MAX_CPUID_ENTRIES
        self._ioctl(ioctls.KVM_GET_SUPPORTED_CPUID, buffer)
        return [x86.kvm_cpuid_entry2.from_buffer_copy(e) for e in buffer.entries[: buffer.nent]]

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU."""
        layout = x86.msr_list_with(_MAX_MSR_INDICES)
        buffer = layout()
        buffer.nmsrs = _MAX_MSR_INDICES
        self._ioctl(ioctls.KVM_GET_MSR_INDEX_LIST, buffer)
        return list(buffer.indices[: buffer.nmsrs])

    def create_vm(self) -> Vm:
        from pyvmm.kvm.vm import Vm

        fd = self._ioctl(ioctls.KVM_CREATE_VM)
        return Vm(self, fd)
