"""The Kvm / Vm / Vcpu handles against the real /dev/kvm."""

from __future__ import annotations

import ctypes
import mmap

import pytest
from guest_code import enter_real_mode

from pyvmm.kvm import Cap, ExitReason, Kvm, KvmIoctlError, KvmUnavailableError, MpState, ioctls

pytestmark = pytest.mark.kvm


def test_missing_device_is_a_clear_error() -> None:
    with pytest.raises(KvmUnavailableError, match="does not exist"):
        Kvm("/nonexistent/kvm")


def test_capabilities_and_limits() -> None:
    with Kvm() as kvm:
        assert kvm.check_extension(Cap.USER_MEMORY) == 1
        assert kvm.max_vcpus() >= 1
        assert kvm.vcpu_mmap_size() >= 4096
        leaves = {entry.function for entry in kvm.supported_cpuid()}
        assert 0 in leaves and 1 in leaves
        assert 0x10 in kvm.msr_index_list() or 0x174 in kvm.msr_index_list()


def test_vcpu_register_round_trip() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        regs = vcpu.get_regs()
        regs.rax, regs.rip, regs.rflags = 0x1122334455667788, 0x7C00, 0x2
        vcpu.set_regs(regs)
        again = vcpu.get_regs()
        assert (again.rax, again.rip, again.rflags) == (0x1122334455667788, 0x7C00, 0x2)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0x1000, 0x100
        vcpu.set_sregs(sregs)
        assert (vcpu.get_sregs().cs.base, vcpu.get_sregs().cs.selector) == (0x1000, 0x100)
        assert vcpu.get_mp_state() is MpState.RUNNABLE
        fpu = vcpu.get_fpu()
        fpu.fcw = 0x27F
        vcpu.set_fpu(fpu)
        assert vcpu.get_fpu().fcw == 0x27F
        vcpu.close()


def test_failed_ioctl_names_itself() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_vcpu(0).close()
        with pytest.raises(KvmIoctlError, match="KVM_CREATE_VCPU") as caught:
            vm.create_vcpu(0)  # the same vCPU id twice
        assert caught.value.errno > 0


def test_refused_msr_is_named() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        with pytest.raises(KvmIoctlError, match="0x12345678"):
            vcpu.set_msrs({0x12345678: 1})
        vcpu.close()


def test_real_mode_code_runs_and_exits_on_port_io() -> None:
    """The smallest guest: `out 0x42, al; hlt` at 0x1000 without any of pyvmm's layers."""
    with Kvm() as kvm, kvm.create_vm() as vm:
        size = 0x10000
        ram = mmap.mmap(-1, size)
        ram[0x1000:0x1005] = bytes.fromhex("b07ae642f4")  # mov al, 0x7a; out 0x42, al; hlt
        address = ctypes.addressof(ctypes.c_char.from_buffer(ram))
        vm.set_user_memory_region(0, 0, size, address)
        vcpu = vm.create_vcpu(0)
        enter_real_mode(vcpu, 0x1000)
        assert vcpu.run() == ExitReason.IO
        io = vcpu.run_state.io
        assert (io.direction, io.size, io.port, io.count) == (1, 1, 0x42, 1)
        assert vcpu.run_mapping[io.data_offset] == 0x7A
        assert vcpu.run() == ExitReason.HLT  # no in-kernel irqchip: HLT comes to us
        vcpu.close()


def test_every_request_number_names_one_ioctl() -> None:
    """A failure is named from its number alone (`ioctls.NAMES`): two requests with one
    number would name each other's failures."""
    requests = {name: value for name, value in vars(ioctls).items() if name.startswith("KVM_")}
    assert len(requests) > 50
    assert sorted(ioctls.NAMES.values()) == sorted(requests)
    assert ioctls.NAMES[ioctls.KVM_RUN] == "KVM_RUN"


def test_a_refused_capability_is_named_with_its_ioctl() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        with pytest.raises(KvmIoctlError, match=r"^KVM_ENABLE_CAP failed \(KVM_CAP_NR_VCPUS\): E") as caught:
            vm.enable_cap(Cap.NR_VCPUS, 1)  # a question, not something to enable
        assert caught.value.name == "KVM_ENABLE_CAP"
