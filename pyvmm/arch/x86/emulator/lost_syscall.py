"""Repair a SYSCALL that a faulty host delivered without leaving CPL 3.

Where `pyvmm.arch.x86.host_probe` finds that SYSCALL at CPL 3 reaches LSTAR still
at CPL 3, the guest's fetch at LSTAR raises a user-mode instruction-fetch #PF, which
the host delivers through the guest's IDT. On that host the first instruction of a
Linux exception entry (`clac`, with SMAP) exits to pyvmm as an emulation failure, so
pyvmm sees the vCPU at the #PF handler with the fault's frame on the stack. If that
frame is the lost syscall (RIP = LSTAR, CS RPL 3, error code U|I), the vCPU is put
where SYSCALL should have left it (Intel SDM Vol. 2B, SYSCALL): CS and SS from
IA32_STAR[47:32], RIP = LSTAR, the user RSP, and RFLAGS as masked by IA32_FMASK
(RCX and R11 were already set). The #PF never reaches the guest kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pyvmm.arch.x86.emulator.cpu_state import CpuMode, CpuState
from pyvmm.arch.x86.emulator.errors import EmulatorError, NotCovered
from pyvmm.arch.x86.emulator.faults import InjectFault, Vector
from pyvmm.arch.x86.emulator.mmu import Mmu
from pyvmm.arch.x86.msrs import Msr
from pyvmm.arch.x86.registers import Rflags
from pyvmm.arch.x86.segments import flat_code, flat_data

PF_USER = 1 << 2
PF_FETCH = 1 << 4
_GATE = struct.Struct("<HHHHIxxxx")  # offset 15:0, selector, flags, offset 31:16, offset 63:32
_FRAME = struct.Struct("<6Q")  # error code, RIP, CS, RFLAGS, RSP, SS (SDM Vol. 3A §6.14.2)
_ENDBR64 = bytes.fromhex("f30f1efa")  # an IBT kernel's entries start with it
_SYSCALL_MSRS: list[int] = [Msr.IA32_STAR, Msr.IA32_LSTAR, Msr.IA32_FMASK]


def _handler_address(gate: bytes) -> int:
    low, _selector, _flags, middle, high = _GATE.unpack(gate)
    return int(low | (middle << 16) | (high << 32))


def repair(state: CpuState, mmu: Mmu, read_msrs: Callable[[list[int]], dict[int, int]]) -> bool:
    """Rewrite `state` into the syscall entry if the vCPU sits at the guest's #PF
    handler on a lost syscall's fault; False (state untouched) otherwise.
    `read_msrs` is KVM_GET_MSRS of the vCPU."""
    if state.mode is not CpuMode.LONG64 or state.cpl != 0:
        return False
    idt = state.sregs.idt
    gate_offset = Vector.PF * 16
    if idt.limit < gate_offset + 15:
        return False
    try:
        handler = _handler_address(mmu.read(idt.base + gate_offset, 16, user=False))
        if state.rip != handler and not (
            state.rip == handler + len(_ENDBR64) and mmu.read(handler, len(_ENDBR64), user=False) == _ENDBR64
        ):
            return False
        error, rip, cs, rflags, rsp, _ss = _FRAME.unpack(mmu.read(state.gpr(4), _FRAME.size, user=False))
    except (InjectFault, NotCovered, EmulatorError):
        # What cannot be read (not mapped, protection keys, a page table outside RAM,
        # MMIO without a handler) is no lost syscall's frame: the instruction's own
        # emulation, which follows, meets and reports it as it does on any host.
        return False
    msrs = read_msrs(_SYSCALL_MSRS)
    lstar = msrs.get(Msr.IA32_LSTAR)
    if cs & 3 != 3 or error & (PF_USER | PF_FETCH) != PF_USER | PF_FETCH or lstar is None or rip != lstar:
        return False
    kernel_cs = (msrs.get(Msr.IA32_STAR, 0) >> 32) & 0xFFFC
    state.sregs.cs = flat_code(True, kernel_cs).to_kvm()
    state.sregs.ss = flat_data(kernel_cs + 8).to_kvm()
    state.rip = lstar
    state.set_gpr(4, rsp)
    state.rflags = (rflags & ~msrs.get(Msr.IA32_FMASK, 0) & ~Rflags.RF) | Rflags.FIXED
    state.write_back()
    return True
