"""x86 structures of `arch/x86/include/uapi/asm/kvm.h`, one ctypes class per struct,
named and laid out as in the header (checked against the C compiler in the tests)."""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_int64, c_uint8, c_uint16, c_uint32, c_uint64

KVM_NR_INTERRUPTS = 256
KVM_IOAPIC_NUM_PINS = 24
KVM_APIC_REG_SIZE = 0x400
KVM_MAX_XCRS = 16
KVM_XSAVE_LEGACY_SIZE = 4096


class kvm_regs(ctypes.Structure):  # noqa: N801 - kernel names
    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class kvm_segment(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(ctypes.Structure):  # noqa: N801
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


_SEGMENTS = [(name, kvm_segment) for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")]
_CONTROL = [(name, c_uint64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]


class kvm_sregs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        *_SEGMENTS,
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *_CONTROL,
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_sregs2(ctypes.Structure):  # noqa: N801
    _fields_ = [
        *_SEGMENTS,
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *_CONTROL,
        ("flags", c_uint64),
        ("pdptrs", c_uint64 * 4),
    ]


class kvm_fpu(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_msr_entry(ctypes.Structure):  # noqa: N801
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(ctypes.Structure):  # noqa: N801
    """Header only; `msrs_with(n)` builds the variant with its flexible array."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


class kvm_msr_list(ctypes.Structure):  # noqa: N801
    _fields_ = [("nmsrs", c_uint32)]


class kvm_cpuid_entry2(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


class kvm_cpuid2(ctypes.Structure):  # noqa: N801
    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


class kvm_lapic_state(ctypes.Structure):  # noqa: N801
    _fields_ = [("regs", c_char * KVM_APIC_REG_SIZE)]


class kvm_pic_state(ctypes.Structure):  # noqa: N801
    _fields_ = [
        (name, c_uint8)
        for name in (
            "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select",
            "poll", "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
            "special_fully_nested_mode", "init4", "elcr", "elcr_mask",
        )
    ]  # fmt: skip


class kvm_ioapic_state(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("base_address", c_uint64),
        ("ioregsel", c_uint32),
        ("id", c_uint32),
        ("irr", c_uint32),
        ("pad", c_uint32),
        ("redirtbl", c_uint64 * KVM_IOAPIC_NUM_PINS),  # union { bits; fields } in the header
    ]


class kvm_pit_channel_state(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("count", c_uint32),
        ("latched_count", c_uint16),
        ("count_latched", c_uint8),
        ("status_latched", c_uint8),
        ("status", c_uint8),
        ("read_state", c_uint8),
        ("write_state", c_uint8),
        ("write_latch", c_uint8),
        ("rw_mode", c_uint8),
        ("mode", c_uint8),
        ("bcd", c_uint8),
        ("gate", c_uint8),
        ("count_load_time", c_int64),
    ]


class kvm_pit_state2(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("channels", kvm_pit_channel_state * 3),
        ("flags", c_uint32),
        ("reserved", c_uint32 * 9),
    ]


class kvm_debug_exit_arch(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("exception", c_uint32),
        ("pad", c_uint32),
        ("pc", c_uint64),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
    ]


class kvm_guest_debug_arch(ctypes.Structure):  # noqa: N801
    _fields_ = [("debugreg", c_uint64 * 8)]


class _events_exception(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("injected", c_uint8),
        ("nr", c_uint8),
        ("has_error_code", c_uint8),
        ("pending", c_uint8),
        ("error_code", c_uint32),
    ]


class _events_interrupt(ctypes.Structure):  # noqa: N801
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class _events_nmi(ctypes.Structure):  # noqa: N801
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class _events_smi(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("smm", c_uint8),
        ("pending", c_uint8),
        ("smm_inside_nmi", c_uint8),
        ("latched_init", c_uint8),
    ]


class kvm_vcpu_events(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("exception", _events_exception),
        ("interrupt", _events_interrupt),
        ("nmi", _events_nmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", _events_smi),
        ("triple_fault_pending", c_uint8),  # struct { __u8 pending; } triple_fault
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


KVM_VCPUEVENT_VALID_NMI_PENDING = 0x01
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x02
KVM_VCPUEVENT_VALID_SHADOW = 0x04
KVM_VCPUEVENT_VALID_SMM = 0x08
KVM_VCPUEVENT_VALID_PAYLOAD = 0x10
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20


class kvm_debugregs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("db", c_uint64 * 4),
        ("dr6", c_uint64),
        ("dr7", c_uint64),
        ("flags", c_uint64),
        ("reserved", c_uint64 * 9),
    ]


class kvm_xsave(ctypes.Structure):  # noqa: N801
    """The legacy 4 KiB form; KVM_GET_XSAVE2 may need more (`xsave_with(size)`)."""

    _fields_ = [("region", c_uint32 * (KVM_XSAVE_LEGACY_SIZE // 4))]


class kvm_xcr(ctypes.Structure):  # noqa: N801
    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


class kvm_xcrs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("nr_xcrs", c_uint32),
        ("flags", c_uint32),
        ("xcrs", kvm_xcr * KVM_MAX_XCRS),
        ("padding", c_uint64 * 16),
    ]


class kvm_pit_config(ctypes.Structure):  # noqa: N801
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1


def msrs_with(count: int) -> type[ctypes.Structure]:
    """`struct kvm_msrs` with room for `count` entries."""

    class kvm_msrs_n(ctypes.Structure):  # noqa: N801
        _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * count)]

    return kvm_msrs_n


def msr_list_with(count: int) -> type[ctypes.Structure]:
    """`struct kvm_msr_list` with room for `count` indices."""

    class kvm_msr_list_n(ctypes.Structure):  # noqa: N801
        _fields_ = [("nmsrs", c_uint32), ("indices", c_uint32 * count)]

    return kvm_msr_list_n


def cpuid2_with(count: int) -> type[ctypes.Structure]:
    """`struct kvm_cpuid2` with room for `count` entries."""

    class kvm_cpuid2_n(ctypes.Structure):  # noqa: N801
        _fields_ = [
            ("nent", c_uint32),
            ("padding", c_uint32),
            ("entries", kvm_cpuid_entry2 * count),
        ]

    return kvm_cpuid2_n


def xsave_with(size: int) -> type[ctypes.Structure]:
    """`struct kvm_xsave` of `size` bytes (KVM_CAP_XSAVE2 reports the size needed)."""

    class kvm_xsave_n(ctypes.Structure):  # noqa: N801
        _fields_ = [("region", c_uint32 * (max(size, KVM_XSAVE_LEGACY_SIZE) // 4))]

    return kvm_xsave_n
