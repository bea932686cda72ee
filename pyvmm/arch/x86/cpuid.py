"""The CPUID table each vCPU gets: what KVM supports, with per-vCPU APIC IDs, a
topology that matches the vCPU count, and the hypervisor bit on.

Intel SDM Vol. 2A, CPUID: leaf 01H (EBX[31:24] initial APIC ID, EBX[23:16] logical
processors, ECX[31] hypervisor), leaf 04H (EAX[31:26] cores per package - 1), leaf
0BH / 1FH (extended topology: x2APIC ID in EDX per sub-leaf). KVM's own leaf
40000001H (Linux Documentation/virt/kvm/x86/cpuid.rst) loses the features that work
through hypercalls where the host cannot return from one (`host_probe`).
"""

from __future__ import annotations

from pyvmm.kvm.x86 import KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2

LEAF_FEATURES = 0x1
LEAF_CACHE_PARAMETERS = 0x4
LEAF_EXTENDED_TOPOLOGY = 0xB
LEAF_V2_EXTENDED_TOPOLOGY = 0x1F
LEAF_AMD_SIZE_IDENTIFIERS = 0x8000_0008
LEAF_KVM_FEATURES = 0x4000_0001

# KVM_FEATURE_* bits (EAX of leaf 40000001H) whose use is a hypercall:
# PV_UNHALT (KVM_HC_KICK_CPU), PV_SEND_IPI, PV_SCHED_YIELD, HC_MAP_GPA_RANGE and
# MIGRATION_CONTROL (KVM_HC_MAP_GPA_RANGE).
HYPERCALL_FEATURES = (1 << 7) | (1 << 11) | (1 << 13) | (1 << 16) | (1 << 17)

FEATURE_ECX_HYPERVISOR = 1 << 31
FEATURE_EDX_HTT = 1 << 28

TOPOLOGY_LEVEL_INVALID = 0
TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2


def _bits_for(count: int) -> int:
    """How many APIC-ID bits a level with `count` members needs."""
    return max(count - 1, 0).bit_length()


def _copy(entry: kvm_cpuid_entry2) -> kvm_cpuid_entry2:
    return kvm_cpuid_entry2.from_buffer_copy(bytes(memoryview(entry)))


def _topology_entry(function: int, index: int, cpus: int, apic_id: int) -> kvm_cpuid_entry2:
    """Leaf 0BH/1FH: one thread per core, `cpus` cores in one package."""
    entry = kvm_cpuid_entry2(function=function, index=index, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
    entry.edx = apic_id
    if index == 0:
        entry.eax, entry.ebx, entry.ecx = 0, 1, (TOPOLOGY_LEVEL_SMT << 8) | index
    elif index == 1:
        entry.eax, entry.ebx, entry.ecx = _bits_for(cpus), cpus, (TOPOLOGY_LEVEL_CORE << 8) | index
    else:
        entry.ecx = (TOPOLOGY_LEVEL_INVALID << 8) | index
    return entry


def vcpu_cpuid(
    supported: list[kvm_cpuid_entry2], apic_id: int, cpus: int, *, hypercalls: bool = True
) -> list[kvm_cpuid_entry2]:
    """The CPUID entries for the vCPU with `apic_id` in a guest of `cpus` vCPUs;
    without `hypercalls`, KVM's paravirtual features that need them are left out."""
    table: list[kvm_cpuid_entry2] = []
    for original in supported:
        function = original.function
        if function in (LEAF_EXTENDED_TOPOLOGY, LEAF_V2_EXTENDED_TOPOLOGY):
            continue  # rebuilt below
        entry = _copy(original)
        if function == LEAF_FEATURES:
            entry.ebx = (entry.ebx & 0x0000_FFFF) | (apic_id << 24) | (min(cpus, 255) << 16)
            entry.ecx |= FEATURE_ECX_HYPERVISOR
            if cpus > 1:
                entry.edx |= FEATURE_EDX_HTT
        elif function == LEAF_CACHE_PARAMETERS and entry.eax & 0x1F:
            entry.eax = (entry.eax & 0x03FF_FFFF) | ((cpus - 1) << 26)
        elif function == LEAF_AMD_SIZE_IDENTIFIERS:
            entry.ecx = (entry.ecx & ~0xF0FF) | (_bits_for(cpus) << 12) | (cpus - 1)
        elif function == LEAF_KVM_FEATURES and not hypercalls:
            entry.eax &= ~HYPERCALL_FEATURES
        table.append(entry)
    max_basic = max((e.eax for e in supported if e.function == 0), default=0)
    for function in (LEAF_EXTENDED_TOPOLOGY, LEAF_V2_EXTENDED_TOPOLOGY):
        if function <= max_basic:
            table.extend(_topology_entry(function, index, cpus, apic_id) for index in range(3))
    return table


def find(table: list[kvm_cpuid_entry2], function: int, index: int = 0) -> kvm_cpuid_entry2 | None:
    """The entry for (function, index), as a guest executing CPUID would see it."""
    for entry in table:
        if entry.function == function and (
            entry.index == index or not entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        ):
            return entry
    return None

