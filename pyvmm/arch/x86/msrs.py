"""Model-specific registers a vCPU starts with (Intel SDM Vol. 4 for the indices).

Only MSRs that KVM lists in KVM_GET_MSR_INDEX_LIST are written."""

from __future__ import annotations

import enum


class Msr(enum.IntEnum):
    IA32_TSC = 0x10
    IA32_APIC_BASE = 0x1B
    IA32_SYSENTER_CS = 0x174
    IA32_SYSENTER_ESP = 0x175
    IA32_SYSENTER_EIP = 0x176
    IA32_MISC_ENABLE = 0x1A0
    IA32_MTRR_DEF_TYPE = 0x2FF
    IA32_EFER = 0xC000_0080
    IA32_STAR = 0xC000_0081
    IA32_LSTAR = 0xC000_0082
    IA32_CSTAR = 0xC000_0083
    IA32_FMASK = 0xC000_0084
    IA32_KERNEL_GS_BASE = 0xC000_0102


MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRITE_BACK = 6


def boot_msrs(supported: set[int]) -> dict[int, int]:
    """The values a freshly reset CPU should hold, limited to what KVM can set."""
    wanted = {
        Msr.IA32_SYSENTER_CS: 0,
        Msr.IA32_SYSENTER_ESP: 0,
        Msr.IA32_SYSENTER_EIP: 0,
        Msr.IA32_STAR: 0,
        Msr.IA32_LSTAR: 0,
        Msr.IA32_CSTAR: 0,
        Msr.IA32_FMASK: 0,
        Msr.IA32_KERNEL_GS_BASE: 0,
        Msr.IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
        Msr.IA32_MTRR_DEF_TYPE: MTRR_ENABLE | MTRR_TYPE_WRITE_BACK,
    }
    return {int(index): value for index, value in wanted.items() if index in supported}
