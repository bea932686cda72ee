"""`Vm`: one KVM virtual machine fd: memory slots, the in-kernel irqchip and PIT,
interrupt lines, eventfds, and vCPU creation."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from pyvmm.kvm import ioctls, uapi, x86
from pyvmm.kvm.errors import KvmCapabilityError
from pyvmm.kvm.handle import KvmHandle
from pyvmm.kvm.uapi import Cap

if TYPE_CHECKING:
    from pyvmm.kvm.system import Kvm
    from pyvmm.kvm.vcpu import Vcpu


class Vm(KvmHandle):
    """A VM created by `Kvm.create_vm()`."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        super().__init__(fd)
        self.kvm = kvm

    def check_extension(self, cap: Cap | int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (per-VM answers, e.g. KVM_CAP_MAX_VCPUS)."""
        return self._ioctl(ioctls.KVM_CHECK_EXTENSION, int(cap))

    def require(self, cap: Cap, purpose: str) -> int:
        value = self.kvm.check_extension(cap)
        if not value:
            raise KvmCapabilityError(f"this host's KVM lacks KVM_CAP_{cap.name}, needed for {purpose}")
        return value

    def enable_cap(self, cap: Cap, *args: int) -> None:
        request = uapi.kvm_enable_cap(cap=int(cap))
        for index, value in enumerate(args):
            request.args[index] = value
        self._ioctl(ioctls.KVM_ENABLE_CAP, request, context=f"KVM_CAP_{cap.name}")

    # --- memory -----------------------------------------------------------------------

    def set_user_memory_region(
        self, slot: int, gpa: int, size: int, host_address: int, *, log_dirty: bool = False
    ) -> None:
        flags = uapi.KVM_MEM_LOG_DIRTY_PAGES if log_dirty else 0
        region = uapi.kvm_userspace_memory_region(slot, flags, gpa, size, host_address)
        self._ioctl(ioctls.KVM_SET_USER_MEMORY_REGION, region)

    def get_dirty_log(self, slot: int, pages: int) -> list[int]:
        """The slot's dirty bitmap, as 64-bit words (bit n of word w = page 64·w + n)."""
        words = (ctypes.c_uint64 * max((pages + 63) // 64, 1))()
        request = uapi.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(words))
        self._ioctl(ioctls.KVM_GET_DIRTY_LOG, request)
        return list(words)

    def set_tss_addr(self, address: int) -> None:
        """Three pages KVM needs below 4 GiB on Intel hosts (api.rst §4.43)."""
        self._ioctl(ioctls.KVM_SET_TSS_ADDR, address)

    def set_identity_map_addr(self, address: int) -> None:
        value = ctypes.c_uint64(address)
        self._ioctl(ioctls.KVM_SET_IDENTITY_MAP_ADDR, value)

    # --- interrupt controllers and timer ------------------------------------------------

    def create_irqchip(self) -> None:
        """In-kernel PIC, IOAPIC and local APICs (api.rst §4.24)."""
        self._ioctl(ioctls.KVM_CREATE_IRQCHIP)

    def create_pit2(self) -> None:
        config = x86.kvm_pit_config(flags=x86.KVM_PIT_SPEAKER_DUMMY)
        self._ioctl(ioctls.KVM_CREATE_PIT2, config)

    def irq_line(self, irq: int, level: bool) -> None:
        request = uapi.kvm_irq_level(irq=irq, level=int(level))
        self._ioctl(ioctls.KVM_IRQ_LINE, request)

    def signal_msi(self, address: int, data: int) -> int:
        """KVM_SIGNAL_MSI (api.rst §4.71, KVM_CAP_SIGNAL_MSI, in-kernel irqchip): inject one
        MSI message. Greater than 0 when delivered, 0 when the guest blocked it."""
        request = uapi.kvm_msi(address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=data)
        return self._ioctl(ioctls.KVM_SIGNAL_MSI, request)

    def set_gsi_routing(self, entries: list[uapi.kvm_irq_routing_entry]) -> None:
        """KVM_SET_GSI_ROUTING (api.rst §4.52, KVM_CAP_IRQ_ROUTING): replace the whole
        routing table, the irqchip routes KVM_CREATE_IRQCHIP installed included."""
        table = uapi.irq_routing_with(len(entries))()
        table.nr = len(entries)
        for index, entry in enumerate(entries):
            table.entries[index] = entry
        self._ioctl(ioctls.KVM_SET_GSI_ROUTING, table)

    def get_irqchip(self, chip_id: int) -> uapi.kvm_irqchip:
        return self._get(ioctls.KVM_GET_IRQCHIP, uapi.kvm_irqchip(chip_id=chip_id))

    def set_irqchip(self, chip: uapi.kvm_irqchip) -> None:
        self._ioctl(ioctls.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> x86.kvm_pit_state2:
        return self._get(ioctls.KVM_GET_PIT2, x86.kvm_pit_state2())

    def set_pit2(self, state: x86.kvm_pit_state2) -> None:
        self._ioctl(ioctls.KVM_SET_PIT2, state)

    def get_clock(self) -> uapi.kvm_clock_data:
        return self._get(ioctls.KVM_GET_CLOCK, uapi.kvm_clock_data())

    def set_clock(self, data: uapi.kvm_clock_data) -> None:
        self._ioctl(ioctls.KVM_SET_CLOCK, data)

    def stats_fd(self) -> int:
        """KVM_GET_STATS_FD (api.rst §4.133, KVM_CAP_BINARY_STATS_FD): a new fd of this
        VM's binary statistics, owned by the caller (`pyvmm.kvm.stats` reads it)."""
        return self._ioctl(ioctls.KVM_GET_STATS_FD)

    # --- eventfds ----------------------------------------------------------------------

    def irqfd(
        self, eventfd: int, gsi: int, *, resample_fd: int | None = None, deassign: bool = False
    ) -> None:
        """KVM_IRQFD (api.rst §4.75, KVM_CAP_IRQFD): a write to `eventfd` raises `gsi`.

        With `resample_fd` (KVM_CAP_IRQFD_RESAMPLE) the GSI stays asserted until the
        guest's EOI, which deasserts it and signals `resample_fd`: a level line.
        Deassigning needs the same `eventfd` and `gsi`, never the resample fd.
        """
        if deassign:
            flags, resample = uapi.KVM_IRQFD_FLAG_DEASSIGN, 0
        elif resample_fd is not None:
            flags, resample = uapi.KVM_IRQFD_FLAG_RESAMPLE, resample_fd
        else:
            flags, resample = 0, 0
        request = uapi.kvm_irqfd(fd=eventfd, gsi=gsi, flags=flags, resamplefd=resample)
        self._ioctl(ioctls.KVM_IRQFD, request)

    def ioeventfd(
        self,
        eventfd: int,
        address: int,
        length: int,
        *,
        pio: bool = False,
        datamatch: int | None = None,
        deassign: bool = False,
    ) -> None:
        """KVM_IOEVENTFD (api.rst §4.59, KVM_CAP_IOEVENTFD): a guest write of `length`
        bytes (0: any, with KVM_CAP_IOEVENTFD_ANY_LENGTH) at `address` (a port with
        `pio`) signals `eventfd` instead of exiting; with `datamatch` only that value
        does. Deassigning needs the same address, length, fd, space and datamatch."""
        flags = uapi.KVM_IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch is not None:
            flags |= uapi.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= uapi.KVM_IOEVENTFD_FLAG_DEASSIGN
        request = uapi.kvm_ioeventfd(
            datamatch=0 if datamatch is None else datamatch, addr=address, len=length, fd=eventfd, flags=flags
        )
        self._ioctl(ioctls.KVM_IOEVENTFD, request)

    # --- vCPUs -------------------------------------------------------------------------

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        from pyvmm.kvm.vcpu import Vcpu

        fd = self._ioctl(ioctls.KVM_CREATE_VCPU, vcpu_id)
        return Vcpu(self, fd, vcpu_id)
