"""`Vcpu`: one virtual CPU fd, its shared `kvm_run` page and its register state."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
from typing import TYPE_CHECKING

from pyvmm.kvm import ioctls, uapi, x86
from pyvmm.kvm.errors import KvmIoctlError
from pyvmm.kvm.handle import KvmHandle
from pyvmm.kvm.uapi import Cap, ExitReason, MpState

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm

# Offsets into struct kvm_run for readers that avoid building ctypes objects per exit.
RUN_IMMEDIATE_EXIT = uapi.kvm_run.immediate_exit.offset
RUN_EXIT_REASON = uapi.kvm_run.exit_reason.offset
RUN_EXIT_DATA = uapi.kvm_run.u.offset

_KVM_RUN = ioctls.KVM_RUN
_INTERRUPTED = (errno.EINTR, errno.EAGAIN)


class Vcpu(KvmHandle):
    """A vCPU created by `Vm.create_vcpu()`."""

    def __init__(self, vm: Vm, fd: int, vcpu_id: int) -> None:
        super().__init__(fd)
        self.vm = vm
        self.id = vcpu_id
        self.run_mapping = mmap.mmap(fd, vm.kvm.vcpu_mmap_size(), mmap.MAP_SHARED)
        self.run_state = uapi.kvm_run.from_buffer(self.run_mapping)
        # The XSAVE area's structure, sized once by KVM_CAP_XSAVE2 (kvm_xsave without it).
        self._xsave_type: type[ctypes.Structure] | None = None

    def run(self) -> int:
        """KVM_RUN once; the exit reason, or `ExitReason.INTR` when a signal cut it short."""
        try:
            # No argument: fcntl.ioctl probes a given int for the buffer protocol first,
            # which costs about a microsecond per call; the default argument is already 0.
            fcntl.ioctl(self.fd, _KVM_RUN)
        except OSError as exc:
            if exc.errno in _INTERRUPTED:
                return ExitReason.INTR
            raise KvmIoctlError("KVM_RUN", exc.errno or errno.EIO, f"vCPU {self.id}") from None
        return self.run_state.exit_reason  # type: ignore[no-any-return]

    def set_immediate_exit(self, value: bool) -> None:
        """`kvm_run.immediate_exit`: make the next KVM_RUN return at once (KVM_CAP_IMMEDIATE_EXIT)."""
        self.run_mapping[RUN_IMMEDIATE_EXIT] = int(value)

    def close(self) -> None:
        if self.fd >= 0:
            del self.run_state
            try:
                self.run_mapping.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping goes with it
        super().close()

    # --- state, one pair of accessors per structure -----------------------------------

    def get_regs(self) -> x86.kvm_regs:
        return self._get(ioctls.KVM_GET_REGS, x86.kvm_regs())

    def set_regs(self, regs: x86.kvm_regs) -> None:
        self._ioctl(ioctls.KVM_SET_REGS, regs)

    def get_sregs(self) -> x86.kvm_sregs:
        return self._get(ioctls.KVM_GET_SREGS, x86.kvm_sregs())

    def set_sregs(self, sregs: x86.kvm_sregs) -> None:
        self._ioctl(ioctls.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> x86.kvm_fpu:
        return self._get(ioctls.KVM_GET_FPU, x86.kvm_fpu())

    def set_fpu(self, fpu: x86.kvm_fpu) -> None:
        self._ioctl(ioctls.KVM_SET_FPU, fpu)

    def get_lapic(self) -> x86.kvm_lapic_state:
        return self._get(ioctls.KVM_GET_LAPIC, x86.kvm_lapic_state())

    def set_lapic(self, lapic: x86.kvm_lapic_state) -> None:
        self._ioctl(ioctls.KVM_SET_LAPIC, lapic)

    def get_mp_state(self) -> MpState:
        state = self._get(ioctls.KVM_GET_MP_STATE, uapi.kvm_mp_state())
        return MpState(state.mp_state)

    def set_mp_state(self, value: MpState) -> None:
        self._ioctl(ioctls.KVM_SET_MP_STATE, uapi.kvm_mp_state(int(value)))

    def get_vcpu_events(self) -> x86.kvm_vcpu_events:
        return self._get(ioctls.KVM_GET_VCPU_EVENTS, x86.kvm_vcpu_events())

    def set_vcpu_events(self, events: x86.kvm_vcpu_events) -> None:
        self._ioctl(ioctls.KVM_SET_VCPU_EVENTS, events)

    def get_debugregs(self) -> x86.kvm_debugregs:
        return self._get(ioctls.KVM_GET_DEBUGREGS, x86.kvm_debugregs())

    def set_debugregs(self, regs: x86.kvm_debugregs) -> None:
        self._ioctl(ioctls.KVM_SET_DEBUGREGS, regs)

    def get_xcrs(self) -> x86.kvm_xcrs:
        return self._get(ioctls.KVM_GET_XCRS, x86.kvm_xcrs())

    def set_xcrs(self, xcrs: x86.kvm_xcrs) -> None:
        self._ioctl(ioctls.KVM_SET_XCRS, xcrs)

    def get_xsave(self) -> ctypes.Structure:
        """The vCPU's XSAVE area; KVM_GET_XSAVE2 with the size KVM_CAP_XSAVE2 reports."""
        if self._xsave_type is None:
            size = self.vm.check_extension(Cap.XSAVE2)
            self._xsave_type = x86.xsave_with(size) if size else x86.kvm_xsave
        if self._xsave_type is x86.kvm_xsave:
            return self._get(ioctls.KVM_GET_XSAVE, x86.kvm_xsave())
        return self._get(ioctls.KVM_GET_XSAVE2, self._xsave_type())

    def set_xsave(self, area: ctypes.Structure) -> None:
        self._ioctl(ioctls.KVM_SET_XSAVE, area)

    def set_cpuid2(self, entries: list[x86.kvm_cpuid_entry2]) -> None:
        table = x86.cpuid2_with(len(entries))()
        table.nent = len(entries)
        for index, entry in enumerate(entries):
            table.entries[index] = entry
        self._ioctl(ioctls.KVM_SET_CPUID2, table)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS; only the MSRs KVM returned (it stops at the first it cannot read)."""
        table = x86.msrs_with(len(indices))()
        table.nmsrs = len(indices)
        for slot, index in enumerate(indices):
            table.entries[slot].index = index
        done = self._ioctl(ioctls.KVM_GET_MSRS, table)
        return {table.entries[i].index: table.entries[i].data for i in range(done)}

    def set_msrs(self, values: dict[int, int]) -> None:
        table = x86.msrs_with(len(values))()
        table.nmsrs = len(values)
        for slot, (index, data) in enumerate(values.items()):
            table.entries[slot].index = index
            table.entries[slot].data = data
        done = self._ioctl(ioctls.KVM_SET_MSRS, table)
        if done != len(values):
            failed = table.entries[done].index
            raise KvmIoctlError("KVM_SET_MSRS", errno.EINVAL, f"MSR {failed:#x} refused")

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ (api.rst §4.56, KVM_CAP_GET_TSC_KHZ): the guest's TSC rate."""
        return self._ioctl(ioctls.KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz: int) -> None:
        """KVM_SET_TSC_KHZ (api.rst §4.55, KVM_CAP_TSC_CONTROL): scale the guest's TSC."""
        self._ioctl(ioctls.KVM_SET_TSC_KHZ, khz)

    def kvmclock_ctrl(self) -> None:
        """KVM_KVMCLOCK_CTRL (api.rst §4.70, KVM_CAP_KVMCLOCK_CTRL): tell the guest's
        kvmclock it was paused. EINVAL when the guest has not enabled kvmclock."""
        self._ioctl(ioctls.KVM_KVMCLOCK_CTRL)

    def stats_fd(self) -> int:
        """KVM_GET_STATS_FD (api.rst §4.133, KVM_CAP_BINARY_STATS_FD): a new fd of this
        vCPU's binary statistics, owned by the caller (`pyvmm.kvm.stats` reads it)."""
        return self._ioctl(ioctls.KVM_GET_STATS_FD)

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        request = uapi.kvm_guest_debug(control=control)
        for index, value in enumerate(debugreg or []):
            request.arch.debugreg[index] = value
        self._ioctl(ioctls.KVM_SET_GUEST_DEBUG, request)

    def translate(self, linear_address: int) -> uapi.kvm_translation:
        request = uapi.kvm_translation(linear_address=linear_address)
        return self._get(ioctls.KVM_TRANSLATE, request)

    def set_signal_mask(self, blocked: set[int]) -> None:
        """KVM_SET_SIGNAL_MASK: the signals blocked while this vCPU is in KVM_RUN."""
        mask = 0
        for signal_number in blocked:
            mask |= 1 << (signal_number - 1)
        request = uapi.kvm_signal_mask_sigset(len=8, sigset=mask)
        self._ioctl(ioctls.KVM_SET_SIGNAL_MASK, request)

    def nmi(self) -> None:
        self._ioctl(ioctls.KVM_NMI)

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: only without an in-kernel local APIC."""
        self._ioctl(ioctls.KVM_INTERRUPT, uapi.kvm_interrupt(vector))
