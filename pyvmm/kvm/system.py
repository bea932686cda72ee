"""`Kvm`: the /dev/kvm handle. Checks the API version, answers capability questions
and creates VMs."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import TYPE_CHECKING

from pyvmm.kvm import ioctls, x86
from pyvmm.kvm.errors import KvmError, KvmIoctlError, KvmUnavailableError
from pyvmm.kvm.fd import FileDescriptor
from pyvmm.kvm.uapi import KVM_API_VERSION, Cap

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm

DEFAULT_DEVICE = "/dev/kvm"
_MAX_CPUID_ENTRIES = 256
_MAX_MSR_INDICES = 1024


_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int


def checked_ioctl(fd: int, name: str, request: int, arg: int | ctypes._CData = 0) -> int:
    """Issue one ioctl; turn a failure into a `KvmIoctlError` that names it.

    `arg` is an integer (passed as an unsigned long) or a ctypes object (passed by
    reference). libc's ioctl is called through ctypes rather than `fcntl.ioctl`, which
    narrows integers to a C int and copies buffers.
    """
    argument = ctypes.c_ulong(arg) if isinstance(arg, int) else ctypes.byref(arg)
    result: int = _ioctl(fd, ctypes.c_ulong(request), argument)
    if result < 0:
        raise KvmIoctlError(name, ctypes.get_errno() or errno.EIO)
    return result


class Kvm(FileDescriptor):
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
        version = checked_ioctl(fd, "KVM_GET_API_VERSION", ioctls.KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            self.close()
            raise KvmError(f"{path} speaks KVM API {version}, pyvmm needs {KVM_API_VERSION}")
        self._caps: dict[int, int] = {}

    def check_extension(self, cap: Cap | int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific positive value."""
        if cap not in self._caps:
            self._caps[cap] = checked_ioctl(
                self.fd, "KVM_CHECK_EXTENSION", ioctls.KVM_CHECK_EXTENSION, int(cap)
            )
        return self._caps[cap]

    def max_vcpus(self) -> int:
        """The most vCPUs one VM may have (KVM_CAP_MAX_VCPUS, else KVM_CAP_NR_VCPUS, else 4)."""
        return self.check_extension(Cap.MAX_VCPUS) or self.check_extension(Cap.NR_VCPUS) or 4

    def vcpu_mmap_size(self) -> int:
        return checked_ioctl(self.fd, "KVM_GET_VCPU_MMAP_SIZE", ioctls.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self) -> list[x86.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID: the leaves KVM can give a guest."""
        layout = x86.cpuid2_with(_MAX_CPUID_ENTRIES)
        buffer = layout()
        buffer.nent = _MAX_CPUID_ENTRIES
        checked_ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", ioctls.KVM_GET_SUPPORTED_CPUID, buffer)
        return [x86.kvm_cpuid_entry2.from_buffer_copy(e) for e in buffer.entries[: buffer.nent]]

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU."""
        layout = x86.msr_list_with(_MAX_MSR_INDICES)
        buffer = layout()
        buffer.nmsrs = _MAX_MSR_INDICES
        checked_ioctl(self.fd, "KVM_GET_MSR_INDEX_LIST", ioctls.KVM_GET_MSR_INDEX_LIST, buffer)
        return list(buffer.indices[: buffer.nmsrs])

    def create_vm(self) -> Vm:
        from pyvmm.kvm.vm import Vm

        fd = checked_ioctl(self.fd, "KVM_CREATE_VM", ioctls.KVM_CREATE_VM, 0)
        return Vm(self, fd)
