"""The KVM ioctl request numbers, defined as in `include/uapi/linux/kvm.h`."""

from __future__ import annotations

from ctypes import c_uint64

from pyvmm.kvm import uapi, x86
from pyvmm.kvm.ioctl import _IO, _IOR, _IOW, _IOWR

# System ioctls (on the /dev/kvm fd)
KVM_GET_API_VERSION = _IO(0x00)
KVM_CREATE_VM = _IO(0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(0x02, x86.kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, x86.kvm_cpuid2)
KVM_GET_EMULATED_CPUID = _IOWR(0x09, x86.kvm_cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(0x0A, x86.kvm_msr_list)

# VM ioctls
KVM_CREATE_VCPU = _IO(0x41)
KVM_GET_DIRTY_LOG = _IOW(0x42, uapi.kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, uapi.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(0x48, c_uint64)
KVM_CREATE_IRQCHIP = _IO(0x60)
KVM_IRQ_LINE = _IOW(0x61, uapi.kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(0x62, uapi.kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(0x63, uapi.kvm_irqchip)
KVM_IRQ_LINE_STATUS = _IOWR(0x67, uapi.kvm_irq_level)
KVM_SET_GSI_ROUTING = _IOW(0x6A, uapi.kvm_irq_routing)
KVM_IRQFD = _IOW(0x76, uapi.kvm_irqfd)
KVM_CREATE_PIT2 = _IOW(0x77, x86.kvm_pit_config)
KVM_SET_BOOT_CPU_ID = _IO(0x78)
KVM_IOEVENTFD = _IOW(0x79, uapi.kvm_ioeventfd)
KVM_SET_CLOCK = _IOW(0x7B, uapi.kvm_clock_data)
KVM_GET_CLOCK = _IOR(0x7C, uapi.kvm_clock_data)
KVM_GET_PIT2 = _IOR(0x9F, x86.kvm_pit_state2)
KVM_SET_PIT2 = _IOW(0xA0, x86.kvm_pit_state2)
KVM_SIGNAL_MSI = _IOW(0xA5, uapi.kvm_msi)
KVM_ENABLE_CAP = _IOW(0xA3, uapi.kvm_enable_cap)

# vCPU ioctls
KVM_RUN = _IO(0x80)
KVM_GET_REGS = _IOR(0x81, x86.kvm_regs)
KVM_SET_REGS = _IOW(0x82, x86.kvm_regs)
KVM_GET_SREGS = _IOR(0x83, x86.kvm_sregs)
KVM_SET_SREGS = _IOW(0x84, x86.kvm_sregs)
KVM_TRANSLATE = _IOWR(0x85, uapi.kvm_translation)
KVM_INTERRUPT = _IOW(0x86, uapi.kvm_interrupt)
KVM_GET_MSRS = _IOWR(0x88, x86.kvm_msrs)
KVM_SET_MSRS = _IOW(0x89, x86.kvm_msrs)
KVM_SET_SIGNAL_MASK = _IOW(0x8B, uapi.kvm_signal_mask)
KVM_GET_FPU = _IOR(0x8C, x86.kvm_fpu)
KVM_SET_FPU = _IOW(0x8D, x86.kvm_fpu)
KVM_GET_LAPIC = _IOR(0x8E, x86.kvm_lapic_state)
KVM_SET_LAPIC = _IOW(0x8F, x86.kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(0x90, x86.kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(0x91, x86.kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(0x98, uapi.kvm_mp_state)
KVM_SET_MP_STATE = _IOW(0x99, uapi.kvm_mp_state)
KVM_NMI = _IO(0x9A)
KVM_SET_GUEST_DEBUG = _IOW(0x9B, uapi.kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(0x9F, x86.kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(0xA0, x86.kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(0xA1, x86.kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(0xA2, x86.kvm_debugregs)
KVM_GET_XSAVE = _IOR(0xA4, x86.kvm_xsave)
KVM_SET_XSAVE = _IOW(0xA5, x86.kvm_xsave)
KVM_GET_XCRS = _IOR(0xA6, x86.kvm_xcrs)
KVM_SET_XCRS = _IOW(0xA7, x86.kvm_xcrs)
KVM_SET_TSC_KHZ = _IO(0xA2)
KVM_GET_TSC_KHZ = _IO(0xA3)
KVM_KVMCLOCK_CTRL = _IO(0xAD)
KVM_GET_SREGS2 = _IOR(0xCC, x86.kvm_sregs2)
KVM_SET_SREGS2 = _IOW(0xCD, x86.kvm_sregs2)
KVM_GET_XSAVE2 = _IOR(0xCF, x86.kvm_xsave)

# VM and vCPU ioctls
KVM_GET_STATS_FD = _IO(0xCE)

# Each request's name, for error messages. The numbers are unique (tests/kvm checks
# it), so a caller passes the number alone and never writes its name a second time.
NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KVM_") and isinstance(value, int)
}
