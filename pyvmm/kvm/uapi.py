"""Generic structures and constants of `include/uapi/linux/kvm.h`, named as in the
header. x86 structures live in `pyvmm.kvm.x86`; ioctl numbers in `pyvmm.kvm.ioctls`."""

from __future__ import annotations

import ctypes
import enum
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

from pyvmm.kvm.x86 import (
    kvm_debug_exit_arch,
    kvm_guest_debug_arch,
    kvm_ioapic_state,
    kvm_pic_state,
)

KVM_API_VERSION = 12


class ExitReason(enum.IntEnum):
    """`KVM_EXIT_*`: why KVM_RUN returned."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    WATCHDOG = 21
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    XEN = 34
    NOTIFY = 37


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


class InternalErrorSuberror(enum.IntEnum):
    """`KVM_INTERNAL_ERROR_*`."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0


class SystemEvent(enum.IntEnum):
    """`KVM_SYSTEM_EVENT_*`."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6


class Cap(enum.IntEnum):
    """`KVM_CAP_*` numbers that pyvmm checks before using a feature."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    MP_STATE = 14
    SYNC_MMU = 16
    USER_NMI = 22
    SET_GUEST_DEBUG = 23
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    IRQFD = 32
    PIT2 = 33
    SET_BOOT_CPU_ID = 34
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    ADJUST_CLOCK = 39
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    DEBUGREGS = 50
    XSAVE = 55
    XCRS = 56
    TSC_CONTROL = 60
    GET_TSC_KHZ = 61
    TSC_DEADLINE_TIMER = 72
    MAX_VCPUS = 66
    KVMCLOCK_CTRL = 76
    SIGNAL_MSI = 77
    READONLY_MEM = 81
    IRQFD_RESAMPLE = 82
    IOEVENTFD_NO_LENGTH = 100
    IOEVENTFD_ANY_LENGTH = 122
    MAX_VCPU_ID = 128
    X2APIC_API = 129
    MSI_DEVID = 131
    IMMEDIATE_EXIT = 136
    MANUAL_DIRTY_LOG_PROTECT2 = 168
    X86_USER_SPACE_MSR = 188
    BINARY_STATS_FD = 203
    EXIT_ON_EMULATION_FAILURE = 204
    XSAVE2 = 208
    X86_TRIPLE_FAULT_EVENT = 218


class MpState(enum.IntEnum):
    """`KVM_MP_STATE_*`."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2

KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000

KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2

KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2

KVM_MSI_VALID_DEVID = 1 << 0


class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801 - kernel names
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_dirty_log(ctypes.Structure):  # noqa: N801
    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("dirty_bitmap", c_uint64)]


class kvm_irq_level(ctypes.Structure):  # noqa: N801
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]  # union { irq; status }


class kvm_msi(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("address_lo", c_uint32),
        ("address_hi", c_uint32),
        ("data", c_uint32),
        ("flags", c_uint32),
        ("devid", c_uint32),
        ("pad", c_uint8 * 12),
    ]


class kvm_irq_routing_irqchip(ctypes.Structure):  # noqa: N801
    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class kvm_irq_routing_msi(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("address_lo", c_uint32),
        ("address_hi", c_uint32),
        ("data", c_uint32),
        ("devid", c_uint32),
    ]


class _routing_union(ctypes.Union):  # noqa: N801
    _fields_ = [
        ("irqchip", kvm_irq_routing_irqchip),
        ("msi", kvm_irq_routing_msi),
        ("pad", c_uint32 * 8),
    ]


class kvm_irq_routing_entry(ctypes.Structure):  # noqa: N801
    _anonymous_ = ("u",)
    _fields_ = [
        ("gsi", c_uint32),
        ("type", c_uint32),
        ("flags", c_uint32),
        ("pad", c_uint32),
        ("u", _routing_union),
    ]


class kvm_irq_routing(ctypes.Structure):  # noqa: N801
    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


def irq_routing_with(count: int) -> type[ctypes.Structure]:
    """`struct kvm_irq_routing` with room for `count` entries."""

    class kvm_irq_routing_n(ctypes.Structure):  # noqa: N801
        _fields_ = [
            ("nr", c_uint32),
            ("flags", c_uint32),
            ("entries", kvm_irq_routing_entry * count),
        ]

    return kvm_irq_routing_n


class kvm_ioeventfd(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("datamatch", c_uint64),
        ("addr", c_uint64),
        ("len", c_uint32),
        ("fd", c_int32),
        ("flags", c_uint32),
        ("pad", c_uint8 * 36),
    ]


class kvm_irqfd(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("fd", c_uint32),
        ("gsi", c_uint32),
        ("flags", c_uint32),
        ("resamplefd", c_uint32),
        ("pad", c_uint8 * 16),
    ]


class kvm_mp_state(ctypes.Structure):  # noqa: N801
    _fields_ = [("mp_state", c_uint32)]


class kvm_guest_debug(ctypes.Structure):  # noqa: N801
    _fields_ = [("control", c_uint32), ("pad", c_uint32), ("arch", kvm_guest_debug_arch)]


class kvm_enable_cap(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("cap", c_uint32),
        ("flags", c_uint32),
        ("args", c_uint64 * 4),
        ("pad", c_uint8 * 64),
    ]


class _irqchip_union(ctypes.Union):  # noqa: N801
    _fields_ = [("dummy", ctypes.c_char * 512), ("pic", kvm_pic_state), ("ioapic", kvm_ioapic_state)]


class kvm_irqchip(ctypes.Structure):  # noqa: N801
    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", _irqchip_union)]


class kvm_clock_data(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("clock", c_uint64),
        ("flags", c_uint32),
        ("pad0", c_uint32),
        ("realtime", c_uint64),
        ("host_tsc", c_uint64),
        ("pad", c_uint32 * 4),
    ]


class ClockFlag(enum.IntFlag):
    """`KVM_CLOCK_*`: which fields of `kvm_clock_data` hold a value (api.rst §4.29);
    KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK) answers the set this KVM knows."""

    TSC_STABLE = 1 << 1
    REALTIME = 1 << 2
    HOST_TSC = 1 << 3


class kvm_stats_header(ctypes.Structure):  # noqa: N801
    """The start of a binary statistics fd (api.rst §4.133, KVM_GET_STATS_FD)."""

    _fields_ = [
        ("flags", c_uint32),
        ("name_size", c_uint32),
        ("num_desc", c_uint32),
        ("id_offset", c_uint32),
        ("desc_offset", c_uint32),
        ("data_offset", c_uint32),
    ]


class kvm_stats_desc(ctypes.Structure):  # noqa: N801
    """One statistic's descriptor; `name_size` bytes of name follow it in the file."""

    _fields_ = [
        ("flags", c_uint32),
        ("exponent", ctypes.c_int16),
        ("size", c_uint16),
        ("offset", c_uint32),
        ("bucket_size", c_uint32),
    ]


