"""A VM's in-kernel state, saved and restored: the two 8259 PICs and the IOAPIC
(api.rst §4.26-4.27, KVM_GET/SET_IRQCHIP), the PIT (§4.72-4.73, KVM_GET/SET_PIT2)
and kvmclock (§4.29-4.30, KVM_GET/SET_CLOCK).

Saved after the vCPUs are paused (Cloud Hypervisor's pause order: CPUs, then the
clock), so the clock read is the one the guest stopped at.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.arch.x86.vcpu_state import (
    check_structure,
    kernel_bytes,
    kvm_refusal,
    put_structure,
    read_if_present,
)
from pyvmm.kvm import Cap, Vm, uapi, x86
from pyvmm.kvm.uapi import ClockFlag
from pyvmm.snapshot.checks import check_int, check_type, fail
from pyvmm.snapshot.registry import saved_state

_NAME = "vm"
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_CHIPS = (uapi.KVM_IRQCHIP_PIC_MASTER, uapi.KVM_IRQCHIP_PIC_SLAVE, uapi.KVM_IRQCHIP_IOAPIC)


@saved_state("vm")
@dataclass(frozen=True)
class VmState:
    """The in-kernel devices as the kernel's bytes (`kvm_pic_state` twice,
    `kvm_ioapic_state`, `kvm_pit_state2`; b"" for a VM without an irqchip or PIT)
    and kvmclock: its value in ns, the `ClockFlag`s KVM_GET_CLOCK set, and the host's
    real time (ns) at the read when REALTIME is among them."""

    pic_master: bytes
    pic_slave: bytes
    ioapic: bytes
    pit2: bytes
    clock: int
    clock_flags: int
    clock_realtime: int


def _chip(vm: Vm, chip_id: int) -> bytes:
    """One chip's state, or b"" when the VM has no in-kernel irqchip."""
    field = "ioapic" if chip_id == uapi.KVM_IRQCHIP_IOAPIC else "pic"
    raw = read_if_present(lambda: vm.get_irqchip(chip_id))
    if not raw:
        return b""
    chip = uapi.kvm_irqchip.from_buffer_copy(raw).chip
    return kernel_bytes(getattr(chip, field))


def save_vm(vm: Vm) -> VmState:
    """Read `vm`'s in-kernel state; its vCPUs are paused."""
    master, slave, ioapic = (_chip(vm, chip_id) for chip_id in _CHIPS)
    pit2 = read_if_present(vm.get_pit2) if vm.kvm.check_extension(Cap.PIT_STATE2) else b""
    clock = vm.get_clock() if vm.kvm.check_extension(Cap.ADJUST_CLOCK) else uapi.kvm_clock_data()
    realtime = clock.realtime if clock.flags & ClockFlag.REALTIME else 0
    return VmState(master, slave, ioapic, pit2, clock.clock, clock.flags, realtime)


def check_vm_state(state: object) -> VmState:
    """`state`, if every field has its exact size and range; else `StateError`."""
    checked = check_type(_NAME, state, VmState)
    chips = [
        check_structure(_NAME, "pic_master", checked.pic_master, x86.kvm_pic_state, optional=True),
        check_structure(_NAME, "pic_slave", checked.pic_slave, x86.kvm_pic_state, optional=True),
        check_structure(_NAME, "ioapic", checked.ioapic, x86.kvm_ioapic_state, optional=True),
    ]
    if len({bool(chip) for chip in chips}) != 1:
        raise fail(_NAME, "holds some of the irqchip's PICs and IOAPIC, not all or none")
    check_structure(_NAME, "pit2", checked.pit2, x86.kvm_pit_state2, optional=True)
    check_int(_NAME, "clock", checked.clock, 0, _U64)
    flags = check_int(_NAME, "clock_flags", checked.clock_flags, 0, _U32)
    if flags & ~int(ClockFlag.TSC_STABLE | ClockFlag.REALTIME | ClockFlag.HOST_TSC):
        raise fail(_NAME, f"clock_flags {flags:#x} has unknown bits")
    check_int(_NAME, "clock_realtime", checked.clock_realtime, 0, _U64)
    return checked


def restore_vm(vm: Vm, state: object, *, advance_by_realtime: bool = False) -> None:
    """Write a checked `VmState` into `vm`, made with the same irqchip and PIT.

    The clock resumes where it was saved (as QEMU does); with `advance_by_realtime`
    and where both the saved clock and this KVM know REALTIME, KVM adds the host
    time that passed since the save (api.rst §4.30). Only that flag is passed:
    KVM before 5.16 refused any flag in KVM_SET_CLOCK, and the others are ignored."""
    checked = check_vm_state(state)
    if checked.pic_master:
        chips = (checked.pic_master, checked.pic_slave, checked.ioapic)
        for chip_id, data in zip(_CHIPS, chips, strict=True):
            with kvm_refusal(_NAME, f"irqchip {chip_id}"):
                _set_chip(vm, chip_id, data)
    put_structure(_NAME, "PIT", vm.set_pit2, x86.kvm_pit_state2, checked.pit2)
    if not vm.kvm.check_extension(Cap.ADJUST_CLOCK):
        return
    clock = uapi.kvm_clock_data(clock=checked.clock)
    supported = vm.check_extension(Cap.ADJUST_CLOCK)
    if advance_by_realtime and checked.clock_flags & supported & ClockFlag.REALTIME:
        clock.flags, clock.realtime = ClockFlag.REALTIME, checked.clock_realtime
    with kvm_refusal(_NAME, "clock"):
        vm.set_clock(clock)


def _set_chip(vm: Vm, chip_id: int, data: bytes) -> None:
    chip = uapi.kvm_irqchip(chip_id=chip_id)
    if chip_id == uapi.KVM_IRQCHIP_IOAPIC:
        chip.chip.ioapic = x86.kvm_ioapic_state.from_buffer_copy(data)
    else:
        chip.chip.pic = x86.kvm_pic_state.from_buffer_copy(data)
    vm.set_irqchip(chip)
