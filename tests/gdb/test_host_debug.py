"""What this host's KVM does with the debug registers pyvmm's DR7 encoding puts in
KVM_SET_GUEST_DEBUG, on a real vCPU running a 64-bit loop.

Seen on the kvm_pvm host this was written on (KVM_CAP_SET_GUEST_DEBUG2 = 0x1f0003):
an execution breakpoint gives KVM_EXIT_DEBUG with exception 1, pc = the breakpoint's
RIP, DR6 = 0xffff0ff1 (B0); single-step gives exception 1, DR6 = 0xffff4ff0 (BS) after
each instruction; a write or read/write watchpoint never gives an exit (the loop
runs on) and int3 with USE_SW_BP is not intercepted (KVM_EXIT_INTERNAL_ERROR,
emulation failure, in long mode). `probe_host()` finds the last two out, and these
tests check that it tells the truth, whichever host runs them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from vcpu_target import DATA, GUEST_ENTRY, INC_RBX_RIP, STORE_RIP, VcpuTarget

from pyvmm.gdb.debugregs import DR6_BS, Access, GuestDebug, HardwareBreakpoint, debugreg, hit_slots
from pyvmm.gdb.probe import probe_host
from pyvmm.gdb.target import StopReason

pytestmark = pytest.mark.kvm


@pytest.fixture
def target() -> Iterator[VcpuTarget]:
    machine = VcpuTarget(vcpus=1)
    yield machine
    machine.close()


def arm(target: VcpuTarget, control: int, slots: list[HardwareBreakpoint | None]) -> None:
    registers = debugreg(slots)
    target.run_on_vcpu(0, lambda vcpu: vcpu.set_guest_debug(control, registers))


@pytest.mark.parametrize("slot", [0, 3])
def test_execution_breakpoint_exits_at_its_rip(target: VcpuTarget, slot: int) -> None:
    slots: list[HardwareBreakpoint | None] = [None] * 4
    slots[slot] = HardwareBreakpoint(INC_RBX_RIP, Access.EXECUTE)
    arm(target, GuestDebug.ENABLE | GuestDebug.USE_HW_BP, slots)
    for _ in range(3):  # each lap of the loop stops there again
        target.debug_continue(None)
        event = target.wait_debug_event(5)
        assert event is not None and event.reason is StopReason.DEBUG_EXIT
        assert event.exception == 1 and event.pc == INC_RBX_RIP and hit_slots(event.dr6) == [slot]
        assert target.run_on_vcpu(0, lambda vcpu: vcpu.get_regs().rip) == INC_RBX_RIP


def test_single_step_moves_one_instruction(target: VcpuTarget) -> None:
    arm(target, GuestDebug.ENABLE | GuestDebug.SINGLESTEP, [None] * 4)
    seen = []
    for _ in range(4):
        target.debug_continue(0)
        event = target.wait_debug_event(5)
        assert event is not None and event.exception == 1 and event.dr6 & DR6_BS
        seen.append(event.pc)
    # from the entry: inc rax, mov [DATA], rax, inc rbx, jmp back
    assert seen == [STORE_RIP, INC_RBX_RIP, INC_RBX_RIP + 3, GUEST_ENTRY]


def test_the_probe_tells_the_truth_about_watchpoints(target: VcpuTarget) -> None:
    arm(target, GuestDebug.ENABLE | GuestDebug.USE_HW_BP, [HardwareBreakpoint(DATA, Access.WRITE, 8)])
    target.debug_continue(None)
    event = target.wait_debug_event(1.0)
    if probe_host().watchpoints:
        assert event is not None and event.reason is StopReason.DEBUG_EXIT and hit_slots(event.dr6) == [0]
        # a data breakpoint is a trap: RIP is past the store
        assert event.pc == INC_RBX_RIP
    else:
        assert event is None  # the store ran thousands of times, no exit
        target.debug_stop()
        assert target.memory.read_u64(DATA) > 0
