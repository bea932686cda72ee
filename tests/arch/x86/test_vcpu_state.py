"""A vCPU's KVM state saved from one VM and restored into a vCPU of another, on the
real /dev/kvm: the guest continues exactly, every structure round-trips, and a bad
state is refused with a StateError before anything is written."""

from __future__ import annotations

import ctypes
import dataclasses
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from guest_code import REAL_MODE_RAM, real_mode_guest

from pyvmm.arch.x86.msrs import Msr
from pyvmm.arch.x86.vcpu_state import (
    MAX_MSRS,
    VcpuState,
    pause_clock,
    restore_vcpu,
    save_vcpu,
    saved_msr_indices,
)
from pyvmm.errors import StateError
from pyvmm.kvm import Cap, ExitReason, Kvm, MpState, Vcpu, x86
from pyvmm.memory import GuestMemory
from pyvmm.snapshot.codec import decode, encode
from pyvmm.snapshot.registry import state_class

pytestmark = pytest.mark.kvm

COUNTER = 0x2000  # where the guest stores its counter
PORT = 0x42
# loop: inc bx; mov [0x2000], bx; mov ax, bx; out 0x42, ax; jmp loop
COUNT_LOOP = bytes.fromhex("43 891e0020 89d8 e742 ebf5")
HALT = bytes.fromhex("f4 ebfd")  # hlt; jmp $-1
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
PVCLOCK_AREA = 0x3000
PVCLOCK_FLAGS = 29  # offset of `flags` in struct pvclock_vcpu_time_info
PVCLOCK_GUEST_STOPPED = 1 << 1
LAPIC_TPR = 0x80


def next_out(vcpu: Vcpu) -> int:
    """Run to the guest's next `out 0x42, ax`; the value written."""
    assert vcpu.run() == ExitReason.IO
    io = vcpu.run_state.io
    assert (io.direction, io.port, io.size) == (1, PORT, 2)
    return int.from_bytes(vcpu.run_mapping[io.data_offset : io.data_offset + 2], "little")


def finish_exit(vcpu: Vcpu) -> None:
    """Complete the last exit's port access, as a pause does: KVM_RUN entered with
    immediate_exit set returns at once, the access done (api.rst, kvm_run)."""
    vcpu.set_immediate_exit(True)
    assert vcpu.run() == ExitReason.INTR
    vcpu.set_immediate_exit(False)


@contextmanager
def fresh_vcpu(code: bytes = HALT, ram: bytes | None = None) -> Iterator[tuple[Vcpu, GuestMemory]]:
    """vCPU 0 of a new VM with an irqchip, over a copy of `ram` when given."""
    memory = GuestMemory([(0, REAL_MODE_RAM)])
    try:
        if ram is not None:
            memory.write(0, ram)
        with real_mode_guest(code, irqchip=True, memory=memory) as (_vm, vcpu):
            yield vcpu, memory
    finally:
        memory.close()


def test_the_guest_continues_exactly_in_a_new_vm() -> None:
    memory = GuestMemory([(0, REAL_MODE_RAM)])
    try:
        with real_mode_guest(COUNT_LOOP, irqchip=True, memory=memory) as (_vm, vcpu):
            assert [next_out(vcpu) for _ in range(3)] == [1, 2, 3]
            finish_exit(vcpu)
            state = save_vcpu(vcpu)
            ram = memory.read(0, REAL_MODE_RAM)
            assert next_out(vcpu) == 4  # the original goes on too
        with fresh_vcpu(COUNT_LOOP, ram) as (restored, _):
            restore_vcpu(restored, decode(encode(state)))  # through the snapshot codec
            assert restored.get_regs().rbx == 3
            assert [next_out(restored) for _ in range(3)] == [4, 5, 6]
    finally:
        memory.close()


def test_the_state_is_plain_fields_of_the_kernel_sizes() -> None:
    with fresh_vcpu() as (vcpu, _):
        state = save_vcpu(vcpu)
        assert state_class("vcpu") is VcpuState
        assert len(state.regs) == ctypes.sizeof(x86.kvm_regs)
        assert len(state.sregs) == ctypes.sizeof(x86.kvm_sregs)
        assert len(state.fpu) == ctypes.sizeof(x86.kvm_fpu)
        assert len(state.lapic) == x86.KVM_APIC_REG_SIZE
        assert len(state.events) == ctypes.sizeof(x86.kvm_vcpu_events)
        xsave_size = vcpu.vm.kvm.check_extension(Cap.XSAVE2) or x86.KVM_XSAVE_LEGACY_SIZE
        assert len(state.xsave) == (max(xsave_size, x86.KVM_XSAVE_LEGACY_SIZE) if state.xsave else 0)
        assert state.mp_state == MpState.RUNNABLE
        indices = [index for index, _ in state.msrs]
        assert indices == list(saved_msr_indices(vcpu))
        assert Msr.IA32_TSC in indices and Msr.IA32_SYSENTER_ESP in indices


