"""Put a vCPU in the state a loader's `EntryPoint` asks for, and give every vCPU its
CPUID, boot MSRs and FPU defaults.

Control register bits: Intel SDM Vol. 3A §2.5; IA32_EFER: §2.2.1.
"""

from __future__ import annotations

from pyvmm.arch.x86 import cpuid, segments
from pyvmm.arch.x86.layout import GDT_ADDRESS, IDT_ADDRESS
from pyvmm.arch.x86.msrs import boot_msrs
from pyvmm.arch.x86.paging import write_identity_map
from pyvmm.arch.x86.registers import Cr0, Cr4, Efer
from pyvmm.boot.entry import CpuMode, EntryPoint
from pyvmm.kvm import Vcpu
from pyvmm.kvm.x86 import kvm_cpuid_entry2, kvm_fpu
from pyvmm.memory import GuestMemory

RFLAGS_RESERVED = 1 << 1
FPU_CONTROL_DEFAULT = 0x37F  # FNINIT state
MXCSR_DEFAULT = 0x1F80


def configure_vcpu(
    vcpu: Vcpu,
    supported_cpuid: list[kvm_cpuid_entry2],
    supported_msrs: set[int],
    cpus: int,
    *,
    hypercalls: bool = True,
) -> None:
    """State every vCPU needs before it runs, bootstrap or not; `hypercalls` as in
    `cpuid.vcpu_cpuid`."""
    vcpu.set_cpuid2(cpuid.vcpu_cpuid(supported_cpuid, apic_id=vcpu.id, cpus=cpus, hypercalls=hypercalls))
    msrs = boot_msrs(supported_msrs)
    if msrs:
        vcpu.set_msrs(msrs)
    vcpu.set_fpu(kvm_fpu(fcw=FPU_CONTROL_DEFAULT, mxcsr=MXCSR_DEFAULT))


def enter(vcpu: Vcpu, memory: GuestMemory, entry: EntryPoint) -> None:
    """Set the bootstrap vCPU's registers for `entry` (docs/boot.md)."""
    sregs = vcpu.get_sregs()
    if entry.mode is CpuMode.REAL16:
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, segments.real_mode(0).to_kvm())
            getattr(sregs, name).type = (
                segments.TYPE_CODE_EXEC_READ_ACCESSED
                if name == "cs"
                else segments.TYPE_DATA_READ_WRITE_ACCESSED
            )
    else:
        long_mode = entry.mode is CpuMode.LONG64
        code, data, tss = segments.flat_code(long_mode), segments.flat_data(), segments.boot_tss()
        gdt = segments.gdt_bytes(code, data, tss)
        memory.write(GDT_ADDRESS, gdt)
        memory.fill(IDT_ADDRESS, 8)
        sregs.gdt.base, sregs.gdt.limit = GDT_ADDRESS, len(gdt) - 1
        sregs.idt.base, sregs.idt.limit = IDT_ADDRESS, 0
        sregs.cs = code.to_kvm()
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(sregs, name, data.to_kvm())
        sregs.tr = tss.to_kvm()
        sregs.cr0 = Cr0.PE | Cr0.ET | Cr0.NE
        if long_mode:
            sregs.cr3 = write_identity_map(memory)
            sregs.cr4 = Cr4.PAE
            sregs.cr0 |= Cr0.PG
            sregs.efer = Efer.LME | Efer.LMA
    vcpu.set_sregs(sregs)

    regs = vcpu.get_regs()
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"):
        setattr(regs, name, 0)
    regs.rip = entry.rip
    regs.rflags = RFLAGS_RESERVED
    for name, value in entry.registers.items():
        setattr(regs, name, value)
    vcpu.set_regs(regs)
