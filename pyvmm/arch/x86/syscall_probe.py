"""Does a SYSCALL executed at CPL 3 reach LSTAR at CPL 0 on this KVM?

On a sound host it always does (Intel SDM Vol. 2B, SYSCALL; AMD APM Vol. 3). Some
software-virtualization KVM modules (seen: `kvm_pvm` running an unmodified guest)
deliver the SYSCALL with RCX, R11, RFLAGS and RIP updated but the CPU still at CPL 3;
the fetch at LSTAR then raises a user-mode #PF (error code U|I) in the guest, and
every system call of a Linux guest's user space dies with SIGSEGV. `syscall_reaches_cpl0`
finds out once per process with a throwaway VM of a few pages, so that pyvmm repairs
such syscalls (`pyvmm.arch.x86.emulator.lost_syscall`) only where the host needs it.
"""

from __future__ import annotations

import functools
import struct

from pyvmm.arch.x86.msrs import Msr
from pyvmm.arch.x86.registers import Cr0, Cr4, Efer
from pyvmm.arch.x86.segments import (
    TYPE_CODE_EXEC_READ_ACCESSED,
    TYPE_DATA_READ_WRITE_ACCESSED,
    Segment,
)
from pyvmm.kvm import ExitReason, Kvm, KvmError, x86
from pyvmm.memory import GuestMemory

# Guest-physical = linear layout of the probe (4 KiB pages, identity-mapped).
_GDT, _IDT, _KERNEL_CODE, _TSS, _USER_CODE, _KERNEL_STACK_TOP = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x7000
_PML4, _PDPT, _PD, _PT = 0x8000, 0x9000, 0xA000, 0xB000
_LSTAR_TARGET = _KERNEL_CODE  # out 0xE2 at CPL 0: the syscall arrived
_FAULT_HANDLER = _KERNEL_CODE + 0x100  # out 0xE1: any exception, the syscall was lost
_ARRIVED_PORT, _FAULTED_PORT = 0xE2, 0xE1
_KERNEL_CS, _USER_BASE = 0x08, 0x10  # STAR[47:32], STAR[63:48]
_USER_SS, _USER_CS, _TSS_SELECTOR = 0x1B, 0x23, 0x28
_MEMORY_SIZE = 1 << 20


def _segment(selector: int, kind: int, dpl: int, *, long_mode: bool = False) -> Segment:
    return Segment(
        0, 0xFFFF_FFFF, kind, selector, dpl=dpl, long_mode=long_mode,
        default_32=not long_mode, granularity_4k=True,
    )  # fmt: skip


def _write_guest(memory: GuestMemory) -> None:
    kernel_code = _segment(_KERNEL_CS, TYPE_CODE_EXEC_READ_ACCESSED, 0, long_mode=True)
    kernel_data = _segment(_KERNEL_CS + 8, TYPE_DATA_READ_WRITE_ACCESSED, 0)
    user_data = _segment(_USER_SS, TYPE_DATA_READ_WRITE_ACCESSED, 3)
    user_code = _segment(_USER_CS, TYPE_CODE_EXEC_READ_ACCESSED, 3, long_mode=True)
    tss = Segment(_TSS, 0x67, 0x9, _TSS_SELECTOR, code_or_data=False)
    gdt = [0, kernel_code.descriptor(), kernel_data.descriptor(), user_data.descriptor(),
           user_code.descriptor(), tss.descriptor(), 0]  # fmt: skip
    memory.write(_GDT, struct.pack("<7Q", *gdt))
    gate = (
        (_FAULT_HANDLER & 0xFFFF) | (_KERNEL_CS << 16) | (0x8E << 40)
        | (((_FAULT_HANDLER >> 16) & 0xFFFF) << 48)
    )  # fmt: skip
    memory.write(_IDT, struct.pack("<QQ", gate, 0) * 32)
    out_and_halt = {_ARRIVED_PORT: _LSTAR_TARGET, _FAULTED_PORT: _FAULT_HANDLER}
    for port, address in out_and_halt.items():
        memory.write(address, bytes([0xE6, port, 0xF4]))  # out imm8, al; hlt
    memory.write(_TSS + 4, struct.pack("<Q", _KERNEL_STACK_TOP))  # RSP0
    memory.write(_USER_CODE, bytes([0x0F, 0x05, 0xF4]))  # syscall; hlt
    present_writable, user = 0x3, 0x4
    memory.write(_PML4, struct.pack("<Q", _PDPT | present_writable | user))
    memory.write(_PDPT, struct.pack("<Q", _PD | present_writable | user))
    memory.write(_PD, struct.pack("<Q", _PT | present_writable | user))
    table = [page << 12 | present_writable for page in range(16)]
    table[_USER_CODE >> 12] |= user
    table[(_USER_CODE >> 12) + 1] |= user  # the user stack page
    memory.write(_PT, struct.pack("<16Q", *table))


def _set_user_mode(vcpu_sregs: x86.kvm_sregs) -> None:
    sregs = vcpu_sregs
    sregs.cs = _segment(_USER_CS, TYPE_CODE_EXEC_READ_ACCESSED, 3, long_mode=True).to_kvm()
    user_data = _segment(_USER_SS, TYPE_DATA_READ_WRITE_ACCESSED, 3).to_kvm()
    sregs.ss = sregs.ds = sregs.es = sregs.fs = sregs.gs = user_data
    sregs.tr = Segment(_TSS, 0x67, 0xB, _TSS_SELECTOR, code_or_data=False).to_kvm()
    sregs.gdt.base, sregs.gdt.limit = _GDT, 7 * 8 - 1
    sregs.idt.base, sregs.idt.limit = _IDT, 32 * 16 - 1
    sregs.cr0 = Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.PG
    sregs.cr3 = _PML4
    sregs.cr4 = Cr4.PAE
    sregs.efer = Efer.SCE | Efer.LME | Efer.LMA


@functools.cache
def syscall_reaches_cpl0() -> bool:
    """True when SYSCALL at CPL 3 enters LSTAR at CPL 0 here (or the probe cannot
    tell); False when it arrives at LSTAR still at CPL 3."""
    try:
        kvm = Kvm()
    except (KvmError, OSError):
        return True
    try:
        return _probe(kvm)
    except (KvmError, OSError):
        return True
    finally:
        kvm.close()


def _probe(kvm: Kvm) -> bool:
    memory = GuestMemory([(0, _MEMORY_SIZE)])
    vm = kvm.create_vm()
    try:
        memory.register(vm)
        _write_guest(memory)
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_cpuid2(kvm.supported_cpuid())
            sregs = vcpu.get_sregs()
            _set_user_mode(sregs)
            vcpu.set_sregs(sregs)
            regs = x86.kvm_regs(rip=_USER_CODE, rsp=_USER_CODE + 0x2000, rflags=0x202)
            vcpu.set_regs(regs)
            star = (_USER_BASE << 48) | (_KERNEL_CS << 32)
            vcpu.set_msrs({Msr.IA32_STAR: star, Msr.IA32_LSTAR: _LSTAR_TARGET, Msr.IA32_FMASK: 0x200})
            reason = vcpu.run()
            if reason != ExitReason.IO:
                return True
            return bool(vcpu.run_state.io.port != _FAULTED_PORT)
        finally:
            vcpu.close()
    finally:
        vm.close()
        memory.close()