def test_msrs_fpu_xsave_lapic_debugregs_and_events_round_trip() -> None:
    with fresh_vcpu() as (vcpu, _):
        vcpu.set_msrs({Msr.IA32_SYSENTER_ESP: 0x1234_5678, Msr.IA32_STAR: 0x0023_0010_0000_0000})
        fpu = vcpu.get_fpu()
        fpu.xmm[3][:] = list(range(16))
        fpu.fcw = 0x37A
        vcpu.set_fpu(fpu)
        lapic = bytearray(bytes(vcpu.get_lapic()))
        lapic[LAPIC_TPR : LAPIC_TPR + 4] = struct.pack("<I", 0x20)
        vcpu.set_lapic(x86.kvm_lapic_state.from_buffer_copy(lapic))
        debugregs = vcpu.get_debugregs()
        debugregs.db[1] = 0xDEAD_0000
        vcpu.set_debugregs(debugregs)
        events = vcpu.get_vcpu_events()
        events.nmi.masked = 1
        events.interrupt.shadow = 1
        vcpu.set_vcpu_events(events)
        tsc = vcpu.get_msrs([Msr.IA32_TSC])[Msr.IA32_TSC]
        state = save_vcpu(vcpu)
    with fresh_vcpu() as (restored, _):
        restore_vcpu(restored, state)
        msrs = restored.get_msrs([Msr.IA32_SYSENTER_ESP, Msr.IA32_STAR, Msr.IA32_TSC])
        assert msrs[Msr.IA32_SYSENTER_ESP] == 0x1234_5678
        assert msrs[Msr.IA32_STAR] == 0x0023_0010_0000_0000
        assert msrs[Msr.IA32_TSC] >= tsc  # the guest's TSC never goes back
        again = restored.get_fpu()
        assert list(again.xmm[3]) == list(range(16)) and again.fcw == 0x37A
        assert bytes(restored.get_lapic())[LAPIC_TPR] == 0x20
        assert restored.get_debugregs().db[1] == 0xDEAD_0000
        restored_events = restored.get_vcpu_events()
        assert (restored_events.nmi.masked, restored_events.interrupt.shadow) == (1, 1)
        assert save_vcpu(restored).xsave == state.xsave


def test_a_halted_vcpu_stays_halted() -> None:
    with fresh_vcpu() as (vcpu, _):
        vcpu.set_mp_state(MpState.HALTED)
        state = save_vcpu(vcpu)
    with fresh_vcpu() as (restored, _):
        restore_vcpu(restored, state)
        assert restored.get_mp_state() is MpState.HALTED


def test_an_application_processor_waiting_for_init_keeps_waiting() -> None:
    """An AP's MP state (set last, after the events) survives the trip."""
    with Kvm() as kvm:
        with kvm.create_vm() as vm:
            vm.create_irqchip()
            boot, ap = vm.create_vcpu(0), vm.create_vcpu(1)
            ap.set_mp_state(MpState.INIT_RECEIVED)
            state = save_vcpu(ap)
            boot.close()
            ap.close()
        with kvm.create_vm() as vm:
            vm.create_irqchip()
            boot, ap = vm.create_vcpu(0), vm.create_vcpu(1)
            assert ap.get_mp_state() is not MpState.INIT_RECEIVED
            restore_vcpu(ap, state)
            assert ap.get_mp_state() is MpState.INIT_RECEIVED
            boot.close()
            ap.close()


def test_an_msr_kvm_cannot_read_is_named_when_asked_for() -> None:
    with fresh_vcpu() as (vcpu, _), pytest.raises(StateError, match="0x12345678"):
        save_vcpu(vcpu, [Msr.IA32_TSC, 0x1234_5678])


class FakeKvm:
    def __init__(self, listed: list[int]) -> None:
        self.listed = listed

    def msr_index_list(self) -> list[int]:
        return self.listed


class FakeVm:
    def __init__(self, listed: list[int]) -> None:
        self.kvm = FakeKvm(listed)


class FakeVcpu:
    """KVM_GET_MSRS as the kernel answers it: stops at the first unreadable MSR."""

    def __init__(self, listed: list[int], unreadable: set[int]) -> None:
        self.vm = FakeVm(listed)
        self.unreadable = unreadable
        self.calls = 0

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        self.calls += 1
        read: dict[int, int] = {}
        for index in indices:
            if index in self.unreadable:
                break
            read[index] = index + 1
        return read


