"""`IoEventNotifier`: how a guest's doorbell write (a virtqueue notification) reaches
a device, the same way whatever the host offers.

With KVM_CAP_IOEVENTFD the write never leaves the kernel: KVM_IOEVENTFD (api.rst
§4.59) turns a write of `length` bytes at the address (a port, or MMIO), with the
given value when `datamatch` is set, into a signal on the notifier's eventfd,
without a VM exit to user space. Without the capability, the write exits as any
other; the bus exit handler of the register passes it to `guest_wrote`, which
applies KVM's matching rule and signals the same eventfd. Either way the device
waits on `eventfd` (registered with the I/O thread) and its code does not change.
Writes KVM did not take (another length, another value) also come to
`guest_wrote`, which then leaves them alone, as KVM did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pyvmm.eventfd import EventFd
from pyvmm.kvm import Cap, KvmError, Vm

_LENGTHS = (1, 2, 4, 8)


class IoEventNotifier:
    """One doorbell: an address, a width, an optional value, and the eventfd it rings."""

    def __init__(
        self,
        vm: Vm,
        address: int,
        length: int,
        *,
        pio: bool = False,
        datamatch: int | None = None,
        in_kernel: bool = True,
    ) -> None:
        """`in_kernel=False` forces the exit-handler path (tests, or a debugging aid)."""
        if length not in _LENGTHS:
            raise ValueError(f"a doorbell is 1, 2, 4 or 8 bytes wide, not {length}")
        if datamatch is not None and not 0 <= datamatch < 1 << (8 * length):
            raise ValueError(f"datamatch {datamatch:#x} does not fit in {length} bytes")
        self.vm = vm
        self.address = address
        self.length = length
        self.pio = pio
        self.datamatch = datamatch
        self.eventfd = EventFd()
        self.in_kernel = bool(in_kernel and vm.kvm.check_extension(Cap.IOEVENTFD))
        if self.in_kernel:
            try:
                vm.ioeventfd(self.eventfd.fileno(), address, length, pio=pio, datamatch=datamatch)
            except KvmError:
                self.eventfd.close()
                raise

    def fileno(self) -> int:
        """The eventfd, for `IoThread.register`."""
        return self.eventfd.fileno()

    def consume(self) -> int:
        """In the device's callback: how many notifications arrived (0: none)."""
        return self.eventfd.consume()

    def guest_wrote(self, size: int, value: int) -> bool:
        """A guest write of `size` bytes reached the register through a VM exit: signal
        if it matches as KVM would match it; whether it did."""
        if size != self.length or (self.datamatch is not None and value != self.datamatch):
            return False
        self.eventfd.signal()
        return True

    def close(self) -> None:
        if self.eventfd.closed:
            return
        if self.in_kernel and self.vm.fd >= 0:  # closing the VM dropped the ioeventfd
            self.vm.ioeventfd(
                self.eventfd.fileno(), self.address, self.length,
                pio=self.pio, datamatch=self.datamatch, deassign=True,
            )  # fmt: skip
        self.eventfd.close()


class Doorbell(Protocol):
    """What a queue's notification source offers its I/O-thread callback."""

    def consume(self) -> int: ...


def notification_callback(
    doorbell: Doorbell, notify: Callable[[int], None], queue: int
) -> Callable[[], None]:
    """The I/O-thread callback of one queue's doorbell: several guest writes since the
    last turn are one notification of `queue`."""

    def serve() -> None:
        if doorbell.consume():
            notify(queue)

    return serve