KVM_STATS_TYPE_SHIFT = 0
KVM_STATS_UNIT_SHIFT = 4
KVM_STATS_BASE_SHIFT = 8
KVM_STATS_FIELD_MASK = 0xF  # each of type, unit and base is 4 bits of `flags`


class StatsType(enum.IntEnum):
    """`KVM_STATS_TYPE_*` (bits 0-3 of a descriptor's flags)."""

    CUMULATIVE = 0
    INSTANT = 1
    PEAK = 2
    LINEAR_HIST = 3
    LOG_HIST = 4


class StatsUnit(enum.IntEnum):
    """`KVM_STATS_UNIT_*` (bits 4-7)."""

    NONE = 0
    BYTES = 1
    SECONDS = 2
    CYCLES = 3
    BOOLEAN = 4


class StatsBase(enum.IntEnum):
    """`KVM_STATS_BASE_*` (bits 8-11): the base `exponent` applies to."""

    POW10 = 0
    POW2 = 1


class kvm_signal_mask(ctypes.Structure):  # noqa: N801
    """Header only: `len`, followed in memory by `len` bytes of sigset."""

    _fields_ = [("len", c_uint32)]


class kvm_signal_mask_sigset(ctypes.Structure):  # noqa: N801
    """`kvm_signal_mask` with the kernel's 8-byte x86-64 sigset right after `len`."""

    _pack_ = 1
    _fields_ = [("len", c_uint32), ("sigset", c_uint64)]


class kvm_interrupt(ctypes.Structure):  # noqa: N801
    _fields_ = [("irq", c_uint32)]


class kvm_translation(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("linear_address", c_uint64),
        ("physical_address", c_uint64),
        ("valid", c_uint8),
        ("writeable", c_uint8),
        ("usermode", c_uint8),
        ("pad", c_uint8 * 5),
    ]


# --- struct kvm_run: the fixed header and the exit unions pyvmm reads ----------------


class _run_io(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    ]


class _run_mmio(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class _run_fail_entry(ctypes.Structure):  # noqa: N801
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class _run_internal(ctypes.Structure):  # noqa: N801
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _run_emulation_failure(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("flags", c_uint64),
        ("insn_size", c_uint8),
        ("insn_bytes", c_uint8 * 15),
    ]


class _run_system_event(ctypes.Structure):  # noqa: N801
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _run_ex(ctypes.Structure):  # noqa: N801
    _fields_ = [("exception", c_uint32), ("error_code", c_uint32)]


class _run_debug(ctypes.Structure):  # noqa: N801
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _run_hw(ctypes.Structure):  # noqa: N801
    _fields_ = [("hardware_exit_reason", c_uint64)]


class _run_msr(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("error", c_uint8),
        ("pad", c_uint8 * 7),
        ("reason", c_uint32),
        ("index", c_uint32),
        ("data", c_uint64),
    ]


class _run_exit_union(ctypes.Union):  # noqa: N801
    _fields_ = [
        ("hw", _run_hw),
        ("fail_entry", _run_fail_entry),
        ("ex", _run_ex),
        ("io", _run_io),
        ("debug", _run_debug),
        ("mmio", _run_mmio),
        ("internal", _run_internal),
        ("emulation_failure", _run_emulation_failure),
        ("system_event", _run_system_event),
        ("msr", _run_msr),
        ("padding", ctypes.c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(ctypes.Structure):  # noqa: N801
    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("u", _run_exit_union),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", ctypes.c_char * SYNC_REGS_SIZE_BYTES),
    ]