def test_the_msr_list_drops_what_kvm_does_not_read_and_is_computed_once() -> None:
    listed = [0x10, 0x11, 0x12, 0x13, 0x14, 0x11]
    vcpu = FakeVcpu(listed, unreadable={0x11, 0x14})
    assert saved_msr_indices(vcpu) == (0x10, 0x12, 0x13)  # type: ignore[arg-type]
    calls = vcpu.calls
    assert saved_msr_indices(vcpu) == (0x10, 0x12, 0x13)  # type: ignore[arg-type]
    assert vcpu.calls == calls


@pytest.fixture(scope="module")
def good_state() -> VcpuState:
    with fresh_vcpu() as (vcpu, _):
        return save_vcpu(vcpu)


BAD_FIELDS = {
    "regs truncated": {"regs": b"\0" * 10},
    "sregs too long": {"sregs": b"\0" * (ctypes.sizeof(x86.kvm_sregs) + 1)},
    "regs not bytes": {"regs": bytearray(ctypes.sizeof(x86.kvm_regs))},
    "fpu missing": {"fpu": b""},
    "xsave of another size": {"xsave": b"\0" * 100},
    "lapic truncated": {"lapic": b"\0" * 10},
    "events truncated": {"events": b"\0" * 3},
    "debugregs too long": {"debugregs": b"\0" * 1000},
    "xcrs truncated": {"xcrs": b"\0" * 8},
    "an MSR pair truncated": {"msrs": ((0x10, 5), (0x174,))},
    "msrs a list": {"msrs": [(0x10, 5)]},
    "an MSR twice": {"msrs": ((0x10, 5), (0x10, 6))},
    "an MSR value past 64 bits": {"msrs": ((0x10, 1 << 64),)},
    "an MSR index past 32 bits": {"msrs": ((1 << 32, 0),)},
    "an MSR value a bool": {"msrs": ((0x10, True),)},
    "too many MSRs": {"msrs": tuple((index, 0) for index in range(MAX_MSRS + 1))},
    "mp_state unknown": {"mp_state": 99},
    "tsc_khz negative": {"tsc_khz": -1},
    "another vCPU's": {"vcpu_id": 1},
}


@pytest.mark.parametrize("change", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_state_is_refused_before_anything_is_written(
    good_state: VcpuState, change: dict[str, Any]
) -> None:
    bad = dataclasses.replace(good_state, **change)
    with fresh_vcpu() as (vcpu, _):
        regs = vcpu.get_regs()
        regs.rax = 0x5555
        vcpu.set_regs(regs)
        before = bytes(vcpu.get_regs())
        with pytest.raises(StateError, match="vcpu state"):
            restore_vcpu(vcpu, bad)
        assert bytes(vcpu.get_regs()) == before


def test_bad_inner_fields_are_refused(good_state: VcpuState) -> None:
    xcrs = x86.kvm_xcrs.from_buffer_copy(good_state.xcrs or bytes(ctypes.sizeof(x86.kvm_xcrs)))
    xcrs.nr_xcrs = x86.KVM_MAX_XCRS + 1
    events = x86.kvm_vcpu_events.from_buffer_copy(good_state.events)
    events.flags = 0x8000
    with fresh_vcpu() as (vcpu, _):
        for bad in (
            dataclasses.replace(good_state, xcrs=bytes(xcrs)),
            dataclasses.replace(good_state, events=bytes(events)),
        ):
            with pytest.raises(StateError, match=r"xcrs|events flags"):
                restore_vcpu(vcpu, bad)
        with pytest.raises(StateError, match="expected VcpuState"):
            restore_vcpu(vcpu, object())


def test_a_value_kvm_refuses_is_a_state_error(good_state: VcpuState) -> None:
    bad = dataclasses.replace(good_state, msrs=((0x1234_5678, 1),))
    with fresh_vcpu() as (vcpu, _), pytest.raises(StateError, match="KVM refused the saved MSRs"):
        restore_vcpu(vcpu, bad)


def test_pause_clock_tells_a_guest_with_kvmclock() -> None:
    with Kvm() as kvm:
        if not kvm.check_extension(Cap.KVMCLOCK_CTRL):
            pytest.skip("this host's KVM lacks KVM_CAP_KVMCLOCK_CTRL: pause_clock does nothing here")
    with fresh_vcpu(COUNT_LOOP) as (vcpu, memory):
        assert pause_clock([vcpu]) == 0  # no kvmclock enabled: nothing to tell
        vcpu.set_msrs({MSR_KVM_SYSTEM_TIME_NEW: PVCLOCK_AREA | 1})
        assert pause_clock([vcpu]) == 1
        assert not memory.read_u8(PVCLOCK_AREA + PVCLOCK_FLAGS) & PVCLOCK_GUEST_STOPPED
        assert next_out(vcpu) == 1  # KVM updates the pvclock area on the way in
        assert memory.read_u8(PVCLOCK_AREA + PVCLOCK_FLAGS) & PVCLOCK_GUEST_STOPPED
