"""KVM_IOEVENTFD, KVM_IRQFD, KVM_SET_GSI_ROUTING and KVM_SIGNAL_MSI through `Vm`, on
the real /dev/kvm: guest writes really land in an eventfd, and misuse is a typed
`KvmIoctlError` naming the ioctl."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from guest_code import MMIO_ADDRESS, MMIO_WRITES, PORT_WRITES, enter_real_mode, real_mode_guest

from pyvmm.kvm import Cap, ExitReason, KvmIoctlError, uapi

pytestmark = pytest.mark.kvm


def pending(eventfd: int) -> int:
    """The eventfd's counter (0 when nothing was written), reset to 0."""
    try:
        return os.eventfd_read(eventfd)
    except BlockingIOError:
        return 0


@pytest.fixture
def eventfd() -> Iterator[int]:
    fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    yield fd
    os.close(fd)


def test_port_ioeventfd_takes_the_write_instead_of_an_exit(eventfd: int) -> None:
    with real_mode_guest(PORT_WRITES) as (vm, vcpu):
        assert vm.kvm.check_extension(Cap.IOEVENTFD)
        vm.ioeventfd(eventfd, 0x42, 1, pio=True)
        assert vcpu.run() == ExitReason.IO
        assert vcpu.run_state.io.port == 0x43  # the write to 0x42 never came to user space
        assert pending(eventfd) == 1

        vm.ioeventfd(eventfd, 0x42, 1, pio=True, deassign=True)
        enter_real_mode(vcpu)
        assert vcpu.run() == ExitReason.IO
        assert vcpu.run_state.io.port == 0x42  # deassigned: an ordinary exit again
        assert pending(eventfd) == 0


def test_mmio_ioeventfd_with_datamatch_takes_only_that_value(eventfd: int) -> None:
    with real_mode_guest(MMIO_WRITES) as (vm, vcpu):
        vm.ioeventfd(eventfd, MMIO_ADDRESS, 2, datamatch=0x1234)
        assert vcpu.run() == ExitReason.MMIO
        mmio = vcpu.run_state.mmio
        assert (mmio.phys_addr, mmio.len, mmio.is_write) == (MMIO_ADDRESS, 2, 1)
        assert bytes(mmio.data[:2]) == b"\x78\x56"  # the second write, which did not match
        assert pending(eventfd) == 1


def test_deassigning_an_unknown_ioeventfd_is_a_typed_error(eventfd: int) -> None:
    with real_mode_guest(PORT_WRITES) as (vm, _vcpu):
        with pytest.raises(KvmIoctlError, match="KVM_IOEVENTFD") as caught:
            vm.ioeventfd(eventfd, 0x42, 1, pio=True, deassign=True)
        assert caught.value.errno > 0


def test_irqfd_needs_the_in_kernel_irqchip(eventfd: int) -> None:
    with real_mode_guest(PORT_WRITES) as (vm, _vcpu):
        assert vm.kvm.check_extension(Cap.IRQFD)
        with pytest.raises(KvmIoctlError, match="KVM_IRQFD"):
            vm.irqfd(eventfd, 4)


def test_irqfd_assigns_and_deassigns_with_an_irqchip(eventfd: int) -> None:
    with real_mode_guest(PORT_WRITES, irqchip=True) as (vm, _vcpu):
        vm.irqfd(eventfd, 4)
        with pytest.raises(KvmIoctlError, match="KVM_IRQFD"):
            vm.irqfd(eventfd, 4)  # one eventfd, one irqfd: KVM refuses it twice (EBUSY)
        vm.irqfd(eventfd, 4, deassign=True)
        vm.irqfd(eventfd, 4)  # free again


def test_irqfd_with_resample_fd(eventfd: int) -> None:
    with real_mode_guest(PORT_WRITES, irqchip=True) as (vm, _vcpu):
        if not vm.kvm.check_extension(Cap.IRQFD_RESAMPLE):
            pytest.skip("this host's KVM lacks KVM_CAP_IRQFD_RESAMPLE")
        resample = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            vm.irqfd(eventfd, 10, resample_fd=resample)
            vm.irqfd(eventfd, 10, deassign=True)
            with pytest.raises(KvmIoctlError, match="KVM_IRQFD"):
                vm.irqfd(eventfd, 10, resample_fd=0x7FFF_FFFF)  # no such file descriptor
        finally:
            os.close(resample)


def test_irqfd_refuses_a_file_that_is_no_eventfd() -> None:
    with (
        real_mode_guest(PORT_WRITES, irqchip=True) as (vm, _vcpu),
        open(os.devnull, "rb") as null,
        pytest.raises(KvmIoctlError, match="KVM_IRQFD"),
    ):
        vm.irqfd(null.fileno(), 4)


def test_signal_msi_needs_the_in_kernel_irqchip() -> None:
    with real_mode_guest(PORT_WRITES) as (vm, _vcpu):
        assert vm.kvm.check_extension(Cap.SIGNAL_MSI)
        with pytest.raises(KvmIoctlError, match="KVM_SIGNAL_MSI"):
            vm.signal_msi(0xFEE0_0000, 0x40)


def test_signal_msi_with_an_irqchip_returns_the_delivery_count() -> None:
    with real_mode_guest(PORT_WRITES, irqchip=True) as (vm, _vcpu):
        # >0 delivered, 0 blocked by the guest: a vCPU fresh from reset has its local
        # APIC software-disabled, so either is fine here; what matters is no error.
        assert vm.signal_msi(0xFEE0_0000, 0x40) >= 0


def msi_route(gsi: int, address: int, data: int) -> uapi.kvm_irq_routing_entry:
    entry = uapi.kvm_irq_routing_entry(gsi=gsi, type=uapi.KVM_IRQ_ROUTING_MSI)
    entry.msi.address_lo, entry.msi.address_hi, entry.msi.data = address & 0xFFFF_FFFF, address >> 32, data
    return entry


def test_gsi_routing_takes_msi_routes_and_irqfds_use_them(eventfd: int) -> None:
    with real_mode_guest(PORT_WRITES, irqchip=True) as (vm, _vcpu):
        max_routes = vm.kvm.check_extension(Cap.IRQ_ROUTING)
        assert max_routes > 24
        pin = uapi.kvm_irq_routing_entry(gsi=4, type=uapi.KVM_IRQ_ROUTING_IRQCHIP)
        pin.irqchip.irqchip, pin.irqchip.pin = uapi.KVM_IRQCHIP_IOAPIC, 4
        vm.set_gsi_routing([pin, msi_route(24, 0xFEE0_0000, 0x41)])
        vm.irqfd(eventfd, 24)
        os.eventfd_write(eventfd, 1)
        assert pending(eventfd) == 0  # KVM took the count at once, to send the MSI
        vm.irqfd(eventfd, 24, deassign=True)


def test_gsi_routing_refuses_a_gsi_beyond_the_maximum() -> None:
    with real_mode_guest(PORT_WRITES, irqchip=True) as (vm, _vcpu):
        max_routes = vm.kvm.check_extension(Cap.IRQ_ROUTING)
        with pytest.raises(KvmIoctlError, match="KVM_SET_GSI_ROUTING"):
            vm.set_gsi_routing([msi_route(max_routes, 0xFEE0_0000, 0x41)])
