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
`guest_wrote`, which then leaves them alone, as KVM did. A doorbell can move (`move`):
a PCI BAR the guest reprograms takes its notify addresses with it.

`QueueDoorbells` is what both virtio transports use: one such doorbell per virtqueue,
each served on the I/O thread by one `notification_callback`, placed (and moved) as
a whole; virtio-mmio's at the QueueNotify register with the queue index as datamatch
(virtio 1.2 §4.2.2), virtio-pci's at each queue's notify address (§4.1.4.4). A write
that exits instead (no KVM_CAP_IOEVENTFD, KVM refused the address, a write KVM did not
match) reaches the transport's register, which passes the queue to `guest_wrote`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from pyvmm.io.eventfd import EventFd
from pyvmm.io.thread import FaultHandler, HasFileno
from pyvmm.kvm import Cap, KvmError, Vm

log = logging.getLogger(__name__)

_LENGTHS = (1, 2, 4, 8)


class Registrar(Protocol):
    """Where doorbells and other eventfds are watched: `pyvmm.io.thread.IoThread`."""

    def register(
        self, fd: HasFileno, callback: Callable[[], None], name: str, fault: FaultHandler | None = None
    ) -> None: ...

    def unregister(self, fd: HasFileno) -> bool: ...


class IoEventNotifier:
    """One doorbell: an address, a width, an optional value, and the eventfd it rings."""

    def __init__(
        self,
        vm: Vm,
        address: int | None,
        length: int,
        *,
        pio: bool = False,
        datamatch: int | None = None,
        in_kernel: bool = True,
    ) -> None:
        """`address` None: nowhere yet (see `move`). `in_kernel=False` forces the
        exit-handler path (tests, or a debugging aid)."""
        if length not in _LENGTHS:
            raise ValueError(f"a doorbell is 1, 2, 4 or 8 bytes wide, not {length}")
        if datamatch is not None and not 0 <= datamatch < 1 << (8 * length):
            raise ValueError(f"datamatch {datamatch:#x} does not fit in {length} bytes")
        self.vm = vm
        self.address: int | None = None
        self.length = length
        self.pio = pio
        self.datamatch = datamatch
        self.eventfd = EventFd()
        self.in_kernel = bool(in_kernel and vm.kvm.check_extension(Cap.IOEVENTFD))
        try:
            self.move(address)
        except KvmError:
            self.eventfd.close()
            raise

    def move(self, address: int | None) -> None:
        """The doorbell is now at `address` (None: nowhere). When KVM refuses the new
        address (`KvmError`, e.g. another eventfd is there) the doorbell is nowhere:
        writes there exit, and the register passes them to `guest_wrote`."""
        if address == self.address:
            return
        if self.address is not None and self.in_kernel and self.vm.fd >= 0:
            self._ioeventfd(self.address, deassign=True)
        self.address = None
        if address is not None:
            if self.in_kernel:
                self._ioeventfd(address, deassign=False)
            self.address = address

    def _ioeventfd(self, address: int, *, deassign: bool) -> None:
        self.vm.ioeventfd(
            self.eventfd.fileno(), address, self.length,
            pio=self.pio, datamatch=self.datamatch, deassign=deassign,
        )  # fmt: skip

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
        if self.vm.fd >= 0:  # closing the VM dropped the ioeventfd
            self.move(None)
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


class QueueDoorbells:
    """The notifications of one virtio device: a doorbell (`IoEventNotifier`) per queue,
    each served on the I/O thread, where `notify(queue)` runs (see the module
    docstring); an exception out of it goes to `fault` (`VirtioCore.device_fault`:
    the device needs a reset, the VM goes on). `datamatch`: each doorbell matches its
    queue's index (virtio-mmio's one QueueNotify register); else each has an address
    of its own (virtio-pci)."""

    def __init__(
        self,
        vm: Vm,
        io: Registrar,
        name: str,
        queues: int,
        notify: Callable[[int], None],
        *,
        length: int,
        datamatch: bool,
        in_kernel: bool = True,
        fault: FaultHandler | None = None,
    ) -> None:
        self.vm = vm
        self.io = io
        self.name = name
        self.in_kernel = bool(in_kernel and vm.kvm.check_extension(Cap.IOEVENTFD))
        self.doorbells: list[IoEventNotifier] = []
        try:
            for index in range(queues):
                doorbell = IoEventNotifier(
                    vm, None, length, datamatch=index if datamatch else None, in_kernel=self.in_kernel
                )
                self.doorbells.append(doorbell)
                callback = notification_callback(doorbell, notify, index)
                io.register(doorbell, callback, f"{name} queue {index}", fault)
        except BaseException:
            self.close()
            raise
        if not self.in_kernel:
            log.info("%s: no KVM_CAP_IOEVENTFD; queue notifications exit to the vCPU first", name)

    @property
    def addresses(self) -> list[int | None]:
        return [doorbell.address for doorbell in self.doorbells]

    def place(self, addresses: Sequence[int] | None) -> None:
        """Queue i's doorbell at `addresses[i]` (None: none on the bus). All are taken
        off first (an old address may be another queue's new one). When KVM refuses
        one, none is kept: every notification then exits and reaches `guest_wrote`."""
        wanted = [None] * len(self.doorbells) if addresses is None else list(addresses)
        if wanted == self.addresses:
            return
        for doorbell in self.doorbells:
            doorbell.move(None)
        try:
            for doorbell, address in zip(self.doorbells, wanted, strict=True):
                doorbell.move(address)
        except KvmError as exc:
            for doorbell in self.doorbells:
                doorbell.move(None)
            where = ", ".join(f"{address:#x}" for address in wanted if address is not None)
            log.warning("%s: queue notifications at %s exit to the vCPU: %s", self.name, where, exc)

    def guest_wrote(self, queue: int) -> None:
        """A notification that reached the transport's register (KVM did not take it)."""
        if 0 <= queue < len(self.doorbells):
            self.doorbells[queue].eventfd.signal()

    def close(self) -> None:
        """Unwatch and deassign every doorbell (while the VM is still open)."""
        for doorbell in self.doorbells:
            if not doorbell.eventfd.closed:
                self.io.unregister(doorbell)
                doorbell.close()
