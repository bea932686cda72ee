"""SYSCALL from CPL 3 must arrive at LSTAR at CPL 0, on any host: natively where KVM
does it right, through `lost_syscall.repair` where the probe says the host loses it.
The guest (cpl3_harness) gets a #PF handler that starts with `clac`, as Linux's does;
every exit KVM cannot emulate goes to the `Emulator` as in `VcpuRunner`."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from cpl3_harness import (
    CODE,
    DATA,
    EXCEPTION_PORT,
    HANDLERS,
    KERNEL_CS,
    KERNEL_STACK_TOP,
    SUPERVISOR,
    Case,
    Cpl3Machine,
)  # fmt: skip

from pyvmm.arch.x86.emulator import Emulator
from pyvmm.arch.x86.host_probe import syscall_reaches_cpl0
from pyvmm.arch.x86.msrs import Msr
from pyvmm.arch.x86.registers import Efer
from pyvmm.kvm import ExitReason

pytestmark = pytest.mark.kvm

ENTRY = HANDLERS + 0x900  # LSTAR: mov al, 0xAA; out 0xE2, al; hlt
ARRIVED_PORT = 0xE2
USER_RSP = DATA + 0x8000
FMASK = 0x47700  # TF DF IF IOPL AC, as Linux masks


@pytest.fixture(scope="module")
def machine() -> Iterator[Cpl3Machine]:
    machine = Cpl3Machine()
    yield machine
    machine.close()


def run(machine: Cpl3Machine, case: Case) -> tuple[int, dict[str, int], list[int]]:
    """Run `case` at CPL 3 with SYSCALL set up; returns the port the guest reported on,
    its registers and CPL there, and the top of its stack."""
    machine.prepare(case)
    vcpu = machine.vcpu
    sregs = vcpu.get_sregs()
    sregs.efer |= Efer.SCE
    vcpu.set_sregs(sregs)
    machine.memory.write(ENTRY, bytes([0xB0, 0xAA, 0xE6, ARRIVED_PORT, 0xF4]))
    clac_then_report = bytes([0x0F, 0x01, 0xCA, 0x6A, 14, 0xE6, EXCEPTION_PORT, 0xF4])
    machine.memory.write(HANDLERS + 14 * 16, clac_then_report)
    star = (0x10 << 48) | (KERNEL_CS << 32)
    vcpu.set_msrs({Msr.IA32_STAR: star, Msr.IA32_LSTAR: ENTRY, Msr.IA32_FMASK: FMASK})
    read_msrs = None if syscall_reaches_cpl0() else vcpu.get_msrs
    emulator = Emulator(vcpu, machine.memory, read_msrs=read_msrs)
    for _ in range(8):
        reason = vcpu.run()
        if reason == ExitReason.INTERNAL_ERROR:
            emulator.emulate()
            continue
        assert reason == ExitReason.IO, ExitReason(reason).name
        regs = vcpu.get_regs()
        sregs = vcpu.get_sregs()
        state = {name: int(getattr(regs, name)) for name in ("rip", "rsp", "rcx", "r11", "rflags")}
        state["cpl"] = int(sregs.cs.dpl)
        state["cs"] = int(sregs.cs.selector)
        on_kernel_stack = regs.rsp < KERNEL_STACK_TOP
        stack = list(struct.unpack("<4Q", machine.memory.read(regs.rsp, 32))) if on_kernel_stack else []
        return vcpu.run_state.io.port, state, stack
    raise AssertionError("the guest never reported")


def test_syscall_arrives_at_lstar_in_kernel_mode(machine: Cpl3Machine) -> None:
    user_flags = 0x202 | 0x1 | 0x80  # IF, CF, SF
    port, state, _ = run(machine, Case(code=b"\x0f\x05", rflags=user_flags))
    assert port == ARRIVED_PORT
    assert state["cpl"] == 0 and state["cs"] == KERNEL_CS
    assert state["rip"] == ENTRY + 4  # just after the out
    assert state["rcx"] == CODE + 2  # the return address
    assert state["r11"] == user_flags
    assert state["rflags"] & 0x200 == 0 and state["rflags"] & 0x81 == 0x81  # IF masked, CF SF kept
    assert state["rsp"] == USER_RSP  # SYSCALL does not switch stacks


def test_a_real_user_page_fault_still_reaches_the_guest(machine: Cpl3Machine) -> None:
    """A user read of a supervisor page faults with U set but not I: no repair."""
    read_supervisor = b"\x8b\x04\x25" + struct.pack("<I", SUPERVISOR)  # mov eax, [SUPERVISOR]
    port, state, stack = run(machine, Case(code=read_supervisor, rflags=0x202))
    assert port == EXCEPTION_PORT
    assert state["cpl"] == 0
    vector, error_code, rip, cs = stack
    assert (vector, error_code, rip, cs) == (14, 0x5, CODE, 0x23)  # P|U, read, from CPL 3
