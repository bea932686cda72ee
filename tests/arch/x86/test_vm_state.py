"""A VM's in-kernel state (PICs, IOAPIC, PIT, kvmclock) saved from one VM and
restored into another, on the real /dev/kvm; bad states refused with StateError."""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pyvmm.arch.x86.vm_state import VmState, restore_vm, save_vm
from pyvmm.errors import StateError
from pyvmm.kvm import Cap, Kvm, Vm, uapi, x86
from pyvmm.kvm.uapi import ClockFlag
from pyvmm.snapshot.codec import decode, encode
from pyvmm.snapshot.registry import state_class

pytestmark = pytest.mark.kvm

PIT_MODE_RATE_GENERATOR = 2
IOAPIC_PIN = 5
ROUTE = 0x0001_0000_0000_A031  # vector 0x31, masked, destination 0 (illustrative)


@contextmanager
def new_vm(*, irqchip: bool = True, pit: bool = True) -> Iterator[Vm]:
    with Kvm() as kvm, kvm.create_vm() as vm:
        if irqchip:
            vm.create_irqchip()
        if pit:
            vm.create_pit2()
        vm.create_vcpu(0).close()  # kvmclock and the irqchip expect a vCPU to exist
        yield vm


def test_pics_ioapic_pit_and_clock_round_trip() -> None:
    with new_vm() as vm:
        master = vm.get_irqchip(uapi.KVM_IRQCHIP_PIC_MASTER)
        master.chip.pic.imr = 0xA5
        vm.set_irqchip(master)
        slave = vm.get_irqchip(uapi.KVM_IRQCHIP_PIC_SLAVE)
        slave.chip.pic.irq_base = 0x70
        vm.set_irqchip(slave)
        ioapic = vm.get_irqchip(uapi.KVM_IRQCHIP_IOAPIC)
        ioapic.chip.ioapic.redirtbl[IOAPIC_PIN] = ROUTE
        vm.set_irqchip(ioapic)
        pit = vm.get_pit2()
        pit.channels[0].mode = PIT_MODE_RATE_GENERATOR
        pit.channels[0].count = 1193
        vm.set_pit2(pit)
        state = save_vm(vm)
    assert state_class("vm") is VmState
    assert len(state.pic_master) == ctypes.sizeof(x86.kvm_pic_state)
    assert len(state.ioapic) == ctypes.sizeof(x86.kvm_ioapic_state)
    assert len(state.pit2) == ctypes.sizeof(x86.kvm_pit_state2)
    assert decode(encode(state)) == state  # the snapshot codec carries it whole
    with new_vm() as restored:
        restore_vm(restored, state)
        assert restored.get_irqchip(uapi.KVM_IRQCHIP_PIC_MASTER).chip.pic.imr == 0xA5
        assert restored.get_irqchip(uapi.KVM_IRQCHIP_PIC_SLAVE).chip.pic.irq_base == 0x70
        assert restored.get_irqchip(uapi.KVM_IRQCHIP_IOAPIC).chip.ioapic.redirtbl[IOAPIC_PIN] == ROUTE
        channel = restored.get_pit2().channels[0]
        assert (channel.mode, channel.count) == (PIT_MODE_RATE_GENERATOR, 1193)
        if restored.kvm.check_extension(Cap.ADJUST_CLOCK):
            clock = restored.get_clock().clock
            assert state.clock <= clock < state.clock + 10_000_000_000  # resumed where it was


def test_the_clock_is_set_to_the_saved_value_not_the_new_vms() -> None:
    with Kvm() as kvm:
        if not kvm.check_extension(Cap.ADJUST_CLOCK):
            pytest.skip("this host's KVM lacks KVM_CAP_ADJUST_CLOCK: no kvmclock to restore")
    with new_vm() as vm:
        state = dataclasses.replace(save_vm(vm), clock=1 << 50)
    with new_vm() as restored:
        restore_vm(restored, state)
        assert 1 << 50 <= restored.get_clock().clock < (1 << 50) + 10_000_000_000


def test_a_vm_without_irqchip_or_pit_saves_none() -> None:
    with new_vm(irqchip=False, pit=False) as vm:
        state = save_vm(vm)
        assert (state.pic_master, state.pic_slave, state.ioapic, state.pit2) == (b"", b"", b"", b"")
    with new_vm(irqchip=False, pit=False) as restored:
        restore_vm(restored, state)


def test_chips_into_a_vm_without_an_irqchip_are_refused() -> None:
    with new_vm() as vm:
        state = save_vm(vm)
    with new_vm(irqchip=False, pit=False) as bare, pytest.raises(StateError, match="KVM refused"):
        restore_vm(bare, state)


def test_only_the_realtime_flag_is_passed_and_only_when_asked() -> None:
    with new_vm() as vm:
        supported = vm.check_extension(Cap.ADJUST_CLOCK)
        if not supported & ClockFlag.REALTIME:
            pytest.skip("this host's KVM_GET_CLOCK does not report the host's real time")
        state = dataclasses.replace(
            save_vm(vm), clock=1 << 40, clock_flags=int(ClockFlag.REALTIME | ClockFlag.TSC_STABLE)
        )
    with new_vm() as restored:
        # realtime 0 is long ago: asked to advance, KVM adds all the time since 1970
        restore_vm(restored, dataclasses.replace(state, clock_realtime=0), advance_by_realtime=True)
        assert restored.get_clock().clock > (1 << 40) + 10**18
        restore_vm(restored, state)
        assert restored.get_clock().clock < (1 << 40) + 10_000_000_000


@pytest.fixture(scope="module")
def good_state() -> VmState:
    with new_vm() as vm:
        return save_vm(vm)


BAD_FIELDS = {
    "PIC truncated": {"pic_master": b"\0" * 3},
    "IOAPIC too long": {"ioapic": b"\0" * (ctypes.sizeof(x86.kvm_ioapic_state) + 8)},
    "only some chips": {"pic_slave": b"", "ioapic": b""},
    "PIT of another size": {"pit2": b"\0" * 16},
    "PIT not bytes": {"pit2": None},
    "clock negative": {"clock": -1},
    "clock past 64 bits": {"clock": 1 << 64},
    "clock flags unknown": {"clock_flags": 1 << 9},
    "realtime a float": {"clock_realtime": 1.5},
}


@pytest.mark.parametrize("change", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_state_is_refused_before_anything_is_written(
    good_state: VmState, change: dict[str, Any]
) -> None:
    with new_vm() as vm:
        master = vm.get_irqchip(uapi.KVM_IRQCHIP_PIC_MASTER)
        master.chip.pic.imr = 0x3C
        vm.set_irqchip(master)
        with pytest.raises(StateError, match="vm state"):
            restore_vm(vm, dataclasses.replace(good_state, **change))
        assert vm.get_irqchip(uapi.KVM_IRQCHIP_PIC_MASTER).chip.pic.imr == 0x3C
        with pytest.raises(StateError, match="expected VmState"):
            restore_vm(vm, object())
