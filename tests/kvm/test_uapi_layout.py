"""The ctypes structures and ioctl numbers match the kernel headers, as the C
compiler sees them (sizeof, offsetof, and the _IO* macros)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from pyvmm.kvm import ioctls, uapi, x86

STRUCTS = {
    "kvm_regs": x86.kvm_regs,
    "kvm_segment": x86.kvm_segment,
    "kvm_dtable": x86.kvm_dtable,
    "kvm_sregs": x86.kvm_sregs,
    "kvm_sregs2": x86.kvm_sregs2,
    "kvm_fpu": x86.kvm_fpu,
    "kvm_msr_entry": x86.kvm_msr_entry,
    "kvm_msrs": x86.kvm_msrs,
    "kvm_msr_list": x86.kvm_msr_list,
    "kvm_cpuid_entry2": x86.kvm_cpuid_entry2,
    "kvm_cpuid2": x86.kvm_cpuid2,
    "kvm_lapic_state": x86.kvm_lapic_state,
    "kvm_pic_state": x86.kvm_pic_state,
    "kvm_ioapic_state": x86.kvm_ioapic_state,
    "kvm_pit_channel_state": x86.kvm_pit_channel_state,
    "kvm_pit_state2": x86.kvm_pit_state2,
    "kvm_pit_config": x86.kvm_pit_config,
    "kvm_debug_exit_arch": x86.kvm_debug_exit_arch,
    "kvm_guest_debug_arch": x86.kvm_guest_debug_arch,
    "kvm_vcpu_events": x86.kvm_vcpu_events,
    "kvm_debugregs": x86.kvm_debugregs,
    "kvm_xsave": x86.kvm_xsave,
    "kvm_xcr": x86.kvm_xcr,
    "kvm_xcrs": x86.kvm_xcrs,
    "kvm_userspace_memory_region": uapi.kvm_userspace_memory_region,
    "kvm_dirty_log": uapi.kvm_dirty_log,
    "kvm_irq_level": uapi.kvm_irq_level,
    "kvm_msi": uapi.kvm_msi,
    "kvm_irq_routing_irqchip": uapi.kvm_irq_routing_irqchip,
    "kvm_irq_routing_msi": uapi.kvm_irq_routing_msi,
    "kvm_irq_routing_entry": uapi.kvm_irq_routing_entry,
    "kvm_irq_routing": uapi.kvm_irq_routing,
    "kvm_ioeventfd": uapi.kvm_ioeventfd,
    "kvm_irqfd": uapi.kvm_irqfd,
    "kvm_mp_state": uapi.kvm_mp_state,
    "kvm_guest_debug": uapi.kvm_guest_debug,
    "kvm_enable_cap": uapi.kvm_enable_cap,
    "kvm_irqchip": uapi.kvm_irqchip,
    "kvm_clock_data": uapi.kvm_clock_data,
    "kvm_signal_mask": uapi.kvm_signal_mask,
    "kvm_translation": uapi.kvm_translation,
    "kvm_run": uapi.kvm_run,
}

# Fields whose offsets matter to code that reads raw bytes (C expression -> ctypes).
OFFSETS = {
    "kvm_run.immediate_exit": uapi.kvm_run.immediate_exit.offset,
    "kvm_run.exit_reason": uapi.kvm_run.exit_reason.offset,
    "kvm_run.io": uapi.kvm_run.u.offset,
    "kvm_run.io.data_offset": uapi.kvm_run.u.offset + uapi._run_io.data_offset.offset,
    "kvm_run.mmio.data": uapi.kvm_run.u.offset + uapi._run_mmio.data.offset,
    "kvm_run.mmio.len": uapi.kvm_run.u.offset + uapi._run_mmio.len.offset,
    "kvm_run.mmio.is_write": uapi.kvm_run.u.offset + uapi._run_mmio.is_write.offset,
    "kvm_run.emulation_failure.insn_bytes": uapi.kvm_run.u.offset
    + uapi._run_emulation_failure.insn_bytes.offset,
    "kvm_run.system_event.data": uapi.kvm_run.u.offset + uapi._run_system_event.data.offset,
    "kvm_run.kvm_valid_regs": uapi.kvm_run.kvm_valid_regs.offset,
    "kvm_vcpu_events.exception_payload": x86.kvm_vcpu_events.exception_payload.offset,
    "kvm_vcpu_events.triple_fault": x86.kvm_vcpu_events.triple_fault_pending.offset,
    "kvm_sregs.apic_base": x86.kvm_sregs.apic_base.offset,
    "kvm_fpu.mxcsr": x86.kvm_fpu.mxcsr.offset,
    "kvm_irq_routing_entry.u": uapi.kvm_irq_routing_entry.u.offset,
    "kvm_irq_routing_entry.u.msi.data": uapi.kvm_irq_routing_entry.u.offset
    + uapi.kvm_irq_routing_msi.data.offset,
    "kvm_irq_routing_entry.u.irqchip.pin": uapi.kvm_irq_routing_entry.u.offset
    + uapi.kvm_irq_routing_irqchip.pin.offset,
    "kvm_irq_routing.entries": ctypes.sizeof(uapi.kvm_irq_routing),
    "kvm_msi.devid": uapi.kvm_msi.devid.offset,
    "kvm_irqfd.resamplefd": uapi.kvm_irqfd.resamplefd.offset,
    "kvm_ioeventfd.fd": uapi.kvm_ioeventfd.fd.offset,
    "kvm_ioeventfd.flags": uapi.kvm_ioeventfd.flags.offset,
}

# Flag and type constants used with the eventfd and routing ioctls, and every Cap.
CONSTANTS = {
    name: getattr(uapi, name)
    for name in dir(uapi)
    if name.startswith(("KVM_IRQFD_FLAG_", "KVM_IOEVENTFD_FLAG_", "KVM_IRQ_ROUTING_", "KVM_MSI_"))
} | {f"KVM_CAP_{cap.name}": int(cap) for cap in uapi.Cap}

IOCTLS = [name for name in dir(ioctls) if name.startswith("KVM_")]


@pytest.fixture(scope="module")
def c_view(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """What the C compiler says: sizeof each struct, offsets, ioctl numbers."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: scripts/setup.sh installs gcc")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for name in STRUCTS:
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
    for expression in OFFSETS:
        struct_name, member = expression.split(".", 1)
        lines.append(f'printf("offset {expression} %zu\\n", offsetof(struct {struct_name}, {member}));')
    for name in IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long)({name}));')
    for name in CONSTANTS:
        lines.append(f'printf("constant {name} %lu\\n", (unsigned long)({name}));')
    lines.append("return 0; }")
    work = tmp_path_factory.mktemp("uapi")
    source, binary = work / "layout.c", work / "layout"
    source.write_text("\n".join(lines))
    subprocess.run([compiler, "-o", str(binary), str(source)], check=True)
    result: dict[str, int] = {}
    for line in subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.splitlines():
        kind, key, value = line.split()
        result[f"{kind} {key}"] = int(value)
    return result


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_size_matches_header(c_view: dict[str, int], name: str) -> None:
    assert ctypes.sizeof(STRUCTS[name]) == c_view[f"sizeof {name}"]


@pytest.mark.parametrize("expression", sorted(OFFSETS))
def test_field_offset_matches_header(c_view: dict[str, int], expression: str) -> None:
    assert OFFSETS[expression] == c_view[f"offset {expression}"]


@pytest.mark.parametrize("name", IOCTLS)
def test_ioctl_number_matches_header(c_view: dict[str, int], name: str) -> None:
    assert getattr(ioctls, name) == c_view[f"ioctl {name}"], name


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_constant_matches_header(c_view: dict[str, int], name: str) -> None:
    assert CONSTANTS[name] == c_view[f"constant {name}"], name
