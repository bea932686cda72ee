"""The CPUID table a vCPU gets, from KVM's supported list and as a guest reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_code import HLT_LOOP, multiboot_image, write

from pyvmm import Machine, MachineConfig
from pyvmm.arch.x86 import cpuid
from pyvmm.kvm import Kvm

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("cpus", [1, 2, 5])
def test_table_has_apic_id_topology_and_hypervisor_bit(cpus: int) -> None:
    with Kvm() as kvm:
        supported = kvm.supported_cpuid()
    for apic_id in range(cpus):
        table = cpuid.vcpu_cpuid(supported, apic_id=apic_id, cpus=cpus)
        features = cpuid.find(table, cpuid.LEAF_FEATURES)
        assert features is not None
        assert features.ebx >> 24 == apic_id
        assert (features.ebx >> 16) & 0xFF == cpus
        assert features.ecx & cpuid.FEATURE_ECX_HYPERVISOR
        core_level = cpuid.find(table, cpuid.LEAF_EXTENDED_TOPOLOGY, 1)
        if core_level is not None:
            assert core_level.ebx == cpus and core_level.edx == apic_id
            assert 1 << core_level.eax >= cpus


def test_guest_sees_hypervisor_bit_and_core_count(tmp_path: Path) -> None:
    code = bytes.fromhex(
        "b801000000" "0fa2"  # mov eax, 1; cpuid
        "89ce" "c1ee1f"  # mov esi, ecx; shr esi, 31      (hypervisor bit)
        "89df" "c1ef18"  # mov edi, ebx; shr edi, 24      (initial APIC ID)
        "b80b000000" "b901000000" "0fa2"  # mov eax, 0xb; mov ecx, 1; cpuid
        "89d8" "25ff000000"  # mov eax, ebx; and eax, 0xff  (logical processors at core level)
        "c1e008" "09f8" "d1e0" "09f0"  # eax = (((count << 8) | apic_id) << 1) | hypervisor
        "e7f4"  # out 0xf4, eax
    ) + HLT_LOOP  # fmt: skip
    kernel = write(tmp_path, "cpuid.img", multiboot_image(code))
    result = Machine(MachineConfig(kernel=kernel, cpus=3, timeout=60)).run()
    hypervisor, apic_id, count = result.exit.code & 1, (result.exit.code >> 1) & 0xFF, result.exit.code >> 9
    assert (hypervisor, apic_id, count) == (1, 0, 3)
